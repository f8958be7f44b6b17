"""The hardening campaign in one run: bad inputs, CLI misuse, tampered models, distributed faults; prints JSON.

    python -m bench.faults [--skip-distributed] [--keep] [--postgres URL] [--redis URL]

1. Bad inputs: one folder holding every kind of bad (and oddly shaped but valid) file we know of,
   submitted with `xrq submit --json` in a subprocess. Counted: kinds tried, tracebacks, files not
   accounted for (neither reported nor failed with a one-line reason), the peak memory of the run.
2. CLI cases: commands a user gets wrong (options out of range, ids too large for the database,
   paths that cannot be written, devices that do not exist) and model directories tampered with; each
   must end in `Error: ...` and a non-zero exit, never a traceback.
3. Security (bench/faults_security.py): remote code planted in model directories, edited modelling code,
   forged task messages to a real worker, CSV that a spreadsheet would run; kinds tried, mishandled.
4. Reliability (issue 19, bench/faults_reliability.py): a real full disk (tmpfs) at several fill
   levels, names that are not UTF-8, 1,100 nested folders, bad XRQ_* URLs and schedules in every
   command, `submit --wait` with no worker, notes.txt, `--strict`; `kinds` tried, `mishandled` 0.
5. Distributed faults: the fault tests (killed workers and pool processes, duplicate deliveries, the
   database and the broker going away, each pipeline stage failing in each path, concurrent
   resubmissions), which each assert that every study is reported exactly once.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "iu"
DATA = REPO / "tests" / "data"
XRQ = [sys.executable, "-c", "import sys; from cli.main import main; sys.argv[0] = 'xrq'; main()"]


def xrq(args: list[str], env: dict[str, str], timeout: float = 600) -> tuple[int, str, str, float]:
    """Run `xrq ARGS`; (exit code, stdout, stderr, peak RSS of the child in MiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run([*XRQ, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env})
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return done.returncode, done.stdout, done.stderr, max(peak, before) / 1024


# ---- 1. bad inputs ----------------------------------------------------------------------------------

def bad_folder(folder: Path, outside: Path) -> dict[str, str]:
    """Write the campaign's files; {relpath: "reported" | "failed"} for what each must become."""
    import numpy as np
    import pydicom
    from PIL import Image

    from testing.badfiles import make_bad_files

    real = EXAMPLES / "CXR7_IM-2263-1001.png"
    expect = dict.fromkeys(make_bad_files(folder, real, outside, huge=True), "failed")
    odd = folder / "odd"
    odd.mkdir()
    gray = np.asarray(Image.open(real).convert("L"))

    def save(name: str, image: Image.Image, outcome: str = "reported", **kwargs: object) -> None:
        image.save(odd / name, **kwargs)
        expect[f"odd/{name}"] = outcome

    save("rgba.png", Image.fromarray(gray).convert("RGBA"))
    save("palette.png", Image.fromarray(gray).convert("P"))
    save("one-pixel.png", Image.new("L", (1, 1), 128))
    save("sixteen-bit.png", Image.fromarray(gray.astype(np.uint16) * 257))
    save("wide.png", Image.new("L", (20_000, 2), 7))
    save("scan.jpg", Image.fromarray(gray), quality=80)
    save("scan.tiff", Image.fromarray(gray))
    save("scan.bmp", Image.fromarray(gray))
    save("scan.webp", Image.fromarray(gray))
    save("named-jpeg.png", Image.fromarray(gray), format="JPEG")  # the content decides, not the name
    save("scan.gif", Image.fromarray(gray))
    big = np.random.default_rng(0).integers(0, 65535, (7000, 7000), dtype=np.uint16)
    save("large-16-bit.png", Image.fromarray(big), compress_level=1)
    (odd / "truncated.jpg").write_bytes((odd / "scan.jpg").read_bytes()[:5000])
    expect["odd/truncated.jpg"] = "failed"
    (odd / "a folder.png").mkdir()
    (odd / "a folder.png" / "inside.png").write_bytes((odd / "scan.bmp").read_bytes())
    expect["odd/a folder.png/inside.png"] = "reported"
    os.mkfifo(odd / "pipe.png")
    expect["odd/pipe.png"] = "failed"
    for name in ("title\x1b]0;pwned\x07.png", "new\nline.png", "ünïcødé.png"):
        shutil.copy(real, odd / name)
        expect[f"odd/{name}"] = "reported"
    for name in ("RG1_UNCR.dcm", "rsna_pneumonia_cr.dcm"):
        shutil.copy(DATA / "dicom" / name, odd / name)
        expect[f"odd/{name}"] = "reported"
    broken = bytearray((DATA / "dicom" / "RG1_J2KR.dcm").read_bytes())
    broken[-20000:] = bytes(20000)
    (odd / "broken-j2k.dcm").write_bytes(bytes(broken))
    expect["odd/broken-j2k.dcm"] = "failed"
    ds = pydicom.dcmread(DATA / "dicom" / "rsna_pneumonia_cr.dcm")
    del ds.PixelData
    ds.save_as(odd / "no-pixels.dcm")
    expect["odd/no-pixels.dcm"] = "failed"
    return expect


def bad_inputs(tmp: Path, model: Path) -> dict[str, object]:
    folder = tmp / "campaign"
    folder.mkdir()
    outside = tmp / "outside.png"
    shutil.copy(EXAMPLES / "CXR25_IM-1024-2001.png", outside)
    expect = bad_folder(folder, outside)
    env = {"XRQ_DATABASE_URL": f"sqlite:///{tmp}/campaign.db"}
    code, out, err, peak = xrq(["submit", str(folder), "--model", str(model), "--group-by", "image",
                                "--max-new-tokens", "4", "--json"], env)
    summary = json.loads(out.strip().splitlines()[-1]) if code == 0 else {}
    failed = {f["uid"]: f["reason"] for f in summary.get("failures", [])}
    wrong = {rel: want for rel, want in expect.items() if (rel in failed) != (want == "failed")}
    multiline = [r for r in failed.values() if "\n" in r]
    return {"kinds": len(expect), "exit_code": code, "tracebacks": int("Traceback" in out + err),
            "reported": summary.get("counts", {}).get("done", 0), "failed": len(failed),
            "unexpected": wrong, "multi_line_reasons": len(multiline), "peak_rss_mib": round(peak)}


# ---- 2. CLI cases -------------------------------------------------------------------------------------

def tampered_models(tmp: Path, model: Path) -> dict[str, Path]:
    """Copies of a good model directory, each broken one way."""
    cases: dict[str, Path] = {}

    def copy(name: str) -> Path:
        out = tmp / "tampered" / name
        shutil.copytree(model, out)
        cases[name] = out
        return out

    def edit_json(path: Path, change: object) -> None:
        data = json.loads(path.read_text())
        change(data)  # type: ignore[operator]
        path.write_text(json.dumps(data))

    edit_json(copy("config-doubled-sizes") / "config.json",
              lambda d: d["decoder"].update(n_embd=d["decoder"]["n_embd"] * 2))
    (copy("config-not-json") / "config.json").write_text("{not json")
    (copy("config-a-list") / "config.json").write_text("[]")
    (copy("xrq-json-not-json") / "xrq.json").write_text("{{{")
    weights = copy("weights-cut-1mb") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: 1 << 20])
    (copy("weights-cut-5-bytes") / "model.safetensors").write_bytes(b"12345")
    (copy("no-weights") / "model.safetensors").unlink()
    (copy("no-config") / "config.json").unlink()
    (copy("no-tokenizer") / "tokenizer.json").unlink()
    (copy("tokenizer-not-json") / "tokenizer.json").write_text("nope")
    (copy("no-preprocessor") / "preprocessor_config.json").unlink()
    (copy("preprocessor-not-json") / "preprocessor_config.json").write_text("][")
    (copy("generation-config-not-json") / "generation_config.json").write_text("?")
    edit_json(copy("config-wrong-type") / "config.json", lambda d: d.update(model_type="bert"))
    (tmp / "tampered" / "empty").mkdir()
    cases["empty"] = tmp / "tampered" / "empty"
    (tmp / "tampered" / "a-file").write_text("not a directory")
    cases["a-file"] = tmp / "tampered" / "a-file"
    return cases


