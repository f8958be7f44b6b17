"""An optional on-disk cache of preprocessed views, so a picture is decoded and resized once.

Evaluation runs, a second model with the same preprocessing and retries of a failed batch all see the
same files again; decoding a 2048-px PNG and resizing it costs tens of milliseconds, reading a 50 KB
entry well under one. Entries are keyed by the file's content (sha256, as scanning records it) and by
`preprocess.settings_fingerprint` (the processor's settings and the library versions that run them),
so a model with other preprocessing never gets these pixels.

Storage is compact and exact: a view is at most 256 grey levels mapped through one per-channel table
(see `model.imaging.preprocess`), so it is kept as a (H, W) uint8 index plus that (C, K) palette (about 50 KB
at 224 px instead of 600 KB of floats), and rebuilt bit for bit; a tensor that is not of that form
is kept whole. Files are safetensors, never pickle, with a digest of their contents.

Several worker processes may share one folder: every entry is written to a temporary file and renamed
into place, so a reader sees a whole entry or none; an entry that fails to read or to match its digest
is a miss and is removed. The total stays near `max_bytes`: each process evicts the least recently
used entries (file mtime, touched on every hit) down to 90% whenever its own count of the folder passes
the limit, and recounts the folder after writing a sixteenth of the limit, so other processes' writes
can overshoot the limit by at most that much each.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from transformers import ViTImageProcessorPil

from model.errors import ModelError
from model.imaging.preprocess import settings_fingerprint

FORMAT = "1"  # bump when the layout of an entry changes: old entries then read as misses
_SUFFIX = ".safetensors"
_TMP_PREFIX = ".tmp-"
_STALE_TMP_S = 3600.0  # a temporary file this old belongs to a writer that died
_LOW_WATER = 0.9  # evict down to this fraction of max_bytes, so eviction is not run on every write
_RESCAN_FRACTION = 16  # recount the folder after writing max_bytes / this
_PALETTE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.uint8)  # numpy has these
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KEY = re.compile(r"[0-9a-f]{64}\.[0-9a-f]{24}")


class CachedView(NamedTuple):
    tensor: torch.Tensor  # exactly what `view_tensor` gave, e.g. (3, H, W) float32
    image_size: tuple[int, int] | None  # (width, height) of the decoded picture, when it was given


class ViewCache:
    """Preprocessed views on disk under `root`, at most about `max_bytes` in all."""

    def __init__(self, root: str | os.PathLike[str], max_bytes: int) -> None:
        if max_bytes < 1:
            raise ModelError(f"The view cache needs a positive size limit, got max_bytes={max_bytes}.")
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()  # guards the two counters below
        self._scanning = threading.Lock()
        self._estimate: int | None = None  # bytes in the folder at the last count, plus own writes since
        self._since_scan = 0

    @staticmethod
    def key(sha256: str, processor: ViTImageProcessorPil) -> str:
        """The entry name for a file's content under this processor's preprocessing."""
        digest = sha256.lower()
        if not _SHA256.fullmatch(digest):
            raise ModelError(f"A view cache key needs a file's sha256 (64 hex digits), got {sha256!r}.")
        return f"{digest}.{settings_fingerprint(processor)[:24]}"

    def get(self, key: str) -> torch.Tensor | None:
        """The cached view, exactly as it was put, or None on a miss (absent, unreadable or damaged)."""
        found = self.lookup(key)
        return None if found is None else found.tensor

    def lookup(self, key: str) -> CachedView | None:
        """`get`, with the decoded picture's (width, height) when `put` was given it."""
        path = self._path(key)
        try:
            data = path.read_bytes()
        except OSError:  # absent (or evicted meanwhile): a miss
            return None
        try:
            found = _decode(data, key)
        except Exception:  # truncated, corrupt, another format: a miss, and never read again
            _unlink(path)
            return None
        with contextlib.suppress(OSError):  # evicted meanwhile: the view is still good
            os.utime(path)  # most recently used now
        return found

    def put(self, key: str, tensor: torch.Tensor, *, image_size: tuple[int, int] | None = None) -> None:
        """Store a view (and optionally the decoded picture's (width, height)), replacing any entry."""
        path = self._path(key)
        data = _encode(tensor, key, image_size)
        if len(data) > self.max_bytes:
            return  # one entry larger than the whole cache: caching it would evict everything else
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)  # atomic: readers see the old entry or the new one, never half
        except BaseException:
            _unlink(Path(tmp))
            raise
        self._account(len(data))

    def size(self) -> int:
        """Bytes in the cache folder now (entries and unfinished writes), counted from the disk."""
        return sum(size for _, size, _ in self._entries())

    def _path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ModelError(f"Not a view cache key: {key!r} (make one with ViewCache.key).")
        return self.root / key[:2] / f"{key}{_SUFFIX}"

    def _account(self, written: int) -> None:
        with self._lock:
            if self._estimate is not None:
                self._estimate += written
            self._since_scan += written
            due = (self._estimate is None or self._estimate > self.max_bytes
                   or self._since_scan * _RESCAN_FRACTION >= self.max_bytes)
        if due and self._scanning.acquire(blocking=False):  # one thread counts; the others go on
            try:
                self._evict()
            finally:
                self._scanning.release()

    def _evict(self) -> None:
        """Count the folder; past the limit, delete least recently used entries down to the low water mark."""
        entries = sorted(self._entries())  # oldest first
        total = sum(size for _, size, _ in entries)
        if total > self.max_bytes:
            for _, size, path in entries:
                if total <= self.max_bytes * _LOW_WATER:
                    break
                if path.name.startswith(_TMP_PREFIX):
                    continue  # someone's write in progress
                _unlink(path)
                total -= size
        with self._lock:
            self._estimate, self._since_scan = total, 0

    def _entries(self) -> list[tuple[float, int, Path]]:
        """(mtime, bytes, path) of every file of the cache; stale temporary files are removed."""
        found: list[tuple[float, int, Path]] = []
        now = time.time()
        try:
            shards = [d for d in os.scandir(self.root) if len(d.name) == 2 and d.is_dir(follow_symlinks=False)]
        except OSError:
            return found
        for shard in shards:
            try:
                files = list(os.scandir(shard.path))
            except OSError:
                continue
            for entry in files:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                path = Path(entry.path)
                if entry.name.startswith(_TMP_PREFIX) and now - st.st_mtime > _STALE_TMP_S:
                    _unlink(path)
                elif entry.name.endswith(_SUFFIX) or entry.name.startswith(_TMP_PREFIX):
                    found.append((st.st_mtime, st.st_size, path))
        return found


