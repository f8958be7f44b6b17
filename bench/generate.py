"""Generation throughput: Hugging Face's generate, one image at a time and batched, against xrq's Engine.

    python -m bench.generate [--preset tiny|base] [--model DIR] [--device auto] [--studies 64]
                             [--views 1] [--max-new-tokens 60] [--beams 1] [--batch-sizes 1,8,32] [--compile]

Every run decodes the same weights on the same preprocessed images (real X-rays from examples/iu,
cycled to --studies; the pixel values do not change the cost, but real ones keep the reports
honest), with reports forced to one length (min_new_tokens == max_new_tokens), so every run does
the same work per report. Runs:

- `hf-naive`: a plain transformers VisionEncoderDecoderModel, loaded from the saved xrq weights
  (single-view models load there), `generate` on one image at a time, fp32: the baseline.
- `hf-batched`: the same model, one `generate` per batch of the largest --batch-sizes, fp32.
- `xrq-autocast`: `generate_from_pixels` (the trainer's path: fp32 weights, bf16 autocast on CUDA).
- `engine`: `model.inference.engine.Engine` at each batch size; fp32 and bf16 on CUDA (fp32 on a CPU);
  with --compile also the compiled static-cache engine.

HF runs only with --views 1 (transformers' model takes one image per report). Prints JSON: reports/s,
the ratio to hf-naive, and peak memory (torch.cuda.max_memory_allocated on CUDA, peak RSS on a
CPU). Needs torch, transformers and pillow only: nothing that imports a database or a broker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import VisionEncoderDecoderModel  # noqa: E402

from model.defaults import PRESETS  # noqa: E402
from model.imaging.preprocess import pixel_values  # noqa: E402
from model.inference.engine import Engine, EngineOptions  # noqa: E402
from model.inference.generate import GenerationSettings, generate_from_pixels  # noqa: E402
from model.network.bundle import Bundle, build, resolve_device  # noqa: E402
from model.network.store import load, save  # noqa: E402

EXAMPLES = REPO / "examples" / "iu"
BUDGET_S = 20.0  # the most one measurement runs (--seconds)


def main() -> None:
    args = _parse()
    device = resolve_device(args.device)
    settings = GenerationSettings(num_beams=args.beams, max_new_tokens=args.max_new_tokens)
    sizes = sorted({int(s) for s in args.batch_sizes.split(",")})
    compile_sizes = sorted({int(s) for s in (args.compile_batch_sizes or str(sizes[-1])).split(",")})
    global BUDGET_S
    BUDGET_S = args.seconds
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model) if args.model else save(build(args.preset, max_views=max(args.views, 1)), tmp)
        bundle = _fresh(folder, device, args.max_new_tokens)
        pixels, mask = _pixels(bundle, max(args.studies, sizes[-1]), args.views)  # (N, V, 3, H, W), (N, V)
        runs: list[dict[str, Any]] = []
        if args.views == 1:
            runs += _hf_runs(folder, device, pixels, settings, sizes[-1], args.studies, args.naive_studies)
        runs.append(_autocast_run(bundle, pixels, mask, settings, sizes[-1], args.studies))
        del bundle  # each run below loads its own copy; the peaks must not count this one
        for compiled in [False, True] if args.compile else [False]:
            # Compiled: bf16 only on CUDA, and only the --compile-batch-sizes (each shape compiles once).
            for bf16 in ([True] if compiled else [False, True]) if device.type == "cuda" else [False]:
                engine = Engine(_fresh(folder, device, args.max_new_tokens), EngineOptions(compile=compiled, bf16=bf16))
                for size in compile_sizes if compiled else sizes:
                    runs.append(_measure("engine", size, str(engine.dtype).removeprefix("torch."), compiled,
                                         args.studies, device, _engine_step(engine, pixels, mask, size, settings)))
                runs[-1]["auto_batch_size"] = engine.auto_batch_size(settings, args.views)
                del engine
    base = next((r["reports_per_s"] for r in runs if r["name"] == "hf-naive"), None)
    for r in runs:
        r["vs_hf_naive"] = round(r["reports_per_s"] / base, 2) if base else None
    print(json.dumps({
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores, "
                  f"{torch.get_num_threads()} threads)",
        "preset": None if args.model else args.preset, "model": args.model, "studies": args.studies,
        "views": args.views, "max_new_tokens": args.max_new_tokens, "beams": args.beams,
        "torch": torch.__version__, "runs": runs,
    }, indent=2))


def _hf_runs(folder: Path, device: torch.device, pixels: torch.Tensor, settings: GenerationSettings, batch: int,
             studies: int, naive_studies: int) -> list[dict[str, Any]]:
    """transformers' own model: one image per generate, then one batch per generate (fp32)."""
    hf = _hf_model(folder, device, settings.max_new_tokens)
    kwargs = settings.generate_kwargs()
    return [
        _measure("hf-naive", 1, "float32", False, min(studies, naive_studies), device,
                 lambda i: hf.generate(pixel_values=pixels[i:i + 1, 0].to(device), **kwargs)),
        _measure("hf-batched", batch, "float32", False, studies, device,
                 lambda i: hf.generate(pixel_values=pixels[i:i + batch, 0].to(device), **kwargs)),
    ]


