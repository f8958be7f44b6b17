"""bench/faults.py, part 4: issue 19's reliability cases, each run as a user would (`xrq` in a subprocess).

    a full disk (a real one: a 600 KiB tmpfs, where the host lets us mount one), at several fill levels;
    file and folder names that are not UTF-8; 1,100 nested folders; bad XRQ_DATABASE_URL, XRQ_BROKER_URL
    and XRQ_BACKLOG_CRON in every command; `submit --wait` with no worker; notes.txt; `submit --strict`.

Each case says what it expects; `mishandled` counts the ones that did otherwise (a traceback, exit 0
for unfinished work, "queued for workers" without a broker, a password printed, a silent wait).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

Run = Callable[..., tuple[int, str, str, float]]
SECRET = "s3cr3t-pw"


def _case(code: int, out: str, err: str, ok: bool) -> dict[str, object]:
    text = out + err
    return {"exit_code": code, "traceback": "Traceback" in text, "ok": ok and "Traceback" not in text,
            "last_line": (text.strip().splitlines() or [""])[-1][:200]}


def disk_full(tmp: Path, model: Path, examples: Path, xrq: Run) -> dict[str, dict[str, object]]:
    """A SQLite database on a 600 KiB tmpfs, filled with a file leaving `room` KiB: every outcome is
    either all reported (exit 0) or an `Error:` with a non-zero exit, never a traceback or a false
    "queued for workers"."""
    mount = tmp / "full"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        return {"disk full": {"skipped": f"cannot mount a tmpfs here: {made.stderr.decode().strip()[:120]}"}}
    cases: dict[str, dict[str, object]] = {}
    try:
        for room in (0, 40, 80, 120, 160, 240):
            for name in os.listdir(mount):
                os.unlink(mount / name)
            env = {"XRQ_DATABASE_URL": f"sqlite:///{mount / 'x.db'}"}
            xrq(["status"], env)  # created and migrated while there is room
            free = shutil.disk_usage(mount).free // 1024
            with open(mount / "filler", "wb") as f:
                f.write(b"\0" * max(0, free - room) * 1024)
            code, out, err, _ = xrq(["submit", str(examples), "--model", str(model), "--max-new-tokens", "8"], env)
            finished = code == 0 and "unfinished" not in out and "waiting" not in out
            last = ((out + err).strip().splitlines() or [""])[-1]
            honest = code != 0 and last.startswith("Error: ") and "queued for workers" not in out + err
            cases[f"disk full, {room} KiB left"] = _case(code, out, err, finished or honest)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
    return cases


def odd_names(tmp: Path, model: Path, examples: Path, xrq: Run) -> dict[str, dict[str, object]]:
    cases = {}
    latin = tmp / os.fsdecode(b"caf\xe9")
    latin.mkdir()
    shutil.copy(examples / "CXR25_IM-1024-2001.png", latin / os.fsdecode(b"scan-\xff\xfe.png"))
    shutil.copy(examples / "CXR7_IM-2263-1001.png", latin / "back\\slash.png")
    (latin / "notes.txt").write_text("not a picture\n")
    env = {"XRQ_DATABASE_URL": f"sqlite:///{tmp / 'names.db'}"}
    code, out, err, _ = xrq(["submit", str(latin), "--model", str(model), "--max-new-tokens", "4", "--json"], env)
    ok = code == 0 and '"done": 2' in out and '"failed": 0' in out and '"ignored": ["notes.txt"]' in out
    cases["names that are not UTF-8 (and notes.txt)"] = _case(code, out, err, ok)

    deep = tmp / "deep"
    inner = str(deep)
    os.mkdir(inner)
    for _ in range(1100):
        inner += "/d"
        os.mkdir(inner)
    shutil.copy(examples / "CXR25_IM-1024-2001.png", inner + "/x.png")
    code, out, err, _ = xrq(["submit", str(deep), "--model", str(model), "--max-new-tokens", "4", "--json"],
                            {"XRQ_DATABASE_URL": f"sqlite:///{tmp / 'deep.db'}"})
    cases["1,100 nested folders"] = _case(code, out, err, code == 0 and '"done": 1' in out)
    remove_deep(deep)  # shutil.rmtree recurses (RecursionError at this depth on Python 3.11)

    broken = tmp / "strict"
    broken.mkdir()
    shutil.copy(examples / "CXR25_IM-1024-2001.png", broken)
    (broken / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    code, out, err, _ = xrq(["submit", str(broken), "--model", str(model), "--max-new-tokens", "4", "--strict"],
                            {"XRQ_DATABASE_URL": f"sqlite:///{tmp / 'strict.db'}"})
    cases["submit --strict with a failed study"] = _case(code, out, err, code == 1 and "Error: --strict" in err)
    return cases


def remove_deep(top: Path) -> None:
    """Remove a folder tree of any depth, deepest first, without recursion (shutil.rmtree and, before
    Python 3.12, os.walk recurse: a RecursionError at a depth of about 1,000)."""
    folders, stack = [], [str(top)]
    while stack:
        here = stack.pop()
        folders.append(here)
        with os.scandir(here) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    os.unlink(entry.path)
    for here in reversed(folders):
        os.rmdir(here)


def bad_settings(tmp: Path, model: Path, examples: Path, xrq: Run) -> dict[str, dict[str, object]]:
    values = [("XRQ_DATABASE_URL", f"postgresql://xrq:{SECRET}@localhost:99999/xrq"),
              ("XRQ_DATABASE_URL", f"mysql://xrq:{SECRET}@localhost/xrq"),
              ("XRQ_BROKER_URL", f"redis://:{SECRET}@localhost:99999/0"),
              ("XRQ_BROKER_URL", f"foo://:{SECRET}@localhost/0"),
              ("XRQ_BACKLOG_CRON", "99 99 99 99 99")]
    commands = [["status"], ["reports"], ["health"], ["backlog", "--dry-run"], ["beat"], ["worker"],
                ["submit", str(examples), "--model", str(model)], ["db", "upgrade"]]
    cases = {}
    for var, value in values:
        for args in commands:
            env = {"XRQ_DATABASE_URL": f"sqlite:///{tmp / 'settings.db'}", var: value}
            code, out, err, _ = xrq(args, env, timeout=120)
            ok = code != 0 and (out + err).startswith(f"Error: {var}") and SECRET not in out + err
            cases[f"{var}={value.replace(SECRET, '***')} xrq {args[0]}"] = _case(code, out, err, ok)
    return cases


def wait_without_worker(tmp: Path, model: Path, examples: Path, xrq: Run, redis_url: str) -> dict[str, object]:
    env = {"XRQ_DATABASE_URL": f"sqlite:///{tmp / 'wait.db'}", "XRQ_BROKER_URL": redis_url,
           "XRQ_BROKER_PREFIX": f"xrq-faults-{uuid.uuid4().hex[:8]}:"}
    code, out, err, _ = xrq(["submit", str(examples), "--model", str(model), "--wait", "--timeout", "8"], env,
                            timeout=300)
    ok = code == 1 and "no worker answers" in err and "still has" in err
    try:
        import redis

        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=f"{env['XRQ_BROKER_PREFIX']}*"):
            client.delete(key)
    except Exception:  # a bench cleaning up: the verdict is what matters
        pass
    return _case(code, out, err, ok)


def reliability(tmp: Path, model: Path, examples: Path, xrq: Run, redis_url: str | None) -> dict[str, object]:
    folder = tmp / "reliability"
    folder.mkdir()
    cases: dict[str, dict[str, object]] = {}
    cases.update(disk_full(folder, model, examples, xrq))
    cases.update(odd_names(folder, model, examples, xrq))
    cases.update(bad_settings(folder, model, examples, xrq))
    if redis_url:
        cases["submit --wait with no worker"] = wait_without_worker(folder, model, examples, xrq, redis_url)
    tried = {k: v for k, v in cases.items() if "skipped" not in v}
    return {"kinds": len(tried), "mishandled": sum(1 for v in tried.values() if not v["ok"]),
            "skipped": sorted(k for k in cases if k not in tried),
            "not_ok": sorted(k for k, v in tried.items() if not v["ok"]), "cases": cases}
