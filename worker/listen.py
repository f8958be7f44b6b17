"""`xrq listen` without the CLI: receive studies over DICOM and report each once it is complete.

The Storage SCP (interop/scp.py) writes each instance to the inbox before acknowledging it and tells
the `StudyClock`. A study is complete once no instance of it has come for `study_timeout` seconds
(instances of one study may come over several associations); it is then handed over (moved into
studies/STUDY) and submitted by one submitting thread through `submit_folder`, the path of
`xrq submit` (the broker when configured, in-process otherwise), so reception never waits for it.

After a crash (even kill -9): what was acknowledged is in incoming/ and is submitted once quiet; a
study moved but not recorded (`.pending`) is submitted again at start (the same content is the same
job, so twice is harmless). A study that gets another image after its report is submitted again,
whole: a new report over every image, and a new SR in the same SR series (docs/conformance.md).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from interop.inbox import Inbox
from interop.scp import Counters, ScpConfig, StorageSCP, parse_allow
from worker.settings import Settings

log = logging.getLogger(__name__)


class StudyClock:
    """When each study's last instance arrived (monotonic seconds), for studies not yet handed over."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def touch(self, study_uid: str, at: float | None = None) -> None:
        with self._lock:
            self._last[study_uid] = time.monotonic() if at is None else at

    def quiet(self, timeout: float) -> list[str]:
        """Studies quiet for `timeout` seconds, removed from the clock (oldest first)."""
        now = time.monotonic()
        with self._lock:
            done = sorted((t, uid) for uid, t in self._last.items() if now - t >= timeout)
            for _, uid in done:
                del self._last[uid]
        return [uid for _, uid in done]

    def waiting(self) -> int:
        with self._lock:
            return len(self._last)


@dataclass
class ListenStats:
    submitted: list[tuple[str, int]] = field(default_factory=list)  # (study uid, job id)
    errors: list[str] = field(default_factory=list)


def scp_config(settings: Settings, allow: tuple[str, ...] = ()) -> ScpConfig:
    values = [*allow] or ([settings.listen_allow] if settings.listen_allow else [])
    return ScpConfig(aet=settings.listen_aet, bind=settings.listen_bind, port=settings.listen_port,
                     allow=parse_allow(values), allow_any=settings.allow_any,
                     max_associations=settings.max_associations, max_instance_bytes=settings.max_file_bytes,
                     min_free_bytes=settings.min_free_bytes)


class Listener:
    """The SCP, the study clock and the submitting thread, started and stopped together."""

    def __init__(self, settings: Settings, config: ScpConfig, *,
                 submit: Callable[[Path], int] | None = None, tick: float = 0.2) -> None:
        self.settings, self.config, self.tick = settings, config, tick
        self.inbox = Inbox(Path(settings.listen_inbox)).open()
        self.clock = StudyClock()
        self.scp = StorageSCP(config, self.inbox, self.clock.touch)
        self.stats = ListenStats()
        self._submit = submit or self._submit_folder
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._failures: dict[str, int] = {}  # study uid -> failed submissions in a row

    @property
    def counters(self) -> Counters:
        return self.scp.counters

    def start(self) -> None:
        for uid in self.inbox.pending():  # moved but never recorded: a crash in between
            self._queue.put(uid)
        now, wall = time.monotonic(), time.time()
        for uid, mtime in self.inbox.waiting().items():  # acknowledged before a restart
            self.clock.touch(uid, now - max(0.0, wall - mtime))
        self.scp.start()
        for target in (self._watch, self._submitter):
            thread = threading.Thread(target=target, name=f"xrq-listen-{target.__name__.strip('_')}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self.scp.stop()
        self._stop.set()
        self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=600)
        self.inbox.close()

    def run_forever(self) -> None:
        self.start()
        try:
            while not self._stop.wait(3600):
                pass
        finally:
            self.stop()

    def _watch(self) -> None:
        while not self._stop.wait(self.tick):
            for uid in self.clock.quiet(self.settings.study_timeout):
                self._queue.put(uid)

    def _submitter(self) -> None:
        while True:
            uid = self._queue.get()
            if uid is None:
                self._queue.task_done()
                return
            self._submit_one(uid)

    def _submit_one(self, uid: str) -> None:
        try:
            folder = self.inbox.hand_over(uid)
            job_id = self._submit(folder)
            self.inbox.submitted(uid)
            self._failures.pop(uid, None)
            self.stats.submitted.append((uid, job_id))
            log.info("study %s submitted as job %d", uid, job_id)
        except Exception as exc:  # the study stays pending: tried again later, and at every start
            self.stats.errors.append(f"{uid}: {exc}")
            tries = self._failures[uid] = self._failures.get(uid, 0) + 1
            delay = min(self.settings.study_timeout * 2 ** tries, 3600)
            log.error("study %s could not be submitted (try %d, again in %d s): %s", uid, tries, delay, exc)
            self.clock.touch(uid, time.monotonic() + delay - self.settings.study_timeout)
        finally:
            self._queue.task_done()

    def _submit_folder(self, folder: Path) -> int:
        from worker.dispatch import runner_for
        from worker.submit import submit_folder

        return submit_folder(self.settings, folder, runner=runner_for(self.settings)).job_id

