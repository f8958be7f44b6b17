"""model.imaging.view_cache: a cached view is exactly the view, damage is a miss, the size stays bounded."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import ViTImageProcessorPil
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from model.errors import ModelError
from model.imaging.images import decode
from model.imaging.preprocess import view_tensor
from model.imaging.view_cache import ViewCache

REPO = Path(__file__).resolve().parents[2]
PNG = REPO / "examples" / "iu" / "1001_IM-0004-1001.dcm.png"
DICOM = REPO / "tests" / "data" / "dicom" / "RG1_J2KR.dcm"


def vit(**settings: Any) -> ViTImageProcessorPil:
    processor = ViTImageProcessorPil(**settings)
    processor.size = {"height": 224, "width": 224}
    return processor


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns, so -0.0 and 0.0 (or two NaNs) are told apart."""
    return t.contiguous().view(torch.uint8)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def entry_files(root: Path) -> list[Path]:
    return sorted(root.glob("*/*.safetensors"))


@pytest.mark.parametrize("path", [PNG, DICOM], ids=["png", "dicom"])
@pytest.mark.parametrize("processor", [vit(), vit(image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD)],
                         ids=["vit", "imagenet"])
def test_a_cached_view_is_exactly_the_view_and_small(tmp_path: Path, path: Path,
                                                      processor: ViTImageProcessorPil) -> None:
    cache = ViewCache(tmp_path, max_bytes=10_000_000)
    image = decode(path)
    view = view_tensor(processor, image)  # (3, 224, 224) float32: 602 KB
    key = cache.key(sha(path), processor)
    assert cache.get(key) is None
    cache.put(key, view, image_size=image.size)
    found = cache.lookup(key)
    assert found is not None and same(found.tensor, view) and found.image_size == image.size
    again = ViewCache(tmp_path, max_bytes=10_000_000).get(key)  # as another process sees it
    assert again is not None and same(again, view)
    (file,) = entry_files(tmp_path)
    assert file.stat().st_size < 60_000  # uint8 index + palette, not 600 KB of floats


@pytest.mark.parametrize("tensor", [
    torch.randn(3, 32, 32),  # not a palette image: kept whole
    torch.randn(3, 16, 16).to(torch.bfloat16),
    torch.tensor([[[0.0, -0.0], [1.0, float("nan")]]] * 3),  # bit patterns survive
    torch.randn(2, 4),
    torch.zeros(0, 3, 3),
], ids=["float", "bf16", "signed-zero-nan", "2d", "empty"])
def test_any_tensor_comes_back_bit_for_bit(tmp_path: Path, tensor: torch.Tensor) -> None:
    cache = ViewCache(tmp_path, max_bytes=10_000_000)
    key = cache.key("ab" * 32, vit())
    cache.put(key, tensor)
    found = cache.get(key)
    assert found is not None and same(found, tensor)
    looked_up = cache.lookup(key)
    assert looked_up is not None and same(looked_up.tensor, tensor) and looked_up.image_size is None


def test_keys_follow_content_and_preprocessing_not_objects() -> None:
    digest = "0f" * 32
    assert ViewCache.key(digest, vit()) == ViewCache.key(digest.upper(), vit())
    assert ViewCache.key(digest, vit()) != ViewCache.key("1f" * 32, vit())
    assert ViewCache.key(digest, vit()) != ViewCache.key(digest, vit(image_mean=IMAGENET_DEFAULT_MEAN))
    other_size = vit()
    other_size.size = {"height": 384, "width": 384}
    assert ViewCache.key(digest, vit()) != ViewCache.key(digest, other_size)


def test_bad_keys_and_limits_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="sha256"):
        ViewCache.key("../../etc/passwd", vit())
    with pytest.raises(ModelError, match="positive size limit"):
        ViewCache(tmp_path, max_bytes=0)
    with pytest.raises(ModelError, match="Not a view cache key"):
        ViewCache(tmp_path, max_bytes=100).get("../x")


