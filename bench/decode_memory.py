"""Peak memory of decoding one large deep picture, in bytes per pixel; prints JSON.

    python -m bench.decode_memory [--size 7000] [--impl path/to/images.py] [--rounds 1]

Makes a size×size 16-bit grey PNG and a 16-bit MONOCHROME1 DICOM with a display window (header from
tests/data/dicom/RG1_UNCR.dcm) in a temporary folder, then decodes each in a fresh Python process, two
ways: `decode(path)` and what a worker does, `decode_bytes(read_submitted(path, root=...))` (the file's
bytes stay in memory while they are decoded). Each child reports its peak RSS (`resource.getrusage`)
after the imports and after the decode; the difference over the pixel count is the decode's cost in
bytes per pixel (the file's own bytes included for the worker path). `--impl` decodes with another
copy of model/imaging/images.py, e.g. the one before a change (`git show HEAD:model/imaging/images.py > /tmp/old.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def make_inputs(folder: Path, size: int) -> dict[str, Path]:
    """A radiograph-like 12-bit picture (smooth anatomy-sized blobs plus noise), as PNG and DICOM."""
    import numpy as np
    import pydicom
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.ogrid[:size, :size]
    pixels = 2048 + 1200 * np.sin(x / (size / 7)) * np.cos(y / (size / 5))  # float64, (size, size)
    pixels += rng.normal(0, 40, (size, size))
    pixels = np.clip(pixels, 0, 4095).astype(np.uint16)
    png = folder / "deep.png"
    Image.fromarray(pixels).save(png, compress_level=1)
    ds = pydicom.dcmread(REPO / "tests" / "data" / "dicom" / "RG1_UNCR.dcm")
    ds.Rows = ds.Columns = size
    ds.BitsStored, ds.HighBit = 12, 11
    ds.WindowCenter, ds.WindowWidth = "2048", "4096"
    ds.PixelData = pixels.tobytes()
    dcm = folder / "deep.dcm"
    ds.save_as(dcm)
    return {"png16": png, "dicom16": dcm}


def child(path: str, way: str, impl: str | None) -> None:
    """In a fresh process: import, note the peak RSS, decode once, note it again; print JSON.
    (The parent stays small: Linux carries a process's peak RSS across exec into its children.)"""
    import importlib.util
    import resource

    if impl:
        spec = importlib.util.spec_from_file_location("images_under_test", impl)
        assert spec is not None and spec.loader is not None
        images = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(images)
    else:
        import model.imaging.images as images
    import numpy as np  # noqa: F401  (imported before the baseline, like the decoder's own imports)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if way == "decode":
        picture = images.decode(path, max_pixels=10**9)
    else:
        data = images.read_submitted(path, root=os.path.dirname(path))
        picture = images.decode_bytes(data, max_pixels=10**9, name=os.path.basename(path))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"size": list(picture.size), "mode": picture.mode, "baseline": before, "peak": after}))


def measure(path: Path, way: str, impl: str | None) -> dict[str, object]:
    command = [sys.executable, __file__, "--child", str(path), way] + (["--impl", impl] if impl else [])
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    width, height = found["size"]
    grew = found["peak"] - found["baseline"]
    return {
        "peak_rss_mib": round(found["peak"] / MIB),
        "baseline_rss_mib": round(found["baseline"] / MIB),
        "decode_mib": round(grew / MIB),
        "bytes_per_pixel": round(grew / (width * height), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=7000)
    parser.add_argument("--impl", help="a copy of model/imaging/images.py to measure instead of the tree's")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "WAY"), help=argparse.SUPPRESS)
    parser.add_argument("--make", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.impl)
        return
    if args.make:
        make_inputs(Path(args.make), args.size)
        return
    with tempfile.TemporaryDirectory() as tmp:
        # Made in a child too: Linux carries a process's peak RSS across exec into its children, so
        # this process must stay small for theirs to be their own.
        subprocess.run([sys.executable, __file__, "--make", tmp, "--size", str(args.size)], check=True)
        inputs = {"png16": Path(tmp) / "deep.png", "dicom16": Path(tmp) / "deep.dcm"}
        results = {
            f"{kind}/{way}": measure(path, way, args.impl)
            for kind, path in inputs.items()
            for way in ("decode", "worker")
        }
        sizes = {kind: round(path.stat().st_size / MIB) for kind, path in inputs.items()}
    print(json.dumps({
        "implementation": args.impl or "model/imaging/images.py",
        "pixels": args.size * args.size,
        "file_mib": sizes,
        "results": results,
        "python": platform.python_version(),
    }, indent=2))


if __name__ == "__main__":
    main()
