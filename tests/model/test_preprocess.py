"""model.imaging.preprocess: the fast path gives the processor's own tensors bit for bit, on every real X-ray.

The reference is what xrq has always fed the model: `processor(images=[image.convert("RGB")])`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTImageProcessorPil
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from model.errors import ModelError
from model.imaging import preprocess
from model.imaging.images import decode
from model.imaging.preprocess import (
    GreyLevels,
    compact_view,
    fast_path_refusal,
    pixel_values,
    settings_fingerprint,
    stack_views,
    view_tensor,
)
from model.training.data import view_bytes

REPO = Path(__file__).resolve().parents[2]
REAL = sorted((REPO / "examples" / "iu").glob("*.png")) + sorted((REPO / "tests" / "data" / "xray").glob("*.png")) \
    + sorted((REPO / "tests" / "data" / "dicom").glob("*.dcm"))
# One of each kind, for the settings that are slow to run on every file: a 2048-px IU PNG, an RGB PNG
# decoded to gray, a 1024-px gray PNG, a DICOM.
FEW = [REPO / p for p in ("examples/iu/1001_IM-0004-1001.dcm.png", "examples/iu/CXR7_IM-2263-1001.png",
                          "tests/data/xray/00000013_004.png", "tests/data/dicom/RG1_J2KR.dcm")]


def vit(**settings: Any) -> ViTImageProcessorPil:
    """A processor as xrq's bundle makes one (defaults, then size set on the object), plus `settings`."""
    processor = ViTImageProcessorPil(**settings)
    if "size" not in settings:
        processor.size = {"height": 224, "width": 224}
    return processor


@functools.cache
def picture(path: Path) -> Image.Image:
    return decode(path)


def reference(processor: ViTImageProcessorPil, image: Image.Image) -> torch.Tensor:
    """xrq's preprocessing before the fast path, verbatim."""
    return processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"][0]


def assert_identical(processor: ViTImageProcessorPil, paths: list[Path]) -> None:
    assert fast_path_refusal(processor) is None
    for path in paths:
        image = picture(path)
        assert image.mode == "L"
        fast, ref = view_tensor(processor, image), reference(processor, image)
        assert fast.dtype == ref.dtype and fast.shape == ref.shape, path.name
        assert torch.equal(fast, ref), f"{path.name}: max |diff| {(fast - ref).abs().max().item()}"
        kept = compact_view(processor, image)  # what training keeps in RAM: a byte a pixel, the same floats
        assert isinstance(kept, GreyLevels) and kept.levels.dtype == np.uint8 and kept.shape == ref.shape
        assert torch.equal(kept.tensor(), ref), path.name


def test_the_real_files_are_all_here() -> None:
    assert len(REAL) == 25 and all(path.is_file() for path in FEW)


@pytest.mark.parametrize("settings", [
    {},  # xrq's default: ViT's mean/std 0.5, 224×224, bilinear
    {"image_mean": IMAGENET_DEFAULT_MEAN, "image_std": IMAGENET_DEFAULT_STD, "size": {"height": 384, "width": 384}},
], ids=["vit-default", "imagenet-384"])
def test_bit_identical_on_every_real_image(settings: dict[str, Any]) -> None:
    assert_identical(vit(**settings), REAL)


@pytest.mark.parametrize("settings", [
    {"resample": PILImageResampling.BICUBIC},
    {"resample": PILImageResampling.LANCZOS, "size": {"height": 160, "width": 192}},
    {"resample": PILImageResampling.NEAREST},
    {"resample": PILImageResampling.BOX},
    {"resample": PILImageResampling.HAMMING},
    {"size": {"shortest_edge": 256}, "do_center_crop": True, "crop_size": {"height": 224, "width": 224}},
    {"size": {"shortest_edge": 200}},  # aspect kept: views of different shapes
    {"size": {"shortest_edge": 200, "longest_edge": 230}},
    {"size": {"max_height": 250, "max_width": 200}},
    {"do_center_crop": True, "crop_size": {"height": 256, "width": 200}},  # larger than the image: padded
    {"do_resize": False, "do_normalize": False, "do_center_crop": True, "crop_size": {"height": 300, "width": 300}},
    {"do_normalize": False},
    {"do_rescale": False},
    {"rescale_factor": 1 / 127.5, "image_mean": 0.9, "image_std": 0.3},
    {"image_mean": [0.1, 0.5, 0.9], "image_std": [0.2, 1.0, 3.0]},
    {"do_convert_rgb": True},
    {"do_convert_rgb": False},
], ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "none")
def test_bit_identical_for_other_settings(settings: dict[str, Any]) -> None:
    assert_identical(vit(**settings), FEW)