@pytest.mark.parametrize("damage", ["truncate", "flip-a-pixel-byte", "garbage", "empty", "other-key"])
def test_a_damaged_entry_is_a_miss_and_is_removed(tmp_path: Path, damage: str) -> None:
    cache = ViewCache(tmp_path, max_bytes=10_000_000)
    key = cache.key("cd" * 32, vit())
    cache.put(key, view_tensor(vit(), decode(PNG)))
    (file,) = entry_files(tmp_path)
    data = file.read_bytes()
    if damage == "truncate":
        file.write_bytes(data[: len(data) // 2])
    elif damage == "flip-a-pixel-byte":
        file.write_bytes(data[:-100] + bytes([data[-100] ^ 1]) + data[-99:])
    elif damage == "garbage":
        file.write_bytes(os.urandom(len(data)))
    elif damage == "empty":
        file.write_bytes(b"")
    else:  # a whole, valid entry under the wrong name
        other = cache.key("ef" * 32, vit())
        cache.put(other, torch.zeros(3, 4, 4))
        file.write_bytes(cache._path(other).read_bytes())
    assert cache.get(key) is None
    assert not file.exists()


def test_least_recently_used_entries_are_evicted_first(tmp_path: Path) -> None:
    view = torch.randn(3, 16, 16)  # kept whole: every entry has the same size
    probe = ViewCache(tmp_path / "probe", max_bytes=10_000_000)
    probe.put(probe.key("00" * 32, vit()), view)
    entry = probe.size()
    cache = ViewCache(tmp_path / "cache", max_bytes=int(entry * 3.2))
    keys = [cache.key(f"{i:02x}" * 32, vit()) for i in range(4)]
    for i, key in enumerate(keys[:3]):
        cache.put(key, view)
        os.utime(cache._path(key), (1_000_000 + i, 1_000_000 + i))  # put in order 0, 1, 2
    assert cache.get(keys[0]) is not None  # a hit: 0 is now the most recently used
    cache.put(keys[3], view)  # over the limit: evict down to 90% of it (2.9 entries), oldest first
    assert [cache.get(k) is not None for k in keys] == [True, False, False, True]
    assert cache.size() <= cache.max_bytes


def test_the_total_stays_bounded_over_many_writes(tmp_path: Path) -> None:
    cache = ViewCache(tmp_path, max_bytes=50_000)
    processor = vit()
    for i in range(40):
        cache.put(cache.key(f"{i:064x}", processor), torch.randn(3, 16, 16))  # about 3.4 KB each
        assert cache.size() <= cache.max_bytes * (1 + 1 / 16) + 4_000
    assert len(entry_files(tmp_path)) < 40


def test_an_entry_larger_than_the_cache_is_not_kept(tmp_path: Path) -> None:
    cache = ViewCache(tmp_path, max_bytes=1_000)
    key = cache.key("aa" * 32, vit())
    cache.put(key, torch.randn(3, 32, 32))
    assert cache.get(key) is None and cache.size() == 0


def test_stale_temporary_files_of_dead_writers_are_cleared(tmp_path: Path) -> None:
    cache = ViewCache(tmp_path, max_bytes=10_000_000)
    (tmp_path / "ab").mkdir()
    stale, fresh = tmp_path / "ab" / ".tmp-dead", tmp_path / "ab" / ".tmp-writing"
    stale.write_bytes(b"x" * 100)
    fresh.write_bytes(b"x" * 10)
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    assert cache.size() == 10 and not stale.exists() and fresh.exists()


def _hammer(root: str, seed: int) -> int:
    """One worker process: put and get the same few keys as its siblings; count exact hits."""
    processor = vit()
    cache = ViewCache(root, max_bytes=60_000)  # about 4 entries: constant eviction under contention
    hits = 0
    for i in range(60):
        n = (seed + i) % 6
        key = cache.key(f"{n:064x}", processor)
        expected = torch.full((3, 24, 24), float(n)) + torch.arange(24.0)  # a palette view, 24 levels
        found = cache.get(key)
        if found is None:
            cache.put(key, expected)
        elif not same(found, expected):
            raise AssertionError(f"entry {n} came back different")
        else:
            hits += 1
    return hits


def test_concurrent_processes_share_one_folder(tmp_path: Path) -> None:
    """Spawned, not forked: a fork of the many-threaded test process can inherit a held lock and hang."""
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as pool:
        hits = list(pool.map(_hammer, [str(tmp_path)] * 3, range(3)))
    assert sum(hits) > 0
    assert not list(tmp_path.glob("*/.tmp-*"))
