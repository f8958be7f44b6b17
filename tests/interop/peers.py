"""Real DICOM peers for the interop tests: DCMTK's tools, dicom3tools' dciodvfy, and Orthanc.

A tool that is missing skips the test on a developer's machine and FAILS it under CI=true
(`.ci/run` installs them). Everything listens on 127.0.0.1, on free ports, and is stopped by the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

from tests.conftest import REPO, service_missing
from tests.services import free_port, wait_for

__all__ = ["free_port", "wait_for"]


def tool(name: str) -> str:
    """The path of a command-line tool, or skip (fail in CI) saying how to install it."""
    found = shutil.which(name)
    if found is None:
        service_missing(name, FileNotFoundError(
            f"{name} not on PATH (apt-get install orthanc orthanc-dicomweb dcmtk dicom3tools)"))
    assert found is not None
    return found


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's error lines for a file (warnings are left out: the sources' own attributes give some)."""
    out = subprocess.run([tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    lines = (out.stdout + out.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def storescu(port: int, *files: Path, aet: str = "MODALITY", called: str = "XRQ", propose: str = "-xy",
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """DCMTK's storescu sending `files` in one association; `propose`: its transfer syntax option (-xy:
    JPEG baseline, what tests/interop/studies.py writes, and the uncompressed ones)."""
    return subprocess.run([tool("storescu"), "-v", "--no-halt", propose, "-R", "-aet", aet, "-aec", called,
                           "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=timeout)


def echoscu(port: int, *, aet: str = "MODALITY", called: str = "XRQ") -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("echoscu"), "-aet", aet, "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=30)


class ListenerProcess:
    """`xrq listen` in a subprocess (its own process group), logging to `log`."""

    def __init__(self, log: Path, env: dict[str, str], *args: str) -> None:
        self.log = log
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **env}
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from cli.main import main; main()", "listen", *args],
            cwd=REPO, env=full_env, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"xrq listen exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            return "Listening as" in self.text()

        wait_for(ready, timeout=timeout, what=f"xrq listen to be ready (log {self.log})")

    def kill9(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._out.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._out.close()
