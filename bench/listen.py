"""Instances per second received into xrq's inbox from DCMTK's storescu, beside DCMTK's own storescp
(the bound) on the same files in the same run; prints JSON.

    python bench/listen.py [--instances 300] [--rounds 3] [--associations 1]
                           [--source tests/data/dicom/rsna_pneumonia_cr.dcm]

The files: `--instances` copies of a real CR (`--source`), each with UIDs of its own (one study), sent
by one storescu association each round (`--associations N`: N storescu processes at once, each
with its share, as a PACS routing over several associations does). The receivers, alternating round
by round so a noisy shared machine slows both alike:

- `xrq listen` (the real command, in its own process, a study timeout long enough that nothing is
  reported): each instance is written to a temporary file, fsync'd, renamed into the inbox and its
  folder fsync'd before the success status goes back;
- `storescp +xa +B --fork -od DIR` (DCMTK): writes each file as read and answers, without fsync (a
  process per association);
- the same Storage SCP as `xrq listen` (xrq's acceptor, handler and checks) writing each instance
  to its inbox folder without any fsync: not a mode xrq has, only this benchmark's measure of what
  the SCP costs by itself, the ceiling of any durable scheme;
- the receiver xrq had before (pynetdicom's `AE.start_server`, the same checks, the same durable
  inbox): the before of the change to interop/ul.py, measured in the same run.

storescu and storescp run with TCP_NODELAY=1 (see NODELAY). Every receiver, and the durable floor
below, runs in a process of its own session: on a Linux machine with autogroup scheduling
(`/proc/sys/kernel/sched_autogroup_enabled`), a new session competes as one group with everything
else running, so a busy machine slows each of them alike instead of favouring the bench's own.

Reported: the median rate of each over the rounds, xrq's as a fraction of storescp's (the issue's
target: at least 0.5) and the unsynced SCP's as a fraction of storescp's (its ceiling). Also the
durable floor: the rate at which the inbox alone (no network) makes the same files durable on this
disk. storescp acknowledges before its data is on disk; xrq cannot, so on a disk where an fsync
takes milliseconds the floor, not storescp, is xrq's real bound.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Debian's DCMTK leaves Nagle's algorithm on unless told (its TCP_NODELAY variable): each small C-STORE
# response then waits for a delayed ACK (about 45 ms an instance, storescp's rate capped near 21/s).
# Both DCMTK tools get it off, so storescp is the real bound.
NODELAY = {"TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_files(source: Path, folder: Path, n: int) -> list[Path]:
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    template = pydicom.dcmread(source)
    paths = []
    for i in range(n):
        template.StudyInstanceUID, template.SeriesInstanceUID = study, series
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        template.InstanceNumber = i + 1
        path = folder / f"{i:05d}.dcm"
        template.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the receiver exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def send(port: int, files: list[Path], called: str, syntax: str, associations: int = 1) -> float:
    """Seconds that `associations` storescu processes at once take to send every file (split evenly
    between them; each file must succeed)."""
    parts = [files[i::associations] for i in range(associations)]
    started = time.perf_counter()
    procs = [subprocess.Popen(["storescu", syntax, "-R", "-aet", "BENCH", "-aec", called, "127.0.0.1", str(port),
                               *map(str, part)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, **NODELAY}) for part in parts]
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.perf_counter() - started
    for proc, err in zip(procs, errors, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-2000:]}")
    return elapsed


def receiver(kind: str, work: Path, port: int) -> subprocess.Popen[bytes]:
    if kind == "storescp":
        out = work / "storescp"
        out.mkdir()
        # every syntax; as read; a process per association (as xrq has a thread per association)
        cmd = ["storescp", "+xa", "+B", "--fork", "-aet", "STORESCP", "-od", str(out), str(port)]
        env = {**os.environ, **NODELAY}
    elif kind in ("unsynced", "pynetdicom"):
        cmd = [sys.executable, "-m", "bench.listen", f"--serve-{kind}", str(port), str(work / "inbox")]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
    else:
        cmd = [sys.executable, "-c", "from cli.main import main; main()", "listen",
               "--model", str(REPO / "models" / "demo"), "--port", str(port), "--allow", "BENCH@127.0.0.1",
               "--study-timeout", "86400",
               "--listen-inbox", str(work / "inbox"), "--min-free-bytes", "0"]
        env = {**os.environ, "XRQ_DATABASE_URL": f"sqlite:///{work / 'xrq.db'}", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def received(kind: str, work: Path) -> int:
    if kind == "storescp":
        return sum(1 for p in (work / "storescp").rglob("*") if p.is_file())
    return sum(1 for _ in (work / "inbox" / "incoming").rglob("*.dcm"))


def wait_received(kind: str, work: Path, n: int, timeout: float = 120) -> None:
    """Until every file is in the receiver's folder (xrq's journal writes them into incoming/ after
    their acknowledgement, not counted in the rate)."""
    deadline = time.monotonic() + timeout
    while (got := received(kind, work)) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{kind} kept {got} of {n} files")
        time.sleep(0.05)


def serve_unsynced(port: int, folder: Path) -> None:
    """Run xrq's Storage SCP on `port` with an inbox that never syncs, until terminated (the ceiling)."""
    import threading

    from interop.inbox import Inbox
    from interop.scp import ScpConfig, StorageSCP, parse_allow

    class Unsynced(Inbox):
        """The inbox's writes (temporary file, rename into incoming/STUDY) without its syncs."""

        def store(self, study_uid: str, sop_uid: str, chunks: Any) -> None:
            folder, tmp = self.incoming / study_uid, self.tmp / f"{sop_uid}.part"
            folder.mkdir(exist_ok=True)
            tmp.write_bytes(b"".join(chunks))
            os.replace(tmp, folder / f"{sop_uid}.dcm")

    config = ScpConfig(port=port, allow=parse_allow(["BENCH@127.0.0.1"]), min_free_bytes=0)
    StorageSCP(config, Unsynced(folder, journal=False).open(), on_stored=lambda study: None).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    threading.Event().wait()