def test_uint8_output_when_nothing_rescales() -> None:
    processor = vit(do_rescale=False, do_normalize=False)
    assert_identical(processor, FEW[:1])
    assert view_tensor(processor, picture(FEW[0])).dtype == reference(processor, picture(FEW[0])).dtype


def test_a_changed_processor_is_followed_not_cached_by_object() -> None:
    """The bundle sets `size` on a loaded processor; the next view must use the new size."""
    processor = vit()
    image = picture(FEW[2])
    assert view_tensor(processor, image).shape == (3, 224, 224)
    processor.size = {"height": 96, "width": 128}
    processor.image_mean = [0.2, 0.3, 0.4]
    assert torch.equal(view_tensor(processor, image), reference(processor, image))
    assert view_tensor(processor, image).shape == (3, 96, 128)


@pytest.mark.parametrize("settings, why", [
    ({"do_pad": True, "pad_size": {"height": 256, "width": 256}}, "do_pad"),
])
def test_what_cannot_be_matched_takes_the_processors_path(settings: dict[str, Any], why: str) -> None:
    processor = vit(**settings)
    refusal = fast_path_refusal(processor)
    assert refusal is not None and why in refusal
    image = picture(FEW[2])
    assert torch.equal(view_tensor(processor, image), reference(processor, image))


def test_settings_the_processor_refuses_are_refused_as_before() -> None:
    processor = vit()
    processor.resample = None  # type: ignore[assignment]
    assert "self-check" in (fast_path_refusal(processor) or "")
    with pytest.raises(ValueError, match="resample"):
        view_tensor(processor, picture(FEW[2]))


