"""Training throughput and peak memory of `xrq train`, with bf16 autocast on and off; prints JSON lines.

    python -m bench.train                                  # base preset, cuda if available, bf16 on and off
    python -m bench.train --preset tiny --steps 4 --batch-size 8 --device cpu   # a CPU smoke run

It runs the real trainer (`model.training.loop.train`) on the bundled IU studies, copied under new uids until
there are enough for `--batch-size` studies per step (temporary CSVs and symlinks; nothing in the repo
changes). Images are decoded once and cached, as the trainer does for small sets, so the numbers are
the training step's: forward, backward, AdamW. Each setting runs in its own process so that peak
memory is its own: `torch.cuda.max_memory_allocated` on CUDA, peak RSS of the process on CPU.
Reported images/s is the median over the steps after `--skip` warm-up steps. On CPU bf16 is a no-op
(the trainer autocasts on CUDA only), so the two CPU lines differ by noise only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent

from model.defaults import PRESET_NAMES  # noqa: E402


def synthetic_iu(folder: Path, copies: int) -> tuple[Path, Path]:
    """Reports and projections CSVs listing `copies` × the bundled studies, with their images symlinked."""
    from model.datasets.iu import read_iu
    from model.training.data import index_images, iu_key

    studies = read_iu(REPO / "data/iu/indiana_reports.csv", REPO / "data/iu/indiana_projections.csv")
    present = index_images(REPO / "examples/iu")
    (folder / "images").mkdir(parents=True)
    reports, projections = [], []
    for copy in range(copies):
        for study in studies.values():
            keys = [(iu_key(name), projection) for name, projection in study.images]
            found = [(k, p) for k, p in keys if k in present]
            if not study.findings or not found:
                continue
            uid = f"{copy + 1}{study.uid:0>5}"
            reports.append({"uid": uid, "MeSH": "", "Problems": "", "image": "", "indication": "",
                            "comparison": "", "findings": study.findings, "impression": study.impression})
            for key, projection in found:
                name = f"{uid}_{str(key).split('_', 1)[1]}.dcm.png"
                (folder / "images" / name).symlink_to(present[str(key)])
                projections.append({"uid": uid, "filename": name, "projection": projection})
    return _write(folder / "reports.csv", reports), _write(folder / "projections.csv", projections)


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def one(args: argparse.Namespace) -> dict[str, object]:
    """One setting, in this process: train `steps` steps, read the rows back, measure memory."""
    import torch

    from model.training.loop import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        copies = max(1, -(-args.batch_size // 9))  # 9 bundled studies have findings
        reports, projections = synthetic_iu(Path(tmp), copies)
        config = TrainConfig(reports=str(reports), projections=str(projections), images=f"{tmp}/images",
                             preset=args.preset, tokenizer="gpt2", split="all", max_steps=args.steps + 1,
                             batch_size=args.batch_size, max_tokens=args.max_tokens, eval_every=10**9,
                             bf16=args.bf16 == "on", warmup=1)
        cuda = torch.cuda.is_available() and args.device != "cpu"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        train(config, Path(tmp) / "run", device=args.device, stop_after=args.steps)  # stops before validating
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    timed = rows[args.skip:] or rows
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"bench": "train", "preset": args.preset, "device": "cuda" if cuda else "cpu", "bf16": args.bf16,
            "bf16_active": cuda and args.bf16 == "on", "batch_size": args.batch_size, "max_tokens": args.max_tokens,
            "steps_timed": len(timed), "images_per_s": round(statistics.median(r["images_per_s"] for r in timed), 2),
            "images_per_step": round(statistics.mean(r["images"] for r in timed), 1),
            "peak_memory_mib": round(peak / 2**20, 1), "peak_memory_kind": "cuda_allocated" if cuda else "rss"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base", choices=PRESET_NAMES)
    parser.add_argument("--device", default=None, help="cuda, cpu  [default: cuda if available]")
    parser.add_argument("--batch-size", type=int, default=32, help="Studies per step.")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--skip", type=int, default=2, help="Warm-up steps left out of the median.")
    parser.add_argument("--bf16", choices=["on", "off", "both"], default="both")
    args = parser.parse_args()
    if args.bf16 != "both":
        print(json.dumps(one(args)), flush=True)
        return
    argv = ["--preset", args.preset, "--batch-size", str(args.batch_size), "--max-tokens", str(args.max_tokens),
            "--steps", str(args.steps), "--skip", str(args.skip), *(["--device", args.device] if args.device else [])]
    for setting in ("on", "off"):  # each in a fresh process: its own peak memory
        subprocess.run([sys.executable, "-m", "bench.train", *argv, "--bf16", setting], check=True, cwd=REPO)


if __name__ == "__main__":
    main()
