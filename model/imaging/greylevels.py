"""Deep pixels (more than 8 bits, or colour) to 8-bit grey, in a few bytes a pixel.

`model.imaging.images` decodes a file; this module turns what a decoder gave into grey levels 0..255. Why the
care: a 7000×7000 16-bit picture is 98 MB, and the obvious numpy (a float64 copy, `np.percentile` on
another, float temporaries for the window) takes about 25 bytes a pixel, 1.2 GB, per decode thread.

An integer picture (16-bit PNG, almost every DICOM) is windowed through a table of its grey levels
(`_Levels`): whatever is computed per pixel from its value alone (a DICOM modality or VOI LUT, the
window) is computed once per level instead, the percentiles come from the levels' counts, and each
pixel is looked up once, a block of rows at a time. A float picture, or an int32 one spanning more
than _MAX_LEVELS levels, takes one copy for the percentiles and is windowed a block of rows at a time.
Either way the output is bit-identical to computing every pixel in float64 with `np.percentile`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

PERCENTILES = (0.5, 99.5)
"""The automatic window: between these percentiles of the picture's values."""

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_BLOCK_PIXELS = 1 << 18  # pixels converted at a time: temporaries stay ~2 MB whatever the picture
_MAX_LEVELS = 1 << 20  # an integer picture spanning more grey levels is windowed like a float one

Transform = Callable[[np.ndarray], np.ndarray]
"""A per-pixel map from values to values (a DICOM LUT): the output at each pixel depends only on that
pixel's value, so it may be applied to a table of levels instead of the picture."""