def test_a_processor_that_overrides_a_step_keeps_its_own_path() -> None:
    class Shifted(ViTImageProcessorPil):
        def normalize(self, image: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
            return super().normalize(image, *args, **kwargs) + 1

    processor = Shifted(size={"height": 64, "width": 64})
    assert "Shifted overrides normalize" in (fast_path_refusal(processor) or "")
    image = picture(FEW[2])
    assert torch.equal(view_tensor(processor, image), reference(processor, image))


@pytest.mark.parametrize("mode", ["RGB", "LA", "I;16"])
def test_images_that_are_not_8_bit_gray_take_the_processors_path(mode: str) -> None:
    processor = vit()
    rgb = Image.open(REPO / "tests" / "data" / "xray" / "h0001.png").convert("RGB")
    image = rgb if mode == "RGB" else rgb.convert("L").convert(mode)
    assert torch.equal(view_tensor(processor, image), reference(processor, image))
    kept = compact_view(processor, image)
    assert isinstance(kept, torch.Tensor) and torch.equal(kept, reference(processor, image))


def test_the_training_cache_budgets_what_it_keeps_per_view() -> None:
    """A byte a pixel where grey levels are kept; 3 float32 channels where the settings refuse them."""
    size = {"height": 96, "width": 128}
    kept = compact_view(vit(size=size), picture(FEW[2]))
    assert isinstance(kept, GreyLevels) and view_bytes(vit(size=size)) == 96 * 128
    padded = vit(size=size, do_pad=True, pad_size={"height": 256, "width": 256})
    tensor = compact_view(padded, picture(FEW[2]))
    assert isinstance(tensor, torch.Tensor)
    assert view_bytes(padded) == tensor.numel() * tensor.element_size() == 3 * 256 * 256 * 4


def test_gray_with_a_transparent_level_takes_the_processors_path() -> None:
    image = picture(FEW[2]).copy()
    image.info["transparency"] = 0  # convert_to_rgb would paint that level white
    processor = vit(do_convert_rgb=True)
    assert torch.equal(view_tensor(processor, image), reference(processor, image))


def test_the_self_check_catches_a_wrong_plan() -> None:
    """The guard against a transformers or Pillow release changing a step can fail."""
    processor = vit()
    plan = preprocess._plan(processor)
    assert isinstance(plan, preprocess._FastPlan)
    lut = plan.lut.copy()
    lut[1, 77] = np.nextafter(lut[1, 77], np.float32(10))  # one grey level, one channel, one ulp off
    wrong = preprocess._FastPlan(plan.settings, plan.resample, lut)
    assert isinstance(preprocess._self_check(processor, wrong), str)
    assert preprocess._self_check(processor, plan) is plan


def test_pixel_values_equal_the_processor_in_one_batch_call() -> None:
    processor = vit()
    a, b, c, d = (picture(path) for path in FEW)
    studies = [[a, b], [c], [d, c, a]]
    pixels, mask = pixel_values(processor, studies, max_views=2)
    assert pixels.shape == (3, 2, 3, 224, 224) and mask.tolist() == [[True, True], [True, False], [True, True]]
    flat = processor(images=[im.convert("RGB") for s in studies for im in s[:2]], return_tensors="pt")["pixel_values"]
    assert torch.equal(pixels[mask], flat)
    assert not pixels[~mask].any()


def test_pixel_values_on_the_processors_path_pad_like_before() -> None:
    processor = vit(do_pad=True, pad_size={"height": 240, "width": 240})
    studies = [[picture(FEW[2])], [picture(FEW[1]), picture(FEW[0])]]
    pixels, mask = pixel_values(processor, studies, max_views=4)
    flat = processor(images=[im.convert("RGB") for s in studies for im in s], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (2, 2, 3, 240, 240) and torch.equal(pixels[mask], flat) and not pixels[~mask].any()


def test_stack_views_pads_masks_and_pins_only_with_cuda() -> None:
    a, b, c = (torch.full((3, 4, 5), float(i)) for i in (1, 2, 3))
    pixels, mask = stack_views([[a], [b, c]], max_views=4, pin=True)
    assert pixels.shape == (2, 2, 3, 4, 5) and mask.tolist() == [[True, False], [True, True]]
    assert torch.equal(pixels[0, 0], a) and not pixels[0, 1].any() and torch.equal(pixels[1, 1], c)
    assert pixels.is_pinned() == torch.cuda.is_available()  # silently unpinned on a CPU-only host
    unpinned, _ = stack_views([[a], [b, c]], max_views=4)
    assert torch.equal(pixels, unpinned) and not unpinned.is_pinned()


def test_stack_views_refuses_views_of_different_sizes() -> None:
    with pytest.raises(ModelError, match="one size"):
        stack_views([[torch.zeros(3, 4, 4)], [torch.zeros(3, 4, 5)]], max_views=2)
    with pytest.raises(ModelError, match="at least one view"):
        stack_views([[torch.zeros(3, 4, 4)], []], max_views=2)
    assert stack_views([], max_views=2)[0].shape == (0, 0, 3, 0, 0)


def test_fingerprint_names_the_settings_not_the_object() -> None:
    assert settings_fingerprint(vit()) == settings_fingerprint(vit())
    assert settings_fingerprint(vit()) != settings_fingerprint(vit(image_mean=IMAGENET_DEFAULT_MEAN))
    assert settings_fingerprint(vit()) != settings_fingerprint(vit(resample=PILImageResampling.BICUBIC))
    changed = vit()
    changed.size = {"height": 384, "width": 384}
    assert settings_fingerprint(changed) != settings_fingerprint(vit())