def _autocast_run(bundle: Bundle, pixels: torch.Tensor, mask: torch.Tensor, settings: GenerationSettings,
                  batch: int, studies: int) -> dict[str, Any]:
    """xrq before the engine: `generate_from_pixels`, fp32 weights under bf16 autocast on CUDA."""
    dtype = "bfloat16-autocast" if bundle.device.type == "cuda" else "float32"
    return _measure("xrq-autocast", batch, dtype, False, studies, bundle.device,
                    lambda i: generate_from_pixels(bundle, pixels[i:i + batch], mask[i:i + batch], settings))


def _engine_step(engine: Engine, pixels: torch.Tensor, mask: torch.Tensor, batch: int,
                 settings: GenerationSettings) -> Callable[[int], Any]:
    return lambda i: engine.generate(pixels[i:i + batch], mask[i:i + batch], settings)


def _measure(name: str, batch: int, dtype: str, compiled: bool, studies: int, device: torch.device,
             step: Callable[[int], Any]) -> dict[str, Any]:
    """Time `step(start)` over whole batches covering `studies` (the last batch wraps, so shapes never change),
    or as many as fit in BUDGET_S seconds (so batch 1 of thousands of studies stays affordable).

    The first batch runs untimed first (allocations, autotuning, compilation: reported as warmup_s).
    """
    wanted = max(1, -(-studies // batch))
    room = max(1, max(studies, batch) - batch + 1)  # batch starts that keep a whole batch in the pixels
    _reset_peak(device)
    started = time.perf_counter()
    step(0)
    _sync(device)
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    batches = 0
    while batches < wanted and (batches == 0 or time.perf_counter() - started < BUDGET_S):
        step((batches * batch) % room)
        batches += 1
        if batches % 8 == 0:
            _sync(device)  # the budget is checked against work done, not work queued
    _sync(device)
    seconds = time.perf_counter() - started
    return {"name": name, "batch_size": batch, "dtype": dtype, "compiled": compiled, "reports": batches * batch,
            "seconds": round(seconds, 3), "reports_per_s": round(batches * batch / seconds, 2),
            "warmup_s": round(warmup, 2), "peak_memory_mb": _peak_mb(device)}


def _pixels(bundle: Bundle, studies: int, views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`studies` studies of `views` real X-rays each (cycled from examples/iu), preprocessed once."""
    files = sorted(EXAMPLES.glob("*.png"))
    images = [Image.open(f).convert("L") for f in files]
    chosen = [[images[(i * views + v) % len(images)] for v in range(views)] for i in range(studies)]
    return pixel_values(bundle.processor, chosen, max(views, 1))


def _fresh(folder: Path, device: torch.device, length: int) -> Bundle:
    bundle = load(folder, device=device)
    bundle.model.generation_config.min_new_tokens = length  # every report as long as the longest
    return bundle


def _hf_model(folder: Path, device: torch.device, length: int) -> VisionEncoderDecoderModel:
    """The saved xrq weights in transformers' own class: what a user without xrq would run."""
    hf = VisionEncoderDecoderModel.from_pretrained(folder, use_safetensors=True, dtype=torch.float32,
                                                   trust_remote_code=False)
    hf.generation_config.min_new_tokens = length
    return cast(VisionEncoderDecoderModel, cast(torch.nn.Module, hf).to(device).eval())


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux: "5" resets the process's peak RSS (VmHWM) to its current RSS
        Path("/proc/self/clear_refs").write_text("5")


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    try:
        status = Path("/proc/self/status").read_text()
        kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1024, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="random weights of this size")
    parser.add_argument("--model", help="a saved xrq model directory instead of a preset")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--studies", type=int, default=64)
    parser.add_argument("--naive-studies", type=int, default=32, help="at most this many for the slow baseline")
    parser.add_argument("--views", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--beams", type=int, default=1)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--compile", action="store_true", help="also the compiled static-cache engine")
    parser.add_argument("--compile-batch-sizes", help="batch sizes for the compiled engine [default: the largest]")
    parser.add_argument("--seconds", type=float, default=BUDGET_S, help="the most one measurement runs")
    return parser.parse_args()


if __name__ == "__main__":
    main()