def auto_window(arr: np.ndarray, modality: Transform | None = None) -> np.ndarray:
    """Grey levels 0..255, mapped linearly between the PERCENTILES of `modality(arr)` (of `arr` when
    None), or between its min and max if those coincide; NaN and infinities count as 0."""
    levels = _Levels.of(arr)
    if levels is not None:
        order = levels.values if modality is None else modality(levels.values)
        order = np.nan_to_num(np.asarray(order, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        nth = levels.nth(order)
        lo, hi = _percentiles(nth, arr.size)
        if hi <= lo:
            lo, hi = nth(0), nth(arr.size - 1)
        return levels.look_up(arr, window(order, lo, hi))
    values = arr if modality is None else modality(arr)
    lo, hi = _dense_bounds(values)
    out = np.empty(values.shape, np.uint8)
    for rows in _blocks(values.shape):
        block = np.nan_to_num(np.asarray(values[rows], dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        out[rows] = window(block, lo, hi)
    return out


def _dense_bounds(values: np.ndarray) -> tuple[float, float]:
    """auto_window's (lo, hi) for a picture without a table of levels, from one partitioned copy."""
    flat = np.array(values, dtype=values.dtype.newbyteorder("=")).ravel()  # (pixels,)
    np.nan_to_num(flat, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    n = flat.size
    flat.partition(sorted({0, n - 1, *_percentile_ranks(n)}))
    lo, hi = _percentiles(lambda k: float(flat[k]), n)
    return (lo, hi) if hi > lo else (float(flat[0]), float(flat[n - 1]))


def stretch(arr: np.ndarray, transform: Transform) -> np.ndarray | None:
    """`transform(arr)` (a DICOM VOI window, say) stretched min-max to 0..255; None when that is constant.
    Whatever `transform` raises propagates."""
    levels = _Levels.of(arr)
    shown = np.asarray(transform(arr if levels is None else levels.values), dtype=np.float64)
    held = shown if levels is None else shown[levels.counts > 0]
    lo, hi = float(held.min()), float(held.max())
    if hi <= lo:
        return None
    return window(shown, lo, hi) if levels is None else levels.look_up(arr, window(shown, lo, hi))


def luma(arr: np.ndarray) -> np.ndarray:
    """(rows, cols) float32 luma (ITU-R 601) of a (rows, cols, samples) colour picture, alpha ignored;
    rounded to uint8 when the picture is 8-bit. Computed a block of rows at a time."""
    out = np.empty(arr.shape[:2], np.float32)
    for rows in _blocks(arr.shape):
        out[rows] = arr[rows, :, :3].astype(np.float32) @ _LUMA
    if arr.dtype == np.uint8:
        return np.clip(np.add(out, 0.5, out=out), 0, 255, out=out).astype(np.uint8)
    return out


def window(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map of [lo, hi] to 0..255, clipped; a constant picture becomes black."""
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    scaled = (np.asarray(values, dtype=np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def _blocks(shape: tuple[int, ...]) -> Iterator[slice]:
    """Slices of about _BLOCK_PIXELS pixels along the first axis (rows) of an array of `shape`."""
    step = max(1, _BLOCK_PIXELS // max(1, math.prod(shape[1:])))
    return (slice(start, start + step) for start in range(0, shape[0], step))


class _Levels:
    """The grey levels of an integer picture: level `base + i` is held by counts[i] pixels."""

    def __init__(self, base: int, counts: np.ndarray, dtype: np.dtype[Any]) -> None:
        self.base, self.counts = base, counts  # counts: (levels,) int64
        self.values = np.arange(base, base + len(counts), dtype=dtype.newbyteorder("="))  # (levels,)

    @classmethod
    def of(cls, arr: np.ndarray) -> _Levels | None:
        """The levels of `arr`, counted a block of rows at a time; None for a float picture or one
        spanning more than _MAX_LEVELS levels."""
        if arr.dtype.kind not in "iu" or arr.size == 0:
            return None
        if arr.dtype.itemsize <= 2:  # every level of the type: no pass over the pixels for min and max
            base, top = int(np.iinfo(arr.dtype).min), int(np.iinfo(arr.dtype).max)
        else:
            base, top = int(arr.min()), int(arr.max())
            if top - base >= _MAX_LEVELS:
                return None
        counts = np.zeros(top - base + 1, np.int64)
        for rows in _blocks(arr.shape):
            counts += np.bincount(_offsets(arr[rows], base), minlength=len(counts))
        return cls(base, counts, arr.dtype)

    def look_up(self, arr: np.ndarray, table: np.ndarray) -> np.ndarray:
        """table[level] for every pixel of `arr`, a block of rows at a time (an index array of the
        whole picture would cost 8 bytes a pixel)."""
        out = np.empty(arr.shape, table.dtype)
        for rows in _blocks(arr.shape):
            out[rows] = table[_offsets(arr[rows], self.base)].reshape(out[rows].shape)
        return out

    def nth(self, order: np.ndarray) -> Callable[[int], float]:
        """k -> the k-th smallest (0-based) of the picture's pixels mapped through `order`, a value per level."""
        held = self.counts > 0
        by_value = np.argsort(order[held], kind="stable")
        values, ends = order[held][by_value], np.cumsum(self.counts[held][by_value])
        return lambda k: float(values[np.searchsorted(ends, k, side="right")])


def _offsets(block: np.ndarray, base: int) -> np.ndarray:
    """A block's pixels as (pixels,) indices into a table of levels starting at `base`."""
    index = block.astype(np.intp).ravel()
    index -= base
    return index


def _virtual_indexes(n: int) -> list[float]:
    """Where numpy's 'linear' percentile method looks in n sorted values, for each of PERCENTILES."""
    return [float(v) for v in (n - 1) * np.true_divide(PERCENTILES, 100)]


def _percentile_ranks(n: int) -> list[int]:
    """The ranks (0-based) of the sorted values that `_percentiles` reads for n values."""
    ranks = []
    for v in _virtual_indexes(n):
        previous = min(math.floor(v), n - 1)
        ranks += [previous, min(previous + 1, n - 1)]
    return ranks


def _percentiles(nth: Callable[[int], float], n: int) -> tuple[float, float]:
    """np.percentile(values, PERCENTILES) of n values from `nth(k)`, the k-th smallest (0-based):
    numpy's 'linear' method, operation for operation, so the result is the same to the bit."""
    found = []
    for v in _virtual_indexes(n):
        if v >= n - 1:  # numpy takes the last value; its weight is then v - (-1)
            previous, a, b = -1, nth(n - 1), nth(n - 1)
        else:
            previous = math.floor(v)
            a, b = nth(previous), nth(previous + 1)
        gamma, diff = v - previous, b - a
        found.append(b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma)  # numpy's _lerp
    return found[0], found[1]