def _encode(tensor: torch.Tensor, key: str, image_size: tuple[int, int] | None) -> bytes:
    """safetensors bytes of the view: index + palette when that rebuilds it bit for bit, else the tensor."""
    t = tensor.detach().cpu().contiguous()
    tensors = _as_palette(t) or {"tensor": t}
    meta = {"format": FORMAT, "key": key, "digest": _digest(tensors), "shape": json.dumps(list(t.shape))}
    if image_size is not None:
        meta["image_size"] = json.dumps([int(image_size[0]), int(image_size[1])])
    return save_tensors(tensors, metadata=meta)


def _as_palette(t: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """{"index": (H, W) uint8, "palette": (C, K)} with palette[:, index] == t bitwise, or None."""
    if t.ndim != 3 or not t.numel() or t.dtype not in _PALETTE_DTYPES:
        return None
    c, h, w = t.shape
    values = t.reshape(c, h * w).numpy()  # (C, N)
    bits = values.view(f"u{values.dtype.itemsize}")  # compare bit patterns: -0.0 is not 0.0, NaN is NaN
    levels, first, index = np.unique(bits[0], return_index=True, return_inverse=True)
    if len(levels) > 256:
        return None
    index = index.astype(np.uint8)  # (N,)
    palette = values[:, first]  # (C, K): each level's value in every channel, where it first occurs
    if not np.array_equal(palette.view(bits.dtype)[:, index], bits):
        return None  # another channel is not a function of the first one
    return {"index": torch.from_numpy(index.reshape(h, w)), "palette": torch.from_numpy(palette.copy())}


def _decode(data: bytes, key: str) -> CachedView:
    meta = _metadata(data)
    if meta.get("format") != FORMAT or meta.get("key") != key:
        raise ValueError("another format or another entry")
    tensors = load_tensors(data)
    if _digest(tensors) != meta.get("digest"):
        raise ValueError("contents do not match their digest")
    if "tensor" in tensors:
        tensor = tensors["tensor"]
    else:
        index, palette = tensors["index"], tensors["palette"]  # (H, W) uint8, (C, K)
        tensor = palette[:, index.long()]  # (C, H, W)
    if list(tensor.shape) != json.loads(meta["shape"]):
        raise ValueError("shape does not match")
    size = json.loads(meta["image_size"]) if "image_size" in meta else None
    return CachedView(tensor, (int(size[0]), int(size[1])) if size else None)


def _metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of safetensors bytes: an 8-byte little-endian header length, then JSON."""
    (length,) = struct.unpack_from("<Q", data)
    if not 0 < length <= len(data) - 8:
        raise ValueError("bad safetensors header")
    meta = json.loads(data[8 : 8 + length]).get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}:{t.dtype}:{list(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):  # already gone (another process evicted it), or not ours to remove
        path.unlink()
