"""Studies of decoded images → the padded pixel tensor and view mask the model takes.

Images arrive as 8-bit grayscale ('L') from the decoder. The bundle's processor defines the model's
input: convert to RGB (the grey value copied to all three channels), resize, rescale, normalise. Done in
that order on a 2048-px X-ray, most of the time goes into converting and copying three full-size
channels that the resize then throws away.

The fast path does the same arithmetic in the cheap order (STYLE 17): resize the one grey channel with
the processor's own size rule and filter (Pillow resamples each 8-bit channel with the same integer
arithmetic, so the grey result equals each channel of the RGB result), then map each grey level 0..255
through a per-channel lookup table built by the processor's own `rescale` and `normalize` on a ramp of
all 256 levels. Those two are elementwise, so the table lookup gives the very floats they would.
The result is bit-identical to `processor(images=[image.convert("RGB")])`, and each processor
setting is checked against that once (`_self_check`); whatever the fast path cannot match exactly
(padding, another backend, an overridden step, a non-'L' image) takes the processor's own path.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import PIL
import torch
import transformers
from PIL import Image
from transformers import ViTImageProcessorPil
from transformers.image_processing_backends import PilBackend
from transformers.image_transforms import center_crop, get_resize_output_image_size, get_size_with_aspect_ratio
from transformers.image_utils import ChannelDimension, PILImageResampling, SizeDict
from transformers.image_utils import get_image_size_for_max_height_width as _max_height_width

from model.errors import ModelError

log = logging.getLogger(__name__)

# The PilBackend steps the fast path reproduces; a processor class that overrides any of them does
# something else, and keeps its own path.
_REPRODUCED = ("preprocess", "_preprocess", "_preprocess_image_like_inputs", "_prepare_image_like_inputs",
               "process_image", "convert_to_rgb", "resize", "rescale", "normalize", "center_crop",
               "_standardize_kwargs")


def pixel_values(
    processor: ViTImageProcessorPil, studies: Sequence[Sequence[Image.Image]], max_views: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (B, V, 3, H, W) float pixels and a (B, V) bool mask of real (not padded) views.

    V is the most views any study in the batch has, capped at `max_views`: a study's extra views
    are dropped, its first ones kept. Padded views are zeros and masked out by the model. Each view
    is preprocessed as `view_tensor` does, so training, `generate` and the worker see the same pixels.
    """
    if max_views < 1:
        raise ModelError(f"max_views must be at least 1, got {max_views}.")
    kept = [list(study)[:max_views] for study in studies]
    for i, views in enumerate(kept):
        if not views:
            raise ModelError(f"Study {i} of the batch has no images; every study needs at least one view.")
    if isinstance(_plan(processor), _FastPlan):
        return stack_views([[view_tensor(processor, image) for image in views] for views in kept], max_views)
    # The processor's own path, in one call: with padding, views are padded to the batch's largest.
    flat = list(_processor_path(processor, [image for views in kept for image in views]))  # N × (3, H, W)
    ends = itertools.accumulate(len(views) for views in kept)
    return stack_views([flat[end - len(views) : end] for views, end in zip(kept, ends, strict=True)], max_views)


def view_tensor(processor: ViTImageProcessorPil, image: Image.Image) -> torch.Tensor:
    """One decoded view as the (3, H, W) float tensor the encoder takes, bit-identical to
    `processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"][0]`.

    Done per image so it can run in the decode workers while the model works on the previous batch.
    """
    plan = _plan(processor)
    if isinstance(plan, _FastPlan) and image.mode == "L" and "transparency" not in image.info:
        return plan.apply(image)  # (3, H, W)
    return _processor_path(processor, [image])[0]  # (3, H, W)


def compact_view(processor: ViTImageProcessorPil, image: Image.Image) -> GreyLevels | torch.Tensor:
    """`view_tensor` in a form cheap to keep: `GreyLevels` where the fast path applies (call `.tensor()`
    for the very same floats), else the tensor itself."""
    plan = _plan(processor)
    if isinstance(plan, _FastPlan) and image.mode == "L" and "transparency" not in image.info:
        return plan.levels(image)
    return _processor_path(processor, [image])[0]  # (3, H, W)


def fast_path_refusal(processor: ViTImageProcessorPil) -> str | None:
    """Why `view_tensor` takes the processor's own (slower) path for 'L' images; None when it does not."""
    plan = _plan(processor)
    return plan if isinstance(plan, str) else None