def serve_pynetdicom(port: int, folder: Path) -> None:
    """Run the receiver xrq had before interop/ul.py on `port` until terminated: pynetdicom's
    `AE.start_server` (its reactor, 4 MiB PDUs), every storage class in every syntax, and xrq's
    checks and durable inbox behind its C-STORE handler (through a request shaped as ul's)."""
    import threading

    from pynetdicom import AE, AllStoragePresentationContexts, evt

    from interop.inbox import Inbox
    from interop.scp import MAX_PDU, ScpConfig, StorageSCP, decodable_transfer_syntaxes, parse_allow
    from interop.ul import Requestor, Store

    config = ScpConfig(port=port, allow=parse_allow(["BENCH@127.0.0.1"]), min_free_bytes=0)
    scp = StorageSCP(config, Inbox(folder, journal=False).open(), on_stored=lambda study: None)

    def on_store(event: Any) -> int:
        request = event.request
        return scp.store(Store(Requestor(str(event.assoc.requestor.ae_title).strip(), event.assoc.requestor.address),
                               str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID),
                               str(event.context.transfer_syntax), event.encoded_dataset(include_meta=False),
                               request.DataSet.getbuffer().nbytes))

    ae = AE(ae_title="XRQ")
    ae.maximum_pdu_size = MAX_PDU
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), decodable_transfer_syntaxes())
    ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    threading.Event().wait()


def one_round(kind: str, files: list[Path], syntax: str, associations: int) -> float:
    work = Path(tempfile.mkdtemp(prefix=f"xrq-bench-{kind}-"))
    port = free_port()
    proc = receiver(kind, work, port)
    try:
        wait_port(port, proc)
        elapsed = send(port, files, "STORESCP" if kind == "storescp" else "XRQ", syntax, associations)
        wait_received(kind, work, len(files))
        return len(files) / elapsed
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


def durable_floor(folder: Path) -> dict[str, float]:
    """Instances per second that the inbox alone (no network) makes durable on this disk, each file's
    bytes through `Inbox.store` (what every acknowledgement waits for: an append to the journal and one
    fdatasync) and, for comparison, through `Inbox.write` (a file of its own: temporary file, fsync,
    rename, folder fsync, what the journal's thread then does in the background). Measured in a
    process of its own session, as the receivers are."""
    out = subprocess.run([sys.executable, "-m", "bench.listen", "--floor", str(folder)], cwd=REPO, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                         start_new_session=True)
    return {key: float(value) for key, value in json.loads(out.stdout).items()}