def cli_cases(tmp: Path, model: Path, postgres: str | None) -> dict[str, object]:
    images = tmp / "few"
    images.mkdir()
    shutil.copy(EXAMPLES / "CXR25_IM-1024-2001.png", images)
    db = f"sqlite:///{tmp}/cli.db"
    env = {"XRQ_DATABASE_URL": db}
    xrq(["submit", str(images), "--model", str(model), "--max-new-tokens", "2"], env)
    readonly = tmp / "readonly.db"  # opened read-only (file modes do not stop root, who runs CI here)
    shutil.copy(tmp / "cli.db", readonly)
    cases: list[tuple[str, list[str], dict[str, str]]] = [
        ("beams 100000", ["submit", str(images), "--model", str(model), "--num-beams", "100000"], env),
        ("batch size 0", ["submit", str(images), "--model", str(model), "--batch-size", "0"], env),
        ("beams x batch", ["submit", str(images), "--model", str(model), "--num-beams", "32",
                           "--batch-size", "4096"], env),
        ("report longer than the decoder", ["submit", str(images), "--model", str(model),
                                            "--max-new-tokens", "100000"], env),
        ("device garbage", ["submit", str(images), "--model", str(model), "--device", "garbage"], env),
        ("device meta", ["submit", str(images), "--model", str(model), "--device", "meta"], env),
        ("mistyped model path", ["submit", str(images), "--model", str(tmp / "modles" / "tiny")], env),
        ("job id too large", ["reports", "--job", "99999999999999999999"], env),
        ("limit too large", ["status", "--limit", "99999999999999999999"], env),
        ("status id too large", ["status", "3000000000"], env),
        ("reports to a folder that is not there", ["reports", "-o", "/nonexistent/dir/r.jsonl"], env),
        ("export to a folder that is not there", ["export", "1", "-o", "/nonexistent/dir/e.csv"], env),
        ("show to a folder that is not there", ["show", "25", "-o", "/nonexistent/s.png"], env),
        ("show as text", ["show", "25", "-o", str(tmp / "s.txt")], env),
        ("show a job that is not there", ["show", "25", "--job", "999", "-o", str(tmp / "s.png")], env),
        ("read-only database", ["submit", str(images), "--model", str(model)],
         {"XRQ_DATABASE_URL": f"sqlite:///file:{readonly}?mode=ro&uri=true"}),
        ("not a database", ["status"], {"XRQ_DATABASE_URL": f"sqlite:///{EXAMPLES / 'CXR25_IM-1024-2001.png'}"}),
    ]
    if postgres:
        cases.append(("status id too large on PostgreSQL", ["status", "3000000000"], {"XRQ_DATABASE_URL": postgres}))
    for name, path in tampered_models(tmp, model).items():
        cases.append((f"model {name}", ["submit", str(images), "--model", str(path)],
                      {"XRQ_DATABASE_URL": f"sqlite:///{tmp}/tampered-{name}.db"}))
    results = {}
    for name, args, case_env in cases:
        code, out, err, _ = xrq(args, case_env, timeout=300)
        text = out + err
        results[name] = {"exit_code": code, "traceback": "Traceback" in text,
                         "error_line": next((line for line in text.splitlines() if line.startswith("Error:")), None)}
    # A generation_config.json is a copy of what xrq.json and config.json say (xrq sets the generation
    # settings itself), so a damaged one is ignored, not an error: that case must simply work.
    works = {"model generation-config-not-json"}
    bad = {k: v for k, v in results.items()
           if v["traceback"] or (v["exit_code"] == 0) != (k in works) or (k not in works and not v["error_line"])}
    return {"tried": len(results), "tracebacks": sum(bool(v["traceback"]) for v in results.values()),
            "not_an_error": sorted(bad), "cases": results}


