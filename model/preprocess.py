"""Studies of decoded images → the padded pixel tensor and view mask the model takes.

Images arrive as 8-bit grayscale ('L') from the decoder; ViT expects 3 channels, so each is converted to
RGB (the gray value copied to all three) before the bundle's own processor resizes and normalises it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from transformers import ViTImageProcessorPil

from model.errors import ModelError


def pixel_values(
    processor: ViTImageProcessorPil, studies: Sequence[Sequence[Image.Image]], max_views: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (B, V, 3, H, W) float pixels and a (B, V) bool mask of real (not padded) views.

    V is the most views any study in the batch has, capped at `max_views`: a study's extra views
    are dropped, its first ones kept. Padded views are zeros and masked out by the model. All
    images of the batch go through the processor in one call.
    """
    if max_views < 1:
        raise ModelError(f"max_views must be at least 1, got {max_views}.")
    kept = [list(study)[:max_views] for study in studies]
    for i, views in enumerate(kept):
        if not views:
            raise ModelError(f"Study {i} of the batch has no images; every study needs at least one view.")
    b, v = len(kept), max((len(views) for views in kept), default=0)
    rgb = [image.convert("RGB") for views in kept for image in views]
    if not rgb:
        return torch.zeros(0, 0, 3, 0, 0), torch.zeros(0, 0, dtype=torch.bool)
    flat = processor(images=rgb, return_tensors="pt")["pixel_values"]  # (N, 3, H, W), N real views
    mask = torch.zeros(b, v, dtype=torch.bool)  # (B, V)
    for i, views in enumerate(kept):
        mask[i, : len(views)] = True
    pixels = flat.new_zeros(b, v, *flat.shape[1:])  # (B, V, 3, H, W)
    pixels[mask] = flat  # row-major order of the mask matches the order images were flattened in
    return pixels, mask


def view_tensor(processor: ViTImageProcessorPil, image: Image.Image) -> torch.Tensor:
    """One decoded view as the (3, H, W) float tensor the encoder takes.

    Resizing a 2048-px X-ray is most of preprocessing; done per image, it can run in the decode
    threads (Pillow releases the GIL) while the model works on the previous batch.
    """
    return processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"][0]  # (3, H, W)


def stack_views(studies: Sequence[Sequence[torch.Tensor]], max_views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Studies of (3, H, W) view tensors → (B, V, 3, H, W) pixels and the (B, V) mask, as `pixel_values`."""
    kept = [list(views)[:max_views] for views in studies]
    if any(not views for views in kept):
        raise ModelError("Every study needs at least one view.")
    b, v = len(kept), max((len(views) for views in kept), default=0)
    if not b:
        return torch.zeros(0, 0, 3, 0, 0), torch.zeros(0, 0, dtype=torch.bool)
    first = kept[0][0]
    pixels = first.new_zeros(b, v, *first.shape)  # (B, V, 3, H, W)
    mask = torch.zeros(b, v, dtype=torch.bool)  # (B, V)
    for i, views in enumerate(kept):
        pixels[i, : len(views)] = torch.stack(views)
        mask[i, : len(views)] = True
    return pixels, mask
