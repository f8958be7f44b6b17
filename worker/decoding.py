"""Decode workers: read, check, decode and preprocess images beside the model, as threads or processes.

Measured on 2 cores (bench/decode.py): an image holds the GIL for about 17% of its decode and
preprocess time (Pillow, zlib and pydicom release it for the rest), so two threads gave 1.69x one
thread and two processes 1.95x. At 16 cores Amdahl caps threads near 1 / (0.17 + 0.83/16) = 4.5x, while
processes keep scaling, so several decode workers are processes; a single one is a thread (a process
would add a copy of every tensor and nothing else). Processes start with `forkserver` (never a fork of a
process that may hold CUDA) and are kept for the life of the process that made them: starting one
imports torch, which costs seconds.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from db import jobs
from model.errors import ImageError
from model.imaging.files import DEFAULT_MAX_FILE_BYTES

if TYPE_CHECKING:
    import torch

    from model.imaging.view_cache import ViewCache

log = logging.getLogger(__name__)

Loaded = tuple[tuple[int, int] | None, "torch.Tensor"] | ImageError  # ((width, height), (3, H, W)) or why not


@dataclass(frozen=True)
class Limits:
    """The per-process knobs of decoding (from Settings)."""

    max_pixels: int
    decode_workers: int
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES  # XRQ_MAX_FILE_BYTES: larger files are refused unread
    max_attempts: int | None = None
    cache: ViewCache | None = None
    processes: bool = False  # decode workers are processes (see the module's note)


def load_view(ref: jobs.ImageRef, root: str, processor: object, limits: Limits) -> Loaded:
    """One image as model input, with its (width, height); or why it can't be used.

    Read inside the submitted folder and only with the submitted content. With a view cache, an image
    whose content was preprocessed the same way before is not read or decoded again.
    """
    from model.imaging.files import text_to_name
    from model.imaging.images import decode_bytes, read_submitted
    from model.imaging.preprocess import view_tensor

    cache, key = limits.cache, None
    if cache is not None and ref.sha256:
        key = cache.key(ref.sha256, processor)  # type: ignore[arg-type]
        hit = cache.lookup(key)
        if hit is not None:
            return hit.image_size, hit.tensor
    try:
        data = read_submitted(text_to_name(ref.path), root=text_to_name(root), sha256=ref.sha256,
                              max_file_bytes=limits.max_file_bytes)
        image = decode_bytes(data, max_pixels=limits.max_pixels, name=os.path.basename(ref.path),
                             max_file_bytes=limits.max_file_bytes)
    except ImageError as exc:
        return exc
    tensor = view_tensor(processor, image)  # type: ignore[arg-type]
    if cache is not None and key is not None:
        try:
            cache.put(key, tensor, image_size=image.size)
        except OSError as exc:  # a full or read-only cache disk slows the work down, it never stops it
            log.warning("view cache: could not store a view (%s)", exc)
    return image.size, tensor


class DecodePool:
    """`map` images to `load_view` results on this process's decode workers."""

    def __init__(self, processor: object, limits: Limits) -> None:
        self.processor, self.limits = processor, limits
        self.concurrency = limits.decode_workers  # images in flight: the balance lowers it (worker/resources.py)
        self.cpu_s = 0.0  # CPU seconds the decoded images took, summed: what the balance measures
        self._lock = threading.Lock()
        self._executor: Executor
        self.kind = "processes" if limits.processes and limits.decode_workers > 1 else "threads"
        if self.kind == "processes" and multiprocessing.current_process().daemon:
            # A prefork pool process of `xrq worker` is daemonic and may not start children: its
            # decoders are threads. (`xrq worker --pool threads` runs tasks in the main process.)
            log.info("decode workers as threads: this is a daemonic pool process")
            self.kind = "threads"
        if self.kind == "processes":
            cache = limits.cache
            try:
                self._executor = ProcessPoolExecutor(
                    limits.decode_workers, mp_context=multiprocessing.get_context("forkserver"),
                    initializer=_init_process,
                    initargs=(processor, replace(limits, cache=None),
                              (str(cache.root), cache.max_bytes) if cache is not None else None))
                atexit.register(self.close)  # before the interpreter tears its modules down
            except (OSError, RuntimeError) as exc:
                log.warning("decode workers as threads: cannot start processes here (%s)", exc)
                self.kind = "threads"
        if self.kind == "threads":
            self._executor = ThreadPoolExecutor(limits.decode_workers, thread_name_prefix="xrq-decode")

    def map(self, refs: Iterable[tuple[jobs.ImageRef, str]]) -> Iterator[Loaded]:
        """The results in the order of `refs`, with at most `concurrency` images in flight; the CPU
        seconds they took (in whichever thread or process decoded them) add to `cpu_s`."""
        window: deque[Future[tuple[Loaded, float]]] = deque()
        for ref in refs:
            if len(window) >= max(1, self.concurrency):
                yield self._done(window.popleft())
            window.append(self._submit(ref))
        while window:
            yield self._done(window.popleft())

    def _submit(self, ref: tuple[jobs.ImageRef, str]) -> Future[tuple[Loaded, float]]:
        if self.kind == "processes":
            return self._executor.submit(_load_in_process, ref)
        return self._executor.submit(_timed_load, ref, self.processor, self.limits)

    def _done(self, future: Future[tuple[Loaded, float]]) -> Loaded:
        loaded, cpu_s = future.result()
        with self._lock:
            self.cpu_s += cpu_s
        return loaded

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


_state: dict[str, Any] = {}


def _init_process(processor: object, limits: Limits, cache: tuple[str, int] | None) -> None:
    """A decode process: one torch thread (the process is the parallelism), its own view of the cache."""
    import torch

    torch.set_num_threads(1)
    if cache is not None:
        from model.imaging.view_cache import ViewCache

        limits = replace(limits, cache=ViewCache(*cache))
    _state.update(processor=processor, limits=limits)


def _timed_load(item: tuple[jobs.ImageRef, str], processor: object, limits: Limits) -> tuple[Loaded, float]:
    """`load_view` and the CPU seconds it took in this thread."""
    start = time.thread_time()
    loaded = load_view(item[0], item[1], processor, limits)
    return loaded, time.thread_time() - start


def _load_in_process(item: tuple[jobs.ImageRef, str]) -> tuple[Loaded, float]:
    return _timed_load(item, _state["processor"], _state["limits"])
