"""`xrq listen` (a DICOM Storage SCP that reports what it receives) and `xrq push` (SRs to a PACS)."""

from __future__ import annotations

import json
import logging
import signal
from types import FrameType

import click

from cli.context import ID, settings_from, settings_options
from model.printable import printable


@click.command()
@click.option("--allow", "--listen-allow", "allow", multiple=True, metavar="AET@HOST", envvar="XRQ_LISTEN_ALLOW",
              show_envvar=True,
              help="A peer that may send (its AE title, @ its address); give it once per peer. AET alone: from "
                   "any host. The variable takes several, space-separated.")
@settings_options("listen", expose=("model",))
@click.pass_context
def listen(ctx: click.Context, allow: tuple[str, ...], model: str | None) -> None:
    """Receive chest X-rays over DICOM (C-STORE) and report each study once it is complete.

    A Storage SCP and C-ECHO: only the peers given with --allow may associate; CR, DX and secondary
    capture images are accepted (anything else is refused per instance, and logged); each instance is
    on disk (fsync, rename) before it is acknowledged. A study with no new instance for
    --study-timeout seconds is submitted like `xrq submit` (to the broker when one is configured).
    With --push-to, each report goes back as an SR. docs/conformance.md says exactly what it does.

    \b
    Example:
      xrq listen --aet XRQ --port 11112 --bind 0.0.0.0 --allow ORTHANC@10.0.0.5 \\
                 --model models/demo --study-timeout 30 --push-to dicom://ORTHANC@10.0.0.5:4242
    """
    from worker.listen import Listener, scp_config
    from worker.logs import configure

    settings = settings_from(ctx, model=model)
    configure(settings.log_level or "info", settings.log_format)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO and DEBUG lines describe data sets
    if not settings.model:
        raise click.UsageError("give the model to report with: --model DIR (or XRQ_MODEL)")
    listener = Listener(settings, scp_config(settings, allow))

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    listener.start()
    click.echo(f"Listening as {printable(settings.listen_aet)} on {settings.listen_bind}:{listener.scp.port}; "
               f"inbox {printable(settings.listen_inbox)}. Ctrl-C stops.", err=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        listener.stop()


@click.command()
@click.argument("jobs", type=ID, nargs=-1, required=True)
@click.option("--to", "to", metavar="DESTINATION", envvar="XRQ_PUSH_TO", show_envvar=True,
              help="dicom://AET@HOST:PORT (C-STORE) or https://HOST/DICOMWEB-ROOT (STOW-RS; a bearer token "
                   "from XRQ_PUSH_TOKEN).")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.pass_context
def push(ctx: click.Context, jobs: tuple[int, ...], to: str | None, as_json: bool) -> None:
    """Send the jobs' reports as DICOM SRs (UNVERIFIED drafts) to a PACS or a DICOMweb server.

    Deliveries are recorded: a second push sends only what was not delivered; a destination that
    is down loses nothing (the nightly backlog retries it). Studies without DICOM identity are skipped.

    \b
    Examples:
      xrq push 1 --to dicom://ORTHANC@pacs.example.org:4242
      XRQ_PUSH_TOKEN=... xrq push 1 2 --to https://pacs.example.org/dicom-web --json
    """
    from interop.errors import UnreachableError
    from worker.push import push_jobs

    if not to:
        raise click.UsageError("give the destination: --to dicom://AET@HOST:PORT or --to https://HOST/PATH")
    settings = settings_from(ctx)
    try:
        result = push_jobs(settings, jobs, to)
    except UnreachableError as exc:
        if as_json:
            click.echo(json.dumps({"destination": to, "error": str(exc)}))
        raise
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        click.echo(f"Pushed to {printable(result.destination)}: {result.sent} sent, {result.already} already "
                   f"delivered, {result.failed} failed, {result.skipped} without DICOM identity")
        for error in result.errors:
            click.echo(f"  {printable(error)}", err=True)
    if result.failed:
        ctx.exit(1)
