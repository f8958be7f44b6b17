"""Training data: IU studies paired with whichever of their images are on disk, split, batched.

The IU CSVs list 7,466 images of 3,851 studies; a machine may hold all of them, a subset, or (in this
repository) 18. Training uses what is there: a listed image that is not under `--images` is counted as
missing, a study left with no image is counted and skipped, a study whose target text is empty is
counted and skipped. None of these is an error; an empty training set is.

Images are matched by their IU key, `{uid}_IM-{series}-{image}`, so the Kaggle names the projections
CSV lists (`1000_IM-0003-1001.dcm.png`) and the Open-i names of the same files
(`CXR1000_IM-0003-1001.png`) both match. A study's images are ordered by their path under the folder,
as `xrq submit` orders them, so a model sees its views in training in the order it will at inference.

Batches follow a seeded plan that is a pure function of (seed, micro-batch number): epoch e visits the
studies in `randperm(n, seed + e)` order. Resuming at step s therefore needs no sampler state at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import ViTImageProcessorPil

from model.datasets.iu import benchmark_split, random_split, read_iu
from model.errors import ImageError, TrainingError
from model.imaging.images import decode
from model.imaging.preprocess import GreyLevels, compact_view, pixel_values
from model.metrics.evaluation import reference_text
from model.metrics.sections import join_sections

SPLITS = ("benchmark", "random", "all")
VIEWS = ("frontal", "all")
_IU_KEY = re.compile(r"^(?:CXR)?(\d+_IM-\d+-\d+(?:-\d+)?)(?:\.dcm)?\.(?:png|jpe?g|dcm)$", re.IGNORECASE)


@dataclass(frozen=True)
class Example:
    """One training study: its target report and the image files present for it."""

    uid: str
    text: str
    images: tuple[Path, ...]


@dataclass
class DataSummary:
    """What was found: reported to the user and stored in the model's metadata."""

    studies: int = 0  # in the reports CSV
    empty_text: int = 0  # skipped: the chosen section is blank
    without_images: int = 0  # skipped: none of the study's (chosen) images is present
    not_in_split: int = 0  # skipped: the benchmark split does not list the study (or it is a test study)
    images_used: int = 0
    images_missing: int = 0  # listed for a study with text, but not under --images
    train: int = 0
    val: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class TrainingData:
    train: list[Example]
    val: list[Example]
    summary: DataSummary


def iu_key(filename: str) -> str | None:
    """`1000_IM-0003-1001` for both `1000_IM-0003-1001.dcm.png` and `CXR1000_IM-0003-1001.png`."""
    found = _IU_KEY.match(filename)
    return found.group(1) if found else None


def index_images(folder: str | Path) -> dict[str, Path]:
    """{IU key: file} for every IU-named file under `folder` (recursively).

    A picture present under both its names (Kaggle and Open-i) is used once: the first by path.
    """
    root = Path(folder)
    if not root.is_dir():
        raise TrainingError(f"Image folder {root} does not exist; pass the folder of IU PNGs as --images.")
    index: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        key = iu_key(path.name)
        if key is not None and key not in index and path.is_file():
            index[key] = path
    return index


def load_data(
    reports_csv: str | Path, projections_csv: str | Path, images: str | Path, *, text: str, views: str,
    split: str, seed: int, split_file: str | Path | None = None, val_fraction: float = 0.2,
) -> TrainingData:
    """The studies with a target text and at least one present image, split into train and val.

    split: "benchmark" (the published R2Gen split: its train and val; test studies are never used),
    "random" (seeded, `val_fraction` held out), "all" (train = val = every study: for memorisation
    demos and tests, where validation scores measure recall, not generalisation).
    """
    if split not in SPLITS or views not in VIEWS:
        raise TrainingError(f"split must be one of {SPLITS} and views one of {VIEWS}.")
    studies = read_iu(reports_csv, projections_csv)
    index = index_images(images)
    summary = DataSummary(studies=len(studies))
    examples: list[Example] = []
    for study in studies.values():
        # Both sections: each after its marker, so the model writes them apart (`model.metrics.sections`).
        target = (join_sections(study.findings, study.impression) if text == "both"
                  else " ".join(reference_text(study.findings, study.impression, text).split()))
        if not target:
            summary.empty_text += 1
            continue
        wanted = [name for name, projection in study.images if views == "all" or projection == "Frontal"]
        found = [index[k] for k in (iu_key(name) for name in wanted) if k is not None and k in index]
        summary.images_missing += len(wanted) - len(found)
        if not found:
            summary.without_images += 1
            continue
        summary.images_used += len(found)
        examples.append(Example(study.uid, target, tuple(sorted(found, key=lambda p: p.relative_to(images)))))
    train, val = _split(examples, split, seed, split_file or Path(reports_csv).with_name("r2gen_split.csv"),
                        val_fraction, summary)
    if not train:
        raise TrainingError(
            f"No training study: {summary.studies} in {reports_csv}, {summary.empty_text} without {text} text, "
            f"{summary.without_images} without any image under {images}, {summary.not_in_split} outside the "
            f"{split} split's train part. Point --images at the IU PNGs, or use --split all for a few studies."
        )
    summary.train, summary.val = len(train), len(val)
    return TrainingData(train, val, summary)