def stack_views(studies: Sequence[Sequence[torch.Tensor]], max_views: int, *,
                pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Studies of (3, H, W) view tensors → (B, V, 3, H, W) pixels and the (B, V) mask, as `pixel_values`.

    `pin` allocates the pixels in page-locked memory so the copy to the GPU can overlap compute
    (`.to(dev, non_blocking=True)`); without CUDA there is nothing to overlap and it is ignored.
    """
    kept = [list(views)[:max_views] for views in studies]
    if any(not views for views in kept):
        raise ModelError("Every study needs at least one view.")
    b, v = len(kept), max((len(views) for views in kept), default=0)
    if not b:
        return torch.zeros(0, 0, 3, 0, 0), torch.zeros(0, 0, dtype=torch.bool)
    first = kept[0][0]
    if any(view.shape != first.shape for views in kept for view in views):
        shapes = sorted({tuple(view.shape) for views in kept for view in views})
        raise ModelError(f"Views of one batch must have one size, got {shapes}: give the image processor "
                         "a fixed height and width.")
    pin = pin and torch.cuda.is_available()
    pixels = torch.empty(b, v, *first.shape, dtype=first.dtype, pin_memory=pin)  # (B, V, 3, H, W)
    mask = torch.zeros(b, v, dtype=torch.bool)  # (B, V)
    for i, views in enumerate(kept):
        torch.stack(views, out=pixels[i, : len(views)])
        pixels[i, len(views) :] = 0  # padded views are zeros, and masked out
        mask[i, : len(views)] = True
    return pixels, mask


def settings_fingerprint(processor: ViTImageProcessorPil) -> str:
    """A hex digest of everything that decides `view_tensor`'s output: the processor's class and
    settings, and the transformers and Pillow versions (whose resize and arithmetic it runs).
    Two processors with the same fingerprint give the same tensors, so caches can share them."""
    return _settings(processor)[1]


@dataclass(frozen=True, eq=False)
class _FastPlan:
    """What `processor` does to an 'L' image, in the cheap order."""

    settings: dict[str, Any]
    resample: int
    lut: np.ndarray  # (3, 256): the value of each grey level in each channel after rescale + normalise

    def apply(self, image: Image.Image) -> torch.Tensor:
        return self.levels(image).tensor()  # (3, H, W)

    def levels(self, image: Image.Image) -> GreyLevels:
        s = self.settings
        if s["do_resize"]:
            height, width = _resized_size(s["size"], image.height, image.width)
            image = image.resize((width, height), resample=self.resample)
        gray = np.asarray(image)  # (H, W) uint8
        if s["do_center_crop"]:
            crop = s["crop_size"]  # PilBackend.center_crop's own function; it zero-pads when too small
            gray = center_crop(gray[None], (crop.height, crop.width), input_data_format=ChannelDimension.FIRST)[0]
        return GreyLevels(gray, self.lut)


@dataclass(frozen=True, eq=False)
class GreyLevels:
    """A preprocessed grey view as its (H, W) uint8 levels and the (3, 256) table `tensor()` looks them up
    in: the same floats as `view_tensor`, in a twelfth of the memory (what the trainer keeps in RAM)."""

    levels: np.ndarray  # (H, W) uint8
    lut: np.ndarray  # (3, 256) float32, shared by every view of one processor

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.lut), *self.levels.shape)  # the tensor's: (3, H, W)

    def tensor(self) -> torch.Tensor:
        return torch.from_numpy(np.take(self.lut, self.levels, axis=1))  # (3, H, W)


_plans: dict[str, _FastPlan | str] = {}
_plans_lock = threading.Lock()


def _plan(processor: ViTImageProcessorPil) -> _FastPlan | str:
    """The fast plan for this processor's current settings, or why there is none. Cached per
    fingerprint: processors are mutable (`bundle` sets `size` after loading), so never per object."""
    try:
        settings, fingerprint = _settings(processor)
    except Exception as exc:  # an unknown processor: its own path, and say why
        return f"cannot read the processor's settings ({type(exc).__name__}: {exc})"
    plan = _plans.get(fingerprint)
    if plan is None:
        with _plans_lock:
            plan = _plans.get(fingerprint)
            if plan is None:
                plan = _plans[fingerprint] = _build_plan(processor, settings)
                if isinstance(plan, str):
                    log.info("image preprocessing takes the processor's own path: %s", plan)
    return plan


def _settings(processor: ViTImageProcessorPil) -> tuple[dict[str, Any], str]:
    """The settings `processor(...)` itself resolves (its attributes, standardised as its `preprocess`
    does: sizes as SizeDict, means as tuples) and their fingerprint."""
    names = getattr(processor, "_valid_kwargs_names", None)
    if names is None or not hasattr(processor, "_standardize_kwargs"):
        raise ModelError(f"{type(processor).__name__} is not a transformers image processor")
    raw = {name: getattr(processor, name, None) for name in names}
    settings = processor._standardize_kwargs(**raw)
    described = {
        "class": f"{type(processor).__module__}.{type(processor).__qualname__}",
        "settings": {key: _jsonable(value) for key, value in sorted(settings.items())},
        "transformers": transformers.__version__,
        "pillow": PIL.__version__,
    }
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=repr).encode()).hexdigest()
    return settings, digest


def _jsonable(value: Any) -> Any:
    if isinstance(value, SizeDict):
        return dict(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _build_plan(processor: ViTImageProcessorPil, settings: dict[str, Any]) -> _FastPlan | str:
    if not isinstance(processor, PilBackend):
        return f"{type(processor).__name__} is not a Pillow-backend image processor"
    for cls in type(processor).__mro__:
        if cls is PilBackend:
            break
        overridden = [name for name in _REPRODUCED if name in vars(cls)]
        if overridden:
            return f"{cls.__name__} overrides {', '.join(overridden)}"
    if settings.get("do_pad"):
        return "do_pad is set"
    if settings.get("return_tensors") not in (None, "pt"):
        return f"return_tensors is {settings['return_tensors']!r}"
    resample = settings.get("resample")
    if resample is None:
        resample = PILImageResampling.BILINEAR  # PilBackend.resize's default
    if not isinstance(resample, PILImageResampling | int):
        return f"resample {resample!r} is not a Pillow filter"
    if settings.get("do_resize"):
        try:
            _resized_size(settings["size"], 300, 257)
        except (ValueError, TypeError, AttributeError) as exc:
            return f"size {settings.get('size')!r} is not a size this path knows ({exc})"
    if settings.get("do_center_crop") and not isinstance(settings.get("crop_size"), SizeDict):
        return "do_center_crop without a crop_size"
    ramp = np.broadcast_to(np.arange(256, dtype=np.uint8), (3, 1, 256))  # (3, 1, 256), channels first
    lut: np.ndarray = np.ascontiguousarray(ramp)
    if settings.get("do_rescale"):
        lut = processor.rescale(lut, settings["rescale_factor"])
    if settings.get("do_normalize"):
        lut = processor.normalize(lut, settings["image_mean"], settings["image_std"])
    plan = _FastPlan({**settings, "do_resize": bool(settings.get("do_resize")),
                                 "do_center_crop": bool(settings.get("do_center_crop"))},
                     int(resample), np.ascontiguousarray(lut[:, 0, :]))
    return _self_check(processor, plan)


def _self_check(processor: ViTImageProcessorPil, plan: _FastPlan) -> _FastPlan | str:
    """Run both paths on two small synthetic X-ray-like pictures (portrait and landscape, every grey
    level, sharp edges): a transformers or Pillow release that changes any step must not silently
    change the model's input, so any difference keeps the processor's own path."""
    rng = np.random.default_rng(0)
    for height, width in ((311, 257), (257, 311)):
        yy, xx = np.mgrid[0:height, 0:width]
        gray = ((xx * 7 + yy * 3) % 256 + rng.integers(0, 40, (height, width))) % 256
        gray[height // 3 : height // 2] = 255  # a hard edge, where filters overshoot
        image = Image.fromarray(gray.astype(np.uint8), "L")
        try:
            fast, slow = plan.apply(image), _processor_path(processor, [image])[0]
        except Exception as exc:
            return f"the fast path failed its self-check ({type(exc).__name__}: {exc})"
        if fast.dtype != slow.dtype or fast.shape != slow.shape or not torch.equal(fast, slow):
            return "the fast path differs from the processor on a test picture (transformers or Pillow changed?)"
    return plan


def _resized_size(size: SizeDict, height: int, width: int) -> tuple[int, int]:
    """(height, width) after resizing, by PilBackend.resize's own rules and helpers, in its order."""
    if size.shortest_edge and size.longest_edge:
        return get_size_with_aspect_ratio((height, width), size.shortest_edge, size.longest_edge)
    if size.shortest_edge:
        shape_only = np.broadcast_to(np.uint8(0), (1, height, width))  # (1, H, W), no memory
        return get_resize_output_image_size(shape_only, size=size.shortest_edge, default_to_square=False,
                                            input_data_format=ChannelDimension.FIRST)
    if size.max_height and size.max_width:
        return _max_height_width((height, width), size.max_height, size.max_width)
    if size.height and size.width:
        return size.height, size.width
    raise ValueError("size needs height and width, max_height and max_width, or shortest_edge")


def _processor_path(processor: ViTImageProcessorPil, images: Sequence[Image.Image]) -> torch.Tensor:
    """The processor's own path, as xrq has always called it: (N, 3, H, W)."""
    rgb = [image.convert("RGB") for image in images]
    return processor(images=rgb, return_tensors="pt")["pixel_values"]