# ---- 3. distributed faults -----------------------------------------------------------------------------

def distributed(tmp: Path) -> dict[str, object]:
    report = tmp / "faults.xml"
    tests = ["tests/worker/test_distributed.py", "tests/worker/test_pipeline.py", "tests/worker/test_resubmit.py",
             "tests/worker/test_deployments.py"]  # two deployments on one broker: neither loses the other's work
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *tests],
                   cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}, capture_output=True)
    xml = report.read_text() if report.exists() else ""
    total = int(re.search(r'tests="(\d+)"', xml).group(1)) if 'tests="' in xml else 0  # type: ignore[union-attr]
    failed = sum(int(n) for n in re.findall(r'(?:failures|errors)="(\d+)"', xml)[:2])
    skipped = int(re.search(r'skipped="(\d+)"', xml).group(1)) if 'skipped="' in xml else 0  # type: ignore[union-attr]
    survived = total - failed - skipped
    # Every one of these tests asserts "each study reported exactly once"; a failure is counted as
    # possibly losing or duplicating, and shown by name.
    names = re.findall(r'<testcase classname="[^"]+" name="([^"]+)"[^>]*>\s*<(?:failure|error)', xml)
    return {"faults": total, "survived": survived, "skipped": skipped, "failed": names,
            "lost": 0 if not failed else "see failed", "duplicated": 0 if not failed else "see failed",
            "seconds": round(time.monotonic() - start)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-distributed", action="store_true")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0",
                        help="a Redis for `submit --wait` with no worker ('' to skip)")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="a PostgreSQL database for the cases that need one ('' to skip)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (printed)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="xrq-faults-"))
    try:
        model = tmp / "model"
        code, _, err, _ = xrq(["model", "init", "--out", str(model)], {})
        assert code == 0, err
        from bench.faults_reliability import reliability
        from bench.faults_security import security

        result = {"bench": "faults", "bad_inputs": bad_inputs(tmp, model),
                  "cli": cli_cases(tmp, model, args.postgres or None), "security": security(tmp, model),
                  "reliability": reliability(tmp, model, EXAMPLES, xrq, args.redis or None)}
        if not args.skip_distributed:
            result["distributed"] = distributed(tmp)
        print(json.dumps(result, indent=2, ensure_ascii=True))
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