def measure_floor(folder: Path) -> dict[str, float]:
    from interop.inbox import Inbox

    blobs = [f.read_bytes() for f in sorted(folder.glob("*.dcm"))]
    rates = {}
    for name, journal in (("journal", True), ("file", False)):
        with tempfile.TemporaryDirectory(prefix="xrq-bench-floor-") as tmp:
            inbox = Inbox(Path(tmp), journal=journal).open()
            store = inbox.store if journal else inbox.write
            started = time.perf_counter()
            for i, blob in enumerate(blobs):
                store("1.2.3", f"1.2.3.{i + 1}", [blob])
            rates[name] = len(blobs) / (time.perf_counter() - started)
            inbox.close()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--associations", type=int, default=1, help="storescu processes sending at once")
    parser.add_argument("--source", type=Path, default=REPO / "tests" / "data" / "dicom" / "rsna_pneumonia_cr.dcm")
    parser.add_argument("--serve-unsynced", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-pynetdicom", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--floor", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--receivers", default="xrq,storescp,unsynced,pynetdicom",
                        help="which receivers to measure (xrq and storescp always)")
    parser.add_argument("--syntax", default="-xy", help="storescu's proposal option (-xy: JPEG baseline, the "
                                                         "source's; -x=: uncompressed)")
    args = parser.parse_args()
    if args.serve_unsynced:
        serve_unsynced(int(args.serve_unsynced[0]), Path(args.serve_unsynced[1]))
        return
    if args.serve_pynetdicom:
        serve_pynetdicom(int(args.serve_pynetdicom[0]), Path(args.serve_pynetdicom[1]))
        return
    if args.floor:
        print(json.dumps(measure_floor(args.floor)))
        return
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install dcmtk)")
    with tempfile.TemporaryDirectory(prefix="xrq-bench-files-") as tmp:
        files = make_files(args.source, Path(tmp) / "files", args.instances)
        kinds = ["xrq", "storescp", *(k for k in args.receivers.split(",") if k in ("unsynced", "pynetdicom"))]
        rates: dict[str, list[float]] = {kind: [] for kind in [*kinds, "durable_floor", "file_floor"]}
        for r in range(args.rounds):
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                rates[kind].append(one_round(kind, files, args.syntax, args.associations))
            floor = durable_floor(files[0].parent)
            rates["durable_floor"].append(floor["journal"])
            rates["file_floor"].append(floor["file"])
        size = files[0].stat().st_size
    median = {kind: statistics.median(values) for kind, values in rates.items()}
    xrq, bound, floor = median["xrq"], median["storescp"], median["durable_floor"]
    result: dict[str, Any] = {
        "instances": args.instances, "rounds": args.rounds, "associations": args.associations,
        "bytes_per_instance": size,
        "xrq_per_s": round(xrq, 1), "storescp_per_s": round(bound, 1), "ratio": round(xrq / bound, 3),
        "durable_floor_per_s": round(floor, 1), "ratio_to_durable_floor": round(xrq / floor, 3),
        "file_floor_per_s": round(median["file_floor"], 1)}
    if "unsynced" in median:
        result.update(unsynced_scp_per_s=round(median["unsynced"], 1),
                      unsynced_scp_ratio=round(median["unsynced"] / bound, 3),
                      ratio_to_unsynced_scp=round(xrq / median["unsynced"], 3))
    if "pynetdicom" in median:
        result.update(pynetdicom_scp_per_s=round(median["pynetdicom"], 1),
                      pynetdicom_scp_ratio=round(median["pynetdicom"] / bound, 3),
                      speedup_over_pynetdicom=round(xrq / median["pynetdicom"], 2))
    result.update(rounds_per_s={k: [round(v, 1) for v in vs] for k, vs in rates.items()},
                  load_average=os.getloadavg()[0], cpus=os.cpu_count(), python=platform.python_version())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
