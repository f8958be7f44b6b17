"""bench/faults.py's security cases (issue 19), each tried as an attacker would, through the real `xrq`.

- Remote code planted in a model directory (every file transformers reads a class from), and an edited
  multiview.py, for every command that loads a model, with "y" on standard input: the planted code must
  never run, and the command must end in one `Error:` line.
- Forged task messages to a real worker (Redis, a SQLite database): a file to read, a folder to write,
  a job id of 1.5, 200,000 made-up ids, an unknown key: each rejected in one log line, nothing read,
  written or retried.
- CSV: file names that a spreadsheet would run as formulas, and escape sequences, through `xrq reports`
  and `xrq export` to a pipe and a file: neutralised, and byte for byte.

Each case is a kind; `mishandled` counts the kinds that did not hold.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "iu"
XRQ = [sys.executable, "-c", "import sys; from cli.main import main; sys.argv[0] = 'xrq'; main()"]
REDIS = os.environ.get("XRQ_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _run(args: list[str], env: dict[str, str], stdin: str = "y\ny\ny\ny\n", timeout: float = 300) -> tuple[int, str]:
    done = subprocess.run([*XRQ, *args], input=stdin, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env})
    return done.returncode, done.stdout + done.stderr


def _refused(code: int, text: str) -> bool:
    return code == 1 and "Traceback" not in text and any(line.startswith("Error: ") for line in text.splitlines())


def model_cases(tmp: Path, model: Path) -> dict[str, bool]:
    """Planted code and edited code, for each command that loads a model: True where it held."""
    from testing.planted import plant, pretrained_parts

    marker = tmp / "MARKER"
    images = tmp / "sec-images"
    images.mkdir()
    shutil.copy(EXAMPLES / "CXR25_IM-1024-2001.png", images)
    env = {"XRQ_DATABASE_URL": f"sqlite:///{tmp}/sec.db",
           "HF_MODULES_CACHE": str(tmp / "hf-modules")}  # where transformers would copy the code to run it
    planted, edited = tmp / "planted-model", tmp / "edited-model"
    shutil.copytree(model, planted)
    plant(planted, marker)
    shutil.copytree(model, edited)
    with (edited / "multiview.py").open("a") as f:
        f.write(f"\nopen({str(marker)!r}, 'w').write('edited code ran')\n")
    run = tmp / "sec-run"
    data = ["--reports", str(REPO / "data/iu/indiana_reports.csv"), "--projections",
            str(REPO / "data/iu/indiana_projections.csv"), "--images", str(EXAMPLES), "--split", "all",
            "--max-steps", "2", "--batch-size", "9", "--eval-every", "2", "--max-tokens", "8"]
    code, text = _run(["train", *data, "--out", str(run), "--tokenizer", "train", "--stop-after", "1"], env)
    assert code == 0, text
    plant(run / "last", marker)
    encoder, decoder = (str(p) for p in pretrained_parts(tmp / "parts"))
    plant(Path(encoder), marker)
    plant(Path(decoder), marker)
    cases: dict[str, list[str]] = {}
    for name, folder in (("planted code", planted), ("edited multiview.py", edited)):
        cases[f"{name}: model info"] = ["model", "info", str(folder)]
        cases[f"{name}: submit --model"] = ["submit", str(images), "--model", str(folder), "--max-new-tokens", "2"]
        cases[f"{name}: train --init"] = ["train", *data, "--out", str(tmp / f"init-{folder.name}"),
                                          "--init", str(folder)]
    cases["planted code: train --resume"] = ["train", "--out", str(run), "--resume"]
    cases["planted code: model init --encoder"] = ["model", "init", "--out", str(tmp / "e"), "--encoder", encoder]
    cases["planted code: model init --decoder"] = ["model", "init", "--out", str(tmp / "d"), "--decoder", decoder]
    results = {}
    for name, args in cases.items():
        code, text = _run(args, env)
        results[name] = _refused(code, text) and not marker.exists()
    return results


def message_cases(tmp: Path, model: Path) -> dict[str, bool]:
    """Forged messages to a real worker; empty when Redis does not answer (then nothing is claimed)."""
    import redis

    try:
        redis.Redis.from_url(REDIS, socket_connect_timeout=2).ping()
    except redis.RedisError:
        return {}
    from testing.services import WorkerProcess, wait_for
    from worker.app import app_for
    from worker.enqueue import EVALUATE_TASK, GENERATE_TASK
    from worker.settings import Settings

    env = {"XRQ_DATABASE_URL": f"sqlite:///{tmp}/messages.db", "XRQ_BROKER_URL": REDIS,
           "XRQ_BROKER_PREFIX": f"xrq-faults-{uuid.uuid4().hex[:8]}:", "XRQ_MODEL": str(model)}
    secret = tmp / "secret.csv"
    secret.write_text("uid,report\nroot:x:0:0,secret\n")
    forged = {
        "evaluate reads a file": (EVALUATE_TASK, [], {"predictions": str(secret), "split": "test"}),
        "evaluate writes a folder": (EVALUATE_TASK, [], {"baseline": "most-frequent", "out_dir": str(tmp / "w")}),
        "job id 1.5": (GENERATE_TASK, [1.5, [1]], {}),
        "job id true": (GENERATE_TASK, [True, [1]], {}),
        "200,000 made-up ids": (GENERATE_TASK, [1, list(range(1, 200_001))], {}),
        "an unknown key": (GENERATE_TASK, [1, [1]], {"max_new_tokens": 1}),
    }
    os.environ.update(env)
    worker = WorkerProcess(tmp / "messages-worker.log", env, "--queues", "gpu,cpu", "--hostname",
                           f"faults-{os.getpid()}@%h")
    try:
        worker.wait_ready(120)
        app = app_for(Settings.from_env())
        results = {}
        for name, (task, args, kwargs) in forged.items():
            before = worker.text().count("rejected message")
            start = time.monotonic()
            app.send_task(task, args=args, kwargs=kwargs)
            try:
                wait_for(lambda b=before: worker.text().count("rejected message") > b, timeout=60, what=name)
            except TimeoutError:  # taken and run, retried, or still running: not rejected
                results[name] = False
                continue
            lines = [line for line in worker.text().splitlines() if "rejected message" in line]
            results[name] = time.monotonic() - start < 30 and len(lines) == before + 1
        log = worker.text()
        clean = "Traceback" not in log and "root:x" not in log and not (tmp / "w").exists()
        return {name: held and clean for name, held in results.items()}
    finally:
        worker.stop()
        for key in env:
            os.environ.pop(key, None)


def csv_cases(tmp: Path, model: Path) -> dict[str, bool]:
    from testing.services import distinct_copies

    names = ["=HYPERLINK(1)\x1b[31m", "+1", "-2", "@SUM(3)", "\t=4", "\r=5"]
    folder = tmp / "csv-images"
    for path, name in zip(distinct_copies([EXAMPLES / "CXR25_IM-1024-2001.png"], folder, len(names)), names,
                          strict=True):
        path.rename(folder / f"{name}.png")
    env = {"XRQ_DATABASE_URL": f"sqlite:///{tmp}/csv.db"}
    code, text = _run(["submit", str(folder), "--model", str(model), "--group-by", "image", "--max-new-tokens", "2"],
                      env, stdin="")
    assert code == 0, text
    piped = subprocess.run([*XRQ, "reports", "--format", "csv"], capture_output=True, cwd=REPO, timeout=120,
                           env={**os.environ, **env}).stdout
    _run(["export", "1", "-o", str(tmp / "e.csv")], env, stdin="")
    exported = (tmp / "e.csv").read_bytes()
    expected = sorted(f"'{n}.png" for n in names)

    def uids(data: bytes) -> list[str]:
        # A row that a stray "\r" cut in two has no uid: str() so that it counts as wrong, not as a crash.
        return sorted(str(r.get("uid")) for r in csv.DictReader(io.StringIO(data.decode(), newline="")))

    return {"reports csv to a pipe: neutralised": uids(piped) == expected,
            "reports csv to a pipe: byte for byte": b"\x1b[31m" in piped,
            "export csv: neutralised": uids(exported) == expected,
            "export csv: byte for byte": b"\x1b[31m" in exported}


def security(tmp: Path, model: Path) -> dict[str, Any]:
    cases = {**model_cases(tmp, model), **message_cases(tmp, model), **csv_cases(tmp, model)}
    return {"kinds": len(cases), "mishandled": sum(not held for held in cases.values()),
            "failed": sorted(name for name, held in cases.items() if not held), "cases": cases}


if __name__ == "__main__":
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="xrq-faults-security-"))
    try:
        code, text = _run(["model", "init", "--out", str(work / "model")], {}, stdin="")
        assert code == 0, text
        print(json.dumps(security(work, work / "model"), indent=2, ensure_ascii=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
