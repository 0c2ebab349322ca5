"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) for D's inputs.

D sees augmented real *and* augmented fake images; G's gradient flows back through the same
differentiable operations, so G still learns to draw un-augmented images. Augmenting only the
real images would teach G to draw the augmentations.

One step draws one set of parameters per batch position (:func:`draw`) and :func:`apply`s it
to the real batch and to the fake batch alike, so real image i and fake image i get the
identical transform: no difference between the two batches can come from the augmentation.
Policies (``train.augment``): ``color`` (brightness, saturation, contrast), ``translation``
(shift by up to 1/8 of the side, zero fill), ``cutout`` (a zeroed square of half the side).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

POLICIES = ("color", "translation", "cutout")
TRANSLATION = 1 / 8
CUTOUT = 1 / 2


@dataclass(frozen=True)
class Params:
    """The random parameters of one step's transform, one entry per batch position."""

    brightness: Tensor | None = None  # (B, 1, 1, 1) in [-0.5, 0.5)
    saturation: Tensor | None = None  # (B, 1, 1, 1) in [0, 2)
    contrast: Tensor | None = None  # (B, 1, 1, 1) in [0.5, 1.5)
    shift: Tensor | None = None  # (B, 2) integer pixel shifts (x, y)
    cutout: Tensor | None = None  # (B, 2) top-left corner of the zeroed square


def draw(
    policies: Sequence[str],
    batch: int,
    side: int,
    generator: torch.Generator,
    device: torch.device,
) -> Params:
    """Parameters for ``batch`` images of ``side`` pixels, from ``generator`` (the split's
    stream, so augmented training resumes bit for bit)."""

    def u(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device=device)

    kw: dict[str, Tensor] = {}
    if "color" in policies:
        kw["brightness"] = u(batch, 1, 1, 1) - 0.5
        kw["saturation"] = u(batch, 1, 1, 1) * 2
        kw["contrast"] = u(batch, 1, 1, 1) + 0.5
    if "translation" in policies:
        s = int(side * TRANSLATION + 0.5)
        kw["shift"] = torch.randint(-s, s + 1, (batch, 2), generator=generator, device=device)
    if "cutout" in policies:
        c = int(side * CUTOUT + 0.5)
        kw["cutout"] = torch.randint(
            0, side + 1 - c, (batch, 2), generator=generator, device=device
        )
    return Params(**kw)


def apply(x: Tensor, p: Params) -> Tensor:
    """``x`` (B, C, H, W) in [-1, 1] transformed by ``p`` (differentiably in ``x``)."""
    if p.brightness is not None:
        x = x + p.brightness * 2  # the [-0.5, 0.5) range of [0, 1] images, in [-1, 1] units
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * p.saturation + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * p.contrast + mean
    if p.shift is not None:
        x = _translate(x, p.shift)
    if p.cutout is not None:
        x = x * _cutout_mask(x, p.cutout)
    return x


def _translate(x: Tensor, shift: Tensor) -> Tensor:
    """Shift each image by whole pixels, filling with zeros (mid-grey in [-1, 1])."""
    b, _, h, w = x.shape
    s = int(h * TRANSLATION + 0.5)  # the largest shift draw() makes (no host sync to find it)
    padded = F.pad(x, (s, s, s, s))
    ys = torch.arange(h, device=x.device).view(1, h, 1) + s - shift[:, 1].view(b, 1, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w) + s - shift[:, 0].view(b, 1, 1)
    bi = torch.arange(b, device=x.device).view(b, 1, 1)
    # (B, H, W, C) gather of each output pixel's source pixel, back to (B, C, H, W)
    return padded.permute(0, 2, 3, 1)[bi, ys, xs].permute(0, 3, 1, 2)


def _cutout_mask(x: Tensor, corner: Tensor) -> Tensor:
    b, _, h, w = x.shape
    c = int(h * CUTOUT + 0.5)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    y0, x0 = corner[:, 1].view(b, 1, 1), corner[:, 0].view(b, 1, 1)
    inside = (ys >= y0) & (ys < y0 + c) & (xs >= x0) & (xs < x0 + c)
    return (~inside).to(x.dtype).unsqueeze(1)
