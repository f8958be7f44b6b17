"""Real DICOM peers for the interop tests: DCMTK's tools, dicom3tools' dciodvfy, and Orthanc.

A tool that is missing skips the test on a developer's machine and FAILS it under CI=true
(`.ci/run` installs them). Everything listens on 127.0.0.1, on free ports, and is stopped by the test.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from tests.conftest import service_missing


def tool(name: str) -> str:
    """The path of a command-line tool, or skip (fail in CI) saying how to install it."""
    found = shutil.which(name)
    if found is None:
        service_missing(name, FileNotFoundError(
            f"{name} not on PATH (apt-get install orthanc orthanc-dicomweb dcmtk dicom3tools)"))
    assert found is not None
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's error lines for a file (warnings are left out: the sources' own attributes give some)."""
    out = subprocess.run([tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    lines = (out.stdout + out.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]
