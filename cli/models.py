"""`xrq model ...`: make and inspect model directories."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
def model() -> None:
    """Make and inspect models (a model is one self-describing directory)."""


@model.command("init")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the model to.")
@click.option("--preset", type=click.Choice(["tiny", "base"]), default="tiny",
              help="tiny: seconds on a CPU, for tests and demos; base: ViT-B/16 + GPT-2 small sizes.")
@click.option("--encoder", metavar="ID_OR_PATH", help="Pretrained ViT (hub id or local directory).")
@click.option("--decoder", metavar="ID_OR_PATH", help="Pretrained GPT-2 (hub id or local directory).")
@click.option("--tokenizer", metavar="DIR", help="Tokenizer directory [default: the GPT-2 vocabulary].")
@click.option("--seed", type=int, default=0, help="Seed for the random weights.")
@click.option("--force", is_flag=True, help="Overwrite a non-empty --out directory.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON description instead of text.")
def init(out: Path, preset: str, encoder: str | None, decoder: str | None, tokenizer: str | None,
         seed: int, force: bool, as_json: bool) -> None:
    """Build an untrained (or pretrained-parts) ViT + GPT-2 model and save it to --out.

    \b
    Examples:
      xrq model init --out models/tiny
      xrq model init --out models/base --preset base \\
          --encoder google/vit-base-patch16-224-in21k --decoder gpt2
    """
    from model.bundle import build, save

    bundle = build(preset, encoder=encoder, decoder=decoder, tokenizer=tokenizer, seed=seed)
    path = save(bundle, out, overwrite=force)
    params = sum(p.numel() for p in bundle.model.parameters())
    info = {"path": str(path), "preset": preset, "parameters": params, "fingerprint": bundle.fingerprint}
    if as_json:
        click.echo(json.dumps(info))
    else:
        click.echo(f"Saved a {preset} model ({params / 1e6:.1f}M parameters) to {path}")
