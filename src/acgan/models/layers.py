"""Layers the recipe options add to the paper's networks (and the CPU dropout).

- :class:`Dropout` / :func:`dropout_mask`: ``nn.Dropout`` with a cheaper CPU mask.
- :class:`PixelNorm`: ProGAN's pixelwise feature normalisation (G).
- :class:`MinibatchStd`: ProGAN's minibatch standard-deviation feature (D).
- :class:`GaussianNoise`: the AC-GAN paper's activation noise in D (train mode only).
- :func:`equalize_lr`: ProGAN's equalised learning rate, as a weight parametrization, so the
  module keeps its ordinary structure (``state_dict``, ``functional_call``) and only the scale
  applied at run time changes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize


def dropout_mask(
    shape: torch.Size | tuple[int, ...],
    p: float,
    like: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Dropout's multiplier: a Bernoulli(1-p) keep mask divided by 1-p, in ``like``'s dtype and
    device. PyTorch's CPU ``bernoulli_`` spends ~6 ns per element (its masks were ~20% of a
    training step here); this draws fewer random numbers for the same distribution:

    - p = 0.5 (the paper's): each bit of a uniform random byte is a fair coin, so one byte
      gives 8 elements' masks (~4x faster than ``torch.rand``);
    - any other p: ``U >= p`` for U ~ Uniform[0, 1), which has probability 1-p.
    """
    if p == 0.5:
        n = math.prod(shape)
        shifts = torch.arange(8, dtype=torch.uint8, device=like.device)
        byte = torch.randint(
            0, 256, ((n + 7) // 8, 1), dtype=torch.uint8, device=like.device, generator=generator
        )
        keep = ((byte >> shifts) & 1).view(-1)[:n].view(shape)
    else:
        keep = torch.rand(shape, device=like.device, generator=generator) >= p
    return keep.to(like.dtype).div_(1 - p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same p, same train/eval behaviour, same distribution) with the CPU mask
    from :func:`dropout_mask`; elsewhere the fused kernel of ``F.dropout``.

    ``mask``: a buffer (not saved) that is None unless a caller supplies the multiplier: the
    packed trainer passes each split's mask, drawn from that split's own stream, through
    ``torch.func.functional_call`` (a module under ``vmap`` cannot draw per-split streams).
    """

    mask: Tensor | None

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__(p, inplace)
        self.register_buffer("mask", None, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.mask is not None:
            return x * self.mask
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        return x * dropout_mask(x.shape, self.p, x)


class PixelNorm(nn.Module):
    """Each pixel's feature vector scaled to unit mean square (Karras et al. 2018, 4.2): keeps
    G's activations from escalating without BatchNorm's coupling of the samples in a batch."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)


class MinibatchStd(nn.Module):
    """Appends one feature map: the standard deviation of each feature over a group of
    ``group`` samples, averaged over features and pixels (Karras et al. 2018, 3). A D that
    sees how varied a batch is can penalise a G that makes every sample alike."""

    def __init__(self, group: int = 4) -> None:
        super().__init__()
        self.group = group

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        g = math.gcd(self.group, b)  # a group size that divides the batch
        y = x.view(g, b // g, c, h, w)
        std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (b // g,)
        feat = std.view(1, -1, 1, 1, 1).expand(g, -1, 1, h, w).reshape(b, 1, h, w)
        return torch.cat([x, feat], dim=1)


class GaussianNoise(nn.Module):
    """Adds N(0, std^2) to the activations in training mode (identity in eval mode)."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = float(std)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.std == 0:
            return x
        return x + torch.randn_like(x) * self.std


class _Scale(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, w: Tensor) -> Tensor:
        return w * self.scale


def fan_in(m: nn.Conv2d | nn.ConvTranspose2d | nn.Linear) -> float:
    """Inputs that contribute to one output: a transposed conv of stride s spreads each input
    over s*s outputs, so each output sees k*k*cin/(s*s) of them."""
    if isinstance(m, nn.Linear):
        return float(m.in_features)
    k = m.kernel_size[0] * m.kernel_size[1]
    if isinstance(m, nn.ConvTranspose2d):
        return m.in_channels * k / (m.stride[0] * m.stride[1])
    return float(m.in_channels * k)


def equalize_lr(module: nn.Module, gain: float = math.sqrt(2)) -> None:
    """Weights drawn from N(0, 1) and scaled by He's constant at every forward pass (Karras
    et al. 2018, 4.1): Adam's step then moves every layer at the same relative speed."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 1.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
            parametrize.register_parametrization(m, "weight", _Scale(gain / math.sqrt(fan_in(m))))
