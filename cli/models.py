"""`xrq model ...`: make and inspect model directories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from model.defaults import PRESET_NAMES


@click.group()
def model() -> None:
    """Make and inspect models (a model is one self-describing directory)."""


@model.command("init")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the model to.")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="tiny",
              help="Sizes of the parts not given as --encoder/--decoder. tiny: seconds on a CPU, for tests "
                   "and demos; small: trains from scratch on a CPU in minutes; base: ViT-B/16 + GPT-2 small sizes.")
@click.option("--encoder", metavar="ID_OR_PATH", help="Pretrained ViT (hub id or local directory).")
@click.option("--decoder", metavar="ID_OR_PATH", help="Pretrained GPT-2 (hub id or local directory).")
@click.option("--tokenizer", metavar="DIR",
              help="Tokenizer directory [default: the decoder's own, else the GPT-2 vocabulary].")
@click.option("--seed", type=int, default=0, help="Seed for the random weights.")
@click.option("--force", is_flag=True, help="Overwrite a non-empty --out directory.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON description instead of text.")
def init(out: Path, preset: str, encoder: str | None, decoder: str | None, tokenizer: str | None,
         seed: int, force: bool, as_json: bool) -> None:
    """Build an untrained (or pretrained-parts) ViT + GPT-2 model and save it to --out, with its card.

    \b
    Examples:
      xrq model init --out models/tiny
      xrq model init --out models/base --preset base \\
          --encoder google/vit-base-patch16-224-in21k --decoder gpt2
    """
    from model.network.bundle import build
    from model.network.card import architecture_text
    from model.network.store import save

    bundle = build(preset, encoder=encoder, decoder=decoder, tokenizer=tokenizer, seed=seed)
    path = save(bundle, out, overwrite=force)
    params = sum(p.numel() for p in bundle.model.parameters())
    made = bundle.meta.preset
    info = {"path": str(path), "preset": made, "parameters": params, "fingerprint": bundle.fingerprint,
            "architecture": architecture_text(bundle.model.config)}
    if as_json:
        click.echo(json.dumps(info))
    else:
        kind = f"{made} model" if made else "model of pretrained parts"
        click.echo(f"Saved a {kind} ({params / 1e6:.1f}M parameters: {info['architecture']}) to {path}")


@model.command("info")
@click.argument("model_dir", metavar="DIR")
@click.option("--json", "as_json", is_flag=True, help="Print every fact as JSON.")
def info(model_dir: str, as_json: bool) -> None:
    """Show what a model directory holds: sizes, views, tokenizer, preprocessing, fingerprint, training.

    \b
    Examples:
      xrq model info models/demo
      xrq model info models/demo --json | jq .fingerprint
    """
    from model.network.store import info as model_info

    facts = model_info(model_dir)
    click.echo(json.dumps(facts, indent=2) if as_json else _info_text(facts))


def _info_text(f: dict[str, Any]) -> str:
    recorded = f["recorded_fingerprint"]
    same = ("as recorded in xrq.json" if recorded == f["fingerprint"] else
            f"xrq.json records {recorded[:12]}: the files changed since it was saved" if recorded else
            "no xrq.json")
    p, tok, t = f["preprocessing"], f["tokenizer"], f["training"]
    rows = [
        ("fingerprint", f"{f['fingerprint']} ({same})"),
        ("architecture", f"{f['architecture_text']}; {f['parameters'] / 1e6:.2f}M parameters"
                         + (f" (preset {f['preset']})" if f["preset"] else "")),
        ("views", f"up to {f['max_views']} per study"),
        ("tokenizer", f"{tok['size']} tokens ({tok['class']}): {tok['source']}"),
        ("preprocessing", f"{p['size'].get('height')}×{p['size'].get('width')} {p['resample']}, "
                          f"mean {p['image_mean']}, std {p['image_std']}"),
        ("sources", ", ".join(f"{k} {v}" for k, v in f["sources"].items() if v) or f"random, seed {f['seed']}"),
    ]
    if t:
        rows += [("trained", f"{t.get('step')} of {t.get('total_steps')} steps on {t.get('device')}, "
                             f"{(t.get('data') or {}).get('train')} studies"),
                 ("command", str(t.get("command")))]
    else:
        rows.append(("trained", "no (untrained weights)"))
    scores = {k: v for k, v in f["scores"].items() if k.startswith("val_")}
    if scores:
        rows.append(("scores", ", ".join(f"{k[4:]} {v}" for k, v in scores.items())
                     + f" (split {f['scores'].get('split')}, step {f['scores'].get('step')})"))
    if f["generation"]:
        rows.append(("generation", ", ".join(f"{k} {v}" for k, v in f["generation"].items())))
    rows += [("made", f"{f['created_at']} with transformers {f['transformers_version']}"),
             ("files", ", ".join(f"{name} {_size(n)}" for name, n in f["files"].items())
                       + f"; {_size(f['bytes'])} in all"),
             ("code", "; ".join(f"{name} sha256 {c['sha256'][:12]}… as saved"
                                + (", this xrq's own" if c["xrq"] else ", another xrq version's")
                                for name, c in f["code"].items()) or "none"),
             ("transformers", "AutoModelForImageTextToText.from_pretrained(DIR, trust_remote_code=True)"
                              if f["remote_code"] else "no multi-view code saved (save it again with xrq)")]
    width = max(len(k) for k, _ in rows)
    return "\n".join([f["path"], *(f"  {k.ljust(width)}  {v}" for k, v in rows)])


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"
