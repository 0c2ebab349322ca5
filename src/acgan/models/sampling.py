"""Sampling helpers shared by the trainer (grids), evaluation and the ensemble."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.utils import make_grid

from acgan.models.acgan import Generator, to_uint8


def latents(n: int, latent_dim: int, seed: int, device: torch.device | str = "cpu") -> Tensor:
    """Noise drawn on the CPU from ``seed`` then moved: identical on every device."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(n, latent_dim, generator=g).to(device)


@torch.no_grad()
def generate(G: Generator, labels: Tensor, z: Tensor, batch_size: int = 1000) -> Tensor:
    """uint8 images (N, C, H, W) for split-local ``labels``; G is put in eval mode."""
    was_training = G.training
    G.eval()
    out = []
    for i in range(0, len(labels), batch_size):
        out.append(to_uint8(G(z[i : i + batch_size], labels[i : i + batch_size])).cpu())
    G.train(was_training)
    return (
        torch.cat(out)
        if out
        else torch.empty(0, G.channels, G.resolution, G.resolution, dtype=torch.uint8)
    )


def grid_image(images: Tensor, nrow: int, padding: int = 2) -> np.ndarray:
    """uint8 (N, C, H, W) -> one HxWxC uint8 grid (grayscale expanded to RGB)."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=255)
    return grid.permute(1, 2, 0).contiguous().numpy()


# The smallest cell of a picture meant for people: 32 px samples are upscaled (nearest) 2x.
MIN_CELL = 64


def labelled_grid(
    images: Tensor,
    nrow: int,
    row_labels: Sequence[str] | None = None,
    min_cell: int = MIN_CELL,
    padding: int = 2,
) -> np.ndarray:
    """:func:`grid_image` for people: each image upscaled (nearest, whole factors, so pixels
    stay sharp) to at least ``min_cell`` px, and each row's label written on its left."""
    scale = max(1, math.ceil(min_cell / max(1, images.shape[-1])))
    if scale > 1:
        images = images.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    grid = grid_image(images, nrow=nrow, padding=padding)
    if not row_labels:
        return grid
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=14)
    margin = 8
    width = int(max(font.getlength(str(t)) for t in row_labels)) + 2 * margin
    canvas = Image.new("RGB", (grid.shape[1] + width, grid.shape[0]), "white")
    canvas.paste(Image.fromarray(grid), (width, 0))
    draw = ImageDraw.Draw(canvas)
    step = images.shape[-2] + padding  # make_grid: padding, then a cell and padding per row
    for i, text in enumerate(row_labels):
        y = padding + i * step + images.shape[-2] / 2
        draw.text((width - margin, y), str(text), fill="black", font=font, anchor="rm")
    return np.asarray(canvas)


def class_grid(
    G: Generator, per_class: int = 8, seed: int = 0, names: Sequence[str] | None = None
) -> np.ndarray:
    """One row per class of the split (labelled with ``names``), ``per_class`` samples each,
    the same z in every row."""
    device = next(G.parameters()).device
    k = G.num_classes
    z = latents(per_class, G.latent_dim, seed, device).repeat(k, 1)
    labels = torch.arange(k, device=device).repeat_interleave(per_class)
    return labelled_grid(generate(G, labels, z), nrow=per_class, row_labels=names)
