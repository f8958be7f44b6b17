"""Real services and real worker processes for the distributed tests (and `python -m bench.load`).

- `PrivateRedis`, `PrivatePostgres`: servers of our own on free ports, to stop and restart at will
  without disturbing the machine's shared Redis and PostgreSQL (other tests run against those).
- `WorkerProcess`: `xrq worker` as a subprocess in its own process group, with its log in a file.
- `wait_for`: poll a condition with a deadline (never a bare sleep as a wait).
- `distinct_copies`: real X-rays made distinct by one changed pixel, so each is a new study.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_for(condition: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class PrivateRedis:
    """A redis-server of our own on a free port; `stop()` and `start()` again on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateRedis:
        exe = shutil.which("redis-server")
        if exe is None:
            raise FileNotFoundError("redis-server is not installed")
        self._proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no"], stdout=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.port), timeout=60, what=f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
        self._proc = None


class PrivatePostgres:
    """A PostgreSQL cluster of our own (initdb, trust auth) on a free port, run as the postgres user."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="xrq-pg-"))
        self.data = self.dir / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._bin = self._find_bin()

    @staticmethod
    def _find_bin() -> Path:
        found = shutil.which("pg_ctl")
        if found:
            return Path(found).parent
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not versions:
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        return versions[-1].parent

    def _run(self, *args: str) -> None:
        cmd = [str(self._bin / args[0]), *args[1:]]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)

    def init(self) -> PrivatePostgres:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        return self

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        """A fast shutdown: open connections are cut, as when a server restarts under load."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class WorkerProcess:
    """`xrq worker` in a subprocess (its own process group), logging to `log`."""

    def __init__(self, log: Path, env: dict[str, str], *args: str) -> None:
        self.log = log
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **env}
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from cli.main import main; main()", "worker", "--loglevel", "info", *args],
            cwd=REPO, env=full_env, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            return " ready." in self.text()

        wait_for(ready, timeout=timeout, what=f"the worker to be ready (log {self.log})")

    def pool_children(self) -> list[int]:
        """Pids of the pool processes (prefork children of the main process)."""
        try:
            raw = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except FileNotFoundError:
            return []
        return [int(p) for p in raw.split()]

    def kill_all(self) -> None:
        """SIGKILL the worker and its pool processes at once: a machine gone."""
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM (warm shutdown), then SIGKILL whatever is left of the process group."""
        if self.proc.poll() is None:
            self.proc.terminate()
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(10)
        self._out.close()


@contextmanager
def workers(log_dir: Path, env: dict[str, str], count: int = 1, *args: str,
            ready: bool = True) -> Iterator[list[WorkerProcess]]:
    """Start `count` workers (in parallel), wait until they are ready, and always stop them."""
    started = [WorkerProcess(log_dir / f"worker{i}.log", env, "--hostname", f"w{i}-{os.getpid()}@%h", *args)
               for i in range(count)]
    try:
        if ready:
            for w in started:
                w.wait_ready()
        yield started
    finally:
        for w in started:
            w.stop()


def distinct_copies(sources: list[Path], out: Path, count: int, *, start: int = 0) -> list[Path]:
    """`count` PNG files, copies of `sources` in turn, each with one pixel changed so that every one
    has its own content (its own sha256, so its own study). Named one study per file."""
    import numpy as np
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    bases = [np.asarray(Image.open(p).convert("L")) for p in sources]
    paths = []
    for i in range(start, start + count):
        pixels = bases[i % len(bases)].copy()
        flat = pixels.reshape(-1)  # a view: copy k of a base changes its pixel k, and only that one
        k = (i // len(bases)) % flat.size
        flat[k] = (int(flat[k]) + 1) % 256
        path = out / f"copy{i:05d}.png"
        Image.fromarray(pixels).save(path, compress_level=1)
        paths.append(path)
    return paths
