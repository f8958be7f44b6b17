"""Decoding + preprocessing per image, and how it scales with decode workers; prints JSON.

    python -m bench.decode [--folder examples/iu] [--rounds 5] [--workers 1,2,4] [--tasks 36]

1. Per image, single-threaded, on the real files (bytes already in memory): Pillow's decode alone
   (`Image.open(...).load()`, the floor), then `model.imaging.images.decode_bytes` + preprocessing by the old
   path (RGB first, then the processor) and by `model.imaging.preprocess.view_tensor`. Reported: the sum over
   the folder of each image's median, and the ratio to Pillow's decode alone (target: new <= 1.25).
   Also a view cache hit (`model.imaging.view_cache.ViewCache.get`), the cost that replaces all of it.
2. Throughput of read + decode + `view_tensor` (what a decode worker does) with N workers as threads
   and as processes (`concurrent.futures`; pools started and warmed before timing; a process returns
   its (3, H, W) tensor through a pipe, as it would to the batch).

Everything is measured interleaved, the order of the methods alternating round by round, so a noisy
shared machine slows each of them alike. From the 1-worker and N-worker throughputs: the fraction of
an image's time spent holding the GIL, by Amdahl's law (threads can overlap only the GIL-free part),
taking the processes' speedup as what the machine allows.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent

import PIL  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import ViTImageProcessorPil  # noqa: E402

from model.imaging.images import decode_bytes  # noqa: E402
from model.imaging.preprocess import fast_path_refusal, view_tensor  # noqa: E402
from model.imaging.view_cache import ViewCache  # noqa: E402

_processor: ViTImageProcessorPil | None = None


def processor() -> ViTImageProcessorPil:
    """xrq's default preprocessing (what `model.network.bundle` builds): ViT's, at 224×224."""
    global _processor
    if _processor is None:
        _processor = ViTImageProcessorPil()
        _processor.size = {"height": 224, "width": 224}
    return _processor


def pil_decode(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as im:
        im.load()


def decode_only(data: bytes) -> Image.Image:
    return decode_bytes(data)


def old_path(data: bytes) -> torch.Tensor:
    image = decode_bytes(data)
    return processor()(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"][0]


def new_path(data: bytes) -> torch.Tensor:
    return view_tensor(processor(), decode_bytes(data))


def load_view(path: str) -> torch.Tensor:
    """One decode worker's task: read, decode, preprocess (the pipeline's `_load_view`, minus checks)."""
    with open(path, "rb") as f:
        return new_path(f.read())


def per_image(files: list[Path], rounds: int) -> dict[str, Any]:
    methods: dict[str, Callable[[bytes], object]] = {"pil_decode": pil_decode, "decode_bytes": decode_only,
                                                     "old": old_path, "new": new_path}
    blobs = [f.read_bytes() for f in files]
    large = [i for i, data in enumerate(blobs) if _pixels(data) >= 2048 * 2048]
    times: dict[str, list[list[float]]] = {m: [[] for _ in files] for m in methods}
    order = list(methods)
    for r in range(rounds):
        for i, data in enumerate(blobs):
            for name in order if (r + i) % 2 == 0 else order[::-1]:  # alternate who goes first
                t0 = time.perf_counter()
                methods[name](data)
                times[name][i].append(time.perf_counter() - t0)
    return {"all": _summary(times, list(range(len(files)))), "2048px_and_up": _summary(times, large)}


def _summary(times: dict[str, list[list[float]]], which: list[int]) -> dict[str, Any]:
    """Sums over the chosen images of each one's median time, per image, and the ratios to Pillow's decode."""
    if not which:
        return {"images": 0}
    total = {m: sum(statistics.median(per_file[i]) for i in which) for m, per_file in times.items()}
    worst = max(statistics.median(times["new"][i]) / statistics.median(times["pil_decode"][i]) for i in which)
    return {
        "images": len(which),
        "ms_per_image": {m: round(1000 * t / len(which), 2) for m, t in total.items()},
        "ratio_to_pil_decode": {m: round(total[m] / total["pil_decode"], 3) for m in ("decode_bytes", "old", "new")},
        "target_new": 1.25,
        "new_ratio_worst_image": round(worst, 3),
    }


def _pixels(data: bytes) -> int:
    image = decode_bytes(data)
    return image.width * image.height


def cache_hit(files: list[Path], rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as root:
        cache = ViewCache(root, max_bytes=1 << 30)
        keys = []
        for i, f in enumerate(files):
            key = cache.key(f"{i:064x}", processor())
            cache.put(key, new_path(f.read_bytes()))
            keys.append(key)
        get, put = [], []
        view = new_path(files[0].read_bytes())
        for _ in range(rounds):
            for key in keys:
                t0 = time.perf_counter()
                cache.get(key)
                t1 = time.perf_counter()
                cache.put(key, view)
                put.append(time.perf_counter() - t1)
                get.append(t1 - t0)
        return {"get_ms": round(1000 * statistics.median(get), 3), "put_ms": round(1000 * statistics.median(put), 3),
                "entry_bytes": round(cache.size() / len(keys))}


def _warm(_: int) -> int:
    processor()
    return os.getpid()


def throughput(files: list[Path], workers: list[int], rounds: int, tasks: int) -> dict[str, Any]:
    paths = [str(files[i % len(files)]) for i in range(tasks)]
    pools: dict[tuple[str, int], Executor] = {}
    for n in workers:
        pools["threads", n] = ThreadPoolExecutor(n)
        pools["processes", n] = ProcessPoolExecutor(n, mp_context=get_context("fork"))
    try:
        for (_, n), pool in pools.items():  # start every worker and build its processor before timing
            list(pool.map(_warm, range(4 * n)))
            list(pool.map(load_view, paths[: 2 * n]))
        rates: dict[tuple[str, int], list[float]] = {key: [] for key in pools}
        order = list(pools)
        for r in range(rounds):
            for key in order if r % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                for _ in pools[key].map(load_view, paths):
                    pass
                rates[key].append(tasks / (time.perf_counter() - t0))
    finally:
        for pool in pools.values():
            pool.shutdown()
    median = {key: statistics.median(v) for key, v in rates.items()}
    out: dict[str, Any] = {kind: {str(n): round(median[kind, n], 2) for n in workers}
                           for kind in ("threads", "processes")}
    one_t, one_p = median["threads", 1], median["processes", 1]
    out["speedup"] = {kind: {str(n): round(median[kind, n] / median[kind, 1], 3) for n in workers}
                      for kind in ("threads", "processes")}
    cores = os.cpu_count() or 1
    n2 = min((n for n in workers if n > 1 and n <= cores), default=None)
    if n2 is not None:
        s_t, s_p = median["threads", n2] / one_t, median["processes", n2] / one_p
        out["gil_held_fraction"] = {
            "workers": n2,
            # Amdahl with the ideal n2-fold parallelism: f = (1/S - 1/N) / (1 - 1/N)
            "amdahl_ideal": round(max(0.0, (1 / s_t - 1 / n2) / (1 - 1 / n2)), 3),
            # the same, taking what processes reach on this machine as the parallelism there is
            "amdahl_vs_processes": round(max(0.0, (1 / s_t - 1 / s_p) / (1 - 1 / s_p)), 3) if s_p > 1 else None,
        }
    out["single_worker_ms"] = {"threads": round(1000 / one_t, 2), "processes": round(1000 / one_p, 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default=str(REPO / "examples" / "iu"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--tasks", type=int, default=36, help="images per throughput measurement")
    args = parser.parse_args()
    files = sorted(p for p in Path(args.folder).iterdir() if p.is_file())
    workers = sorted({int(n) for n in args.workers.split(",")} | {1})
    if fast_path_refusal(processor()) is not None:
        raise SystemExit(f"the fast path is off: {fast_path_refusal(processor())}")
    result = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "pillow": PIL.__version__,
                    "torch": torch.__version__, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "folder": os.path.relpath(args.folder, REPO),
        "per_image": per_image(files, args.rounds),
        "view_cache": cache_hit(files, args.rounds),
        "throughput_images_per_s": throughput(files, workers, args.rounds, args.tasks),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
