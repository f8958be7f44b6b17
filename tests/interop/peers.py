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

from testing.services import free_port, wait_for
from tests.conftest import REPO, service_missing

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
             timeout: float = 60, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """DCMTK's storescu sending `files` in one association; `propose`: its transfer syntax option (-xy:
    JPEG baseline, what tests/interop/studies.py writes, and the uncompressed ones); `extra`: more options."""
    return subprocess.run([tool("storescu"), "-v", "--no-halt", propose, "-R", *extra, "-aet", aet, "-aec", called,
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


ORTHANC_CONFIG = Path(__file__).resolve().parent / "orthanc" / "orthanc.json.template"


class Orthanc:
    """Debian's Orthanc (with its DICOMweb plugin) as the hospital's PACS, on free ports of 127.0.0.1.

    `xrq_port`: where it sends studies to (its modality `xrq`, AE title XRQ). Its REST API is used to
    load images into it, to route a study to xrq (C-STORE) and to read back what it holds.
    """

    def __init__(self, folder: Path, *, xrq_port: int, xrq_aet: str = "XRQ") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.dicom_port, self.http_port = free_port(), free_port()
        text = ORTHANC_CONFIG.read_text()
        for key, value in {"storage": str(folder / "storage"), "dicom_port": self.dicom_port,
                           "http_port": self.http_port, "xrq_port": xrq_port, "xrq_aet": xrq_aet}.items():
            text = text.replace("{" + key + "}", str(value))
        self.config = folder / "orthanc.json"
        self.config.write_text(text)
        self.log = folder / "orthanc.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def destination(self) -> str:
        return f"dicom://ORTHANC@127.0.0.1:{self.dicom_port}"

    def start(self) -> Orthanc:
        out = self.log.open("ab")
        self.proc = subprocess.Popen([tool("Orthanc"), str(self.config)], stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        out.close()

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {self.log.read_text(errors='replace')[-3000:]}")
            try:
                return self.get("/system") is not None
            except OSError:
                return False

        wait_for(up, timeout=60, what="Orthanc to start")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def request(self, method: str, path: str, body: bytes | None = None) -> object:
        import json
        import urllib.request

        req = urllib.request.Request(self.url + path, data=body, method=method)
        with urllib.request.urlopen(req, timeout=60) as response:
            data = response.read()
        return json.loads(data) if data[:1] in (b"{", b"[") else data

    def get(self, path: str) -> object:
        return self.request("GET", path)

    def upload(self, path: Path) -> str:
        """Store a file in Orthanc (its REST API); the Orthanc id of the instance."""
        answer = self.request("POST", "/instances", path.read_bytes())
        assert isinstance(answer, dict)
        return str(answer["ID"])

    def study_id(self, study_uid: str) -> str | None:
        found = self.request("POST", "/tools/lookup", study_uid.encode())
        assert isinstance(found, list)
        ids = [f["ID"] for f in found if f["Type"] == "Study"]
        return ids[0] if ids else None

    def send_to_xrq(self, orthanc_ids: list[str]) -> None:
        """Orthanc C-STOREs these resources (instances, series or studies) to its modality `xrq`."""
        import json

        answer = self.request("POST", "/modalities/xrq/store", json.dumps(orthanc_ids).encode())
        assert isinstance(answer, dict) and answer.get("FailedInstancesCount", 0) == 0, answer

    def instances_of(self, study_uid: str) -> list[dict[str, object]]:
        """The instances Orthanc holds of a study, with their main tags."""
        study = self.study_id(study_uid)
        if study is None:
            return []
        found = self.get(f"/studies/{study}/instances?expand")
        assert isinstance(found, list)
        return found

    def file(self, orthanc_id: str) -> bytes:
        data = self.request("GET", f"/instances/{orthanc_id}/file")
        assert isinstance(data, bytes)
        return data