def _split(
    examples: list[Example], split: str, seed: int, split_file: str | Path, val_fraction: float,
    summary: DataSummary,
) -> tuple[list[Example], list[Example]]:
    if split == "all":
        return list(examples), list(examples)
    if split == "random":
        side = random_split([e.uid for e in examples], seed, val_fraction)  # "test" is our held-out val
        return [e for e in examples if side[e.uid] == "train"], [e for e in examples if side[e.uid] == "test"]
    side = benchmark_split(split_file)
    summary.not_in_split = sum(side.get(e.uid) not in ("train", "val") for e in examples)
    return [e for e in examples if side.get(e.uid) == "train"], [e for e in examples if side.get(e.uid) == "val"]


# --- tensors --------------------------------------------------------------------------------------


class StudyImages(torch.utils.data.Dataset):
    """Study i → ((V, 3, H, W) pixels, target text), preprocessed exactly as inference does.

    With `cache`, every study is decoded once up front (threads) and kept in RAM as its grey levels
    (`model.imaging.preprocess.GreyLevels`: one byte a pixel, the same floats back), so an epoch costs no
    decoding at all: a few thousand 224-px views take a few hundred MB. Without it, loader workers decode
    in parallel with the training step. An unreadable file is dropped from its study; a study with no
    readable image comes back as None and is left out of its batch.
    """

    def __init__(self, examples: Sequence[Example], processor: ViTImageProcessorPil, max_views: int,
                 *, cache: bool = False) -> None:
        self.examples = list(examples)
        self.processor = processor
        self.max_views = max_views
        self._cache: list[list[GreyLevels | torch.Tensor] | None] | None = None
        if cache:
            with ThreadPoolExecutor(max_workers=4) as pool:
                self._cache = list(pool.map(self._views, range(len(self.examples))))

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, str] | None:
        """((V, 3, H, W) pixels, target text, uid), or None when no image of the study is readable."""
        views = self._cache[i] if self._cache is not None else self._views(i)
        if views is None:
            return None
        pixels = torch.stack([v.tensor() if isinstance(v, GreyLevels) else v for v in views])  # (V, 3, H, W)
        return pixels, self.examples[i].text, self.examples[i].uid

    def _views(self, i: int) -> list[GreyLevels | torch.Tensor] | None:
        pictures: list[Image.Image] = []
        for path in self.examples[i].images[: self.max_views]:
            try:
                pictures.append(decode(path))
            except ImageError:
                continue
        views = [compact_view(self.processor, picture) for picture in pictures]
        if len({tuple(v.shape) for v in views}) > 1:  # what pixel_values refuses, said the same way
            pixel_values(self.processor, [pictures], self.max_views)
        return views or None


def view_bytes(processor: ViTImageProcessorPil) -> int:
    """What `StudyImages(cache=True)` keeps per grey view, measured on a blank one: a byte a pixel of the
    model's input as grey levels, or the float tensor where this processor's settings refuse them."""
    kept = compact_view(processor, Image.new("L", (64, 64)))
    if isinstance(kept, GreyLevels):
        return int(kept.levels.nbytes)
    return kept.numel() * kept.element_size()


Batch = tuple[torch.Tensor, torch.Tensor, list[str], list[str]]


def collate(items: Sequence[tuple[torch.Tensor, str, str] | None]) -> Batch | None:
    """Studies → (B, V, 3, H, W) pixels, (B, V) view mask, B texts, B uids; V is the batch's most views."""
    real = [item for item in items if item is not None]
    if not real:
        return None
    views = max(item[0].shape[0] for item in real)
    first = real[0][0]
    batch = first.new_zeros(len(real), views, *first.shape[1:])  # (B, V, 3, H, W), padded views stay 0
    mask = torch.zeros(len(real), views, dtype=torch.bool)  # (B, V)
    for i, (pixels, _, _) in enumerate(real):
        batch[i, : pixels.shape[0]] = pixels
        mask[i, : pixels.shape[0]] = True
    return batch, mask, [item[1] for item in real], [item[2] for item in real]


class MicroBatches(torch.utils.data.Sampler[list[int]]):
    """Index lists for micro-batches [start, stop) of the endless seeded stream over `n` studies."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int) -> None:
        self.n, self.batch_size, self.seed, self.start, self.stop = n, batch_size, seed, start, stop
        self.per_epoch = -(-n // batch_size)  # the last batch of an epoch may be short

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, order = -1, torch.empty(0, dtype=torch.long)
        for m in range(self.start, self.stop):
            e, b = divmod(m, self.per_epoch)
            if e != epoch:
                epoch, order = e, epoch_order(self.n, self.seed, e)
            yield order[b * self.batch_size : (b + 1) * self.batch_size].tolist()


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order epoch `epoch` visits n studies in; its own generator, so the global RNG is untouched."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def loader(dataset: StudyImages, sampler: Iterable[list[int]], workers: int) -> torch.utils.data.DataLoader[Any]:
    """Batches in plan order. Its own generator: a DataLoader otherwise draws a seed from the global RNG,
    which would shift dropout masks after a resume."""
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
        generator=torch.Generator().manual_seed(0), persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )
