"""model.imaging.greylevels: the table-of-levels windowing gives, to the bit, what the float64 way gave."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest

from model.imaging.greylevels import PERCENTILES, auto_window, luma, stretch, window

RNG = np.random.default_rng(7)


def float64_auto_window(values: np.ndarray) -> np.ndarray:
    """The way decoding windowed before: a float64 copy, np.percentile over it, min-max fallback."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(v) for v in np.percentile(values, PERCENTILES))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    return window(values, lo, hi)


def with_nans(shape: tuple[int, int]) -> np.ndarray:
    values = RNG.normal(100, 30, shape).astype(np.float32)
    values[0, :5], values[1, :3], values[2, :2] = np.nan, np.inf, -np.inf
    return values


PICTURES: dict[str, Callable[[], np.ndarray]] = {
    "uint16": lambda: RNG.integers(0, 65536, (301, 257)).astype(np.uint16),
    "uint16_12bit_skewed": lambda: (RNG.gamma(2, 300, (517, 203)).clip(0, 4095)).astype(np.uint16),
    "uint16_big_endian": lambda: RNG.integers(0, 4096, (64, 80)).astype(">u2"),
    "int16": lambda: RNG.integers(-32768, 32768, (128, 99)).astype(np.int16),
    "uint8": lambda: RNG.integers(0, 256, (50, 60)).astype(np.uint8),
    "int32_narrow": lambda: RNG.integers(-70000, 70000, (90, 110)).astype(np.int32),
    "int32_wide": lambda: RNG.integers(-(2**31), 2**31 - 1, (90, 110)).astype(np.int32),
    "float32_nan": lambda: with_nans((77, 91)),
    "float64": lambda: RNG.normal(0, 1e6, (40, 50)),
    "constant": lambda: np.full((30, 40), 1234, np.uint16),
    "two_levels": lambda: (np.arange(1200).reshape(30, 40) % 2 * 1000).astype(np.uint16),
    "one_pixel": lambda: np.array([[513]], np.uint16),
    "one_row": lambda: RNG.integers(0, 4096, (1, 333)).astype(np.uint16),
    "tall": lambda: RNG.integers(0, 4096, (2000, 3)).astype(np.uint16),
}


@pytest.mark.parametrize("name", sorted(PICTURES))
def test_auto_window_is_the_float64_way_to_the_bit(name: str) -> None:
    pixels = PICTURES[name]()
    assert np.array_equal(auto_window(pixels), float64_auto_window(pixels))


MODALITY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "rescale": lambda v: v.astype(np.float64) * 0.5 - 1024,
    "negative_slope": lambda v: v.astype(np.float64) * -2.5 + 7,  # reverses the order of the levels
    "lut": lambda v: np.sqrt(np.clip(v.astype(np.float64), 0, None)).astype(np.uint16),  # many to one
}


@pytest.mark.parametrize("modality", sorted(MODALITY))
@pytest.mark.parametrize("name", ["uint16_12bit_skewed", "int16", "int32_narrow", "int32_wide"])
def test_modality_lut_through_levels_is_the_float64_way(name: str, modality: str) -> None:
    pixels, transform = PICTURES[name](), MODALITY[modality]
    assert np.array_equal(auto_window(pixels, transform), float64_auto_window(transform(pixels)))


@pytest.mark.parametrize("name", ["uint16_12bit_skewed", "int16", "float64", "constant"])
def test_stretch_is_min_max_of_the_transformed_picture(name: str) -> None:
    pixels = PICTURES[name]()

    def transform(v: np.ndarray) -> np.ndarray:
        return np.clip(v.astype(np.float64) * 3 - 500, 0, 4000)

    shown = transform(pixels)
    expected = None if shown.max() <= shown.min() else window(shown, float(shown.min()), float(shown.max()))
    found = stretch(pixels, transform)
    assert (found is None and expected is None) or np.array_equal(found, expected)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_luma_is_computed_as_one_block_would_be(dtype: type[np.generic]) -> None:
    rgb = RNG.integers(0, 256 if dtype is np.uint8 else 65536, (700, 600, 3)).astype(dtype)  # several blocks
    whole = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if dtype is np.uint8:
        whole = np.clip(whole + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(luma(rgb), whole)


def test_a_16_bit_window_costs_about_a_byte_a_pixel() -> None:
    pixels = RNG.integers(0, 4096, (3000, 3000)).astype(np.uint16)
    tracemalloc.start()
    try:
        auto_window(pixels)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / pixels.size < 1.5  # the output, plus blocks of a few MB; the float64 way took 20+
