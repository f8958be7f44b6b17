"""Training-time augmentation of preprocessed views: `xrq train --augment`.

Each view of a batch is shifted, zoomed and re-exposed at random, a little: what differs between two
radiographs of the same chest (positioning, distance, exposure). It is never flipped, mirrored or
rotated by more than a few degrees: a horizontal flip swaps the patient's right and left, so the
report's "right" would become a lie (radiological convention: the patient's right is the image's left).

Draws come from a generator seeded by (seed, step), so a run stays a pure function of its
configuration, and a resumed run draws what the uninterrupted one would have.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """How far each draw may go; uniform within ±each bound."""

    shift: float = 0.06  # of the image's width / height
    zoom: float = 0.08  # scale in [1 - zoom, 1 + zoom]
    rotate: float = 3.0  # degrees
    contrast: float = 0.15  # gain in [1 - contrast, 1 + contrast], about the view's mean
    brightness: float = 0.1  # offset, in normalised pixel units (ViT's mean/std 0.5 make [-1, 1])


DEFAULT = Augmentation()


def generator(seed: int, step: int) -> torch.Generator:
    """The generator for optimiser step `step` of a run seeded `seed` (the global RNG stays untouched)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step + 7)


def affine(n: int, gen: torch.Generator, how: Augmentation = DEFAULT) -> torch.Tensor:
    """(n, 2, 3) sampling matrices: a rotation by a few degrees and a zoom (positive diagonal: no
    mirror), then a shift."""
    def uniform(bound: float) -> torch.Tensor:
        return (torch.rand(n, generator=gen) * 2 - 1) * bound

    scale = 1.0 / (1.0 + uniform(how.zoom))  # sampling with 1/s shows the image s times larger
    angle = torch.deg2rad(uniform(how.rotate))
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    tx, ty = uniform(how.shift) * 2, uniform(how.shift) * 2  # grid units span 2 across the image
    return torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (n, 2, 3)


def augment(pixels: torch.Tensor, gen: torch.Generator, how: Augmentation = DEFAULT) -> torch.Tensor:
    """(B, V, 3, H, W) or (N, 3, H, W) preprocessed views → the same shape, each view re-drawn.

    Areas shifted in from outside the image take its edge's values (no black bars a model could read);
    values stay within each view's own range (whatever the processor's normalisation). Padded views
    (zeros) come back constant; they stay masked.
    """
    shape = pixels.shape
    views = pixels.reshape(-1, *shape[-3:]).float()  # (N, 3, H, W)
    n = views.shape[0]
    theta = affine(n, gen, how).to(views.device)
    grid = F.affine_grid(theta, list(views.shape), align_corners=False)
    moved = F.grid_sample(views, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gain = (1 + (torch.rand(n, generator=gen) * 2 - 1) * how.contrast).to(views.device)[:, None, None, None]
    offset = ((torch.rand(n, generator=gen) * 2 - 1) * how.brightness).to(views.device)[:, None, None, None]
    mean = moved.mean(dim=(1, 2, 3), keepdim=True)
    low, high = views.amin(dim=(1, 2, 3), keepdim=True), views.amax(dim=(1, 2, 3), keepdim=True)
    exposed = torch.minimum(torch.maximum((moved - mean) * gain + mean + offset, low), high)
    return exposed.reshape(shape).to(pixels.dtype)
