"""Sampling helpers shared by the trainer (grids), evaluation and the ensemble."""

from __future__ import annotations

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


def class_grid(G: Generator, per_class: int = 8, seed: int = 0) -> np.ndarray:
    """One row per class of the split, ``per_class`` samples each, same z in every row."""
    device = next(G.parameters()).device
    k = G.num_classes
    z = latents(per_class, G.latent_dim, seed, device).repeat(k, 1)
    labels = torch.arange(k, device=device).repeat_interleave(per_class)
    return grid_image(generate(G, labels, z), nrow=per_class)
