"""Running an `xrq` command as a child process and measuring it: time to its first line, its wall time,
its peak memory (the child's own maximum resident set size, from wait4), and how fast it ends when the
reader goes away (`| head`). Used by bench/scale.py and the scale tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
XRQ = [sys.executable, "-c", "from cli.main import main; main()"]  # the CLI of this tree, as `xrq`


@dataclass(frozen=True)
class Measured:
    args: list[str]
    exit_code: int
    first_line_s: float | None  # None: it printed nothing on standard output
    wall_s: float
    peak_rss_mb: float
    stderr: str
    lines: int  # lines read from standard output (at most `lines` when it was cut short)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stderr"] = self.stderr[-500:]
        return data


def xrq_env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XRQ_")}
    env.update(XRQ_DATABASE_URL=database_url, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return env


def run_xrq(args: list[str], database_url: str, *, lines: int | None = None, timeout: float = 3600) -> Measured:
    """Run `xrq ARGS`; read its standard output line by line, all of it, or with `lines` only that many
    and then close the pipe (what `| head -n LINES` does). Its peak RSS comes from wait4."""
    started = time.perf_counter()
    proc = subprocess.Popen([*XRQ, *args], cwd=REPO, env=xrq_env(database_url), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first: float | None = None
    read = 0
    for _ in proc.stdout:
        if first is None:
            first = time.perf_counter() - started
        read += 1
        if lines is not None and read >= lines:
            break
    proc.stdout.close()  # the reader goes away: the child's next write fails with EPIPE
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"xrq {' '.join(args)} still running after {timeout} s")
        time.sleep(0.01)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    return Measured(args, proc.returncode, first, wall, usage.ru_maxrss / 1024, err, read)
