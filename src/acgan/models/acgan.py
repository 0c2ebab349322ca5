"""The AC-GAN of Odena, Olah & Shlens (ICML 2017), appendix Tables 1-2, per resolution.

Generator G(c, z): input = one-hot(class within the split) ++ noise (10 + 100 = 110 dims in the
paper) -> Linear + ReLU -> reshape -> 5x5 stride-2 transposed convolutions with BatchNorm and
ReLU, doubling the size each time -> a last 5x5 stride-2 transposed convolution -> tanh.

Discriminator D(x): six 3x3 convolutions with 16, 32, 64, 128, 256, 512 maps, stride 2 on
alternate layers (2, 1, 2, 1, 2, 1), BatchNorm on all but the first, LeakyReLU(0.2) and dropout
0.5 after each; then two linear heads on the flattened features: the source logit (real/fake,
sigmoid) and the class logits (softmax). Both heads return *logits*; the losses apply
BCE-with-logits and cross-entropy, never a softmax before cross-entropy.

All conv / linear weights ~ N(0, 0.02), biases 0 (the paper's initialisation); BatchNorm
scales ~ N(1, 0.02) as in DCGAN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from acgan.errors import ConfigError


@dataclass(frozen=True)
class GSpec:
    """Linear output ``base`` maps at ``start`` x ``start``, then transposed convs to ``widths``."""

    base: int
    start: int
    widths: tuple[int, ...]


# 32 px is the paper's CIFAR-10 model (Table 2): Linear 384, tconv 192, 96, 3.
# 128 px is the paper's ImageNet model (Table 1): Linear 768, tconv 384, 256, 192, 3.
# 64 px keeps the ImageNet widths, starting from 4x4 so four doublings reach 64.
G_SPECS: dict[int, GSpec] = {
    32: GSpec(base=384, start=4, widths=(192, 96)),
    64: GSpec(base=768, start=4, widths=(384, 256, 192)),
    128: GSpec(base=768, start=8, widths=(384, 256, 192)),
}
D_WIDTHS = (16, 32, 64, 128, 256, 512)
D_STRIDES = (2, 1, 2, 1, 2, 1)
LEAK = 0.2
D_DROPOUT = 0.5


def _check_resolution(resolution: int) -> None:
    if resolution not in G_SPECS:
        raise ConfigError(
            f"data.resolution: {resolution} has no AC-GAN variant; use one of "
            f"{', '.join(map(str, G_SPECS))}"
        )


def init_weights(module: nn.Module) -> None:
    """The paper's N(0, 0.02) weights and zero biases (BatchNorm scale ~ N(1, 0.02))."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


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
    from :func:`dropout_mask`; elsewhere the fused kernel of ``F.dropout``."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        return x * dropout_mask(x.shape, self.p, x)


def _up(cin: int, cout: int) -> nn.ConvTranspose2d:
    # kernel 5, stride 2: padding 2 + output_padding 1 gives exactly twice the input size.
    return nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1, bias=False)


class Generator(nn.Module):
    def __init__(
        self, num_classes: int, latent_dim: int = 100, resolution: int = 32, channels: int = 3
    ) -> None:
        super().__init__()
        _check_resolution(resolution)
        spec = G_SPECS[resolution]
        self.num_classes, self.latent_dim = num_classes, latent_dim
        self.resolution, self.channels, self.spec = resolution, channels, spec
        self.fc = nn.Linear(num_classes + latent_dim, spec.base * spec.start * spec.start)
        layers: list[nn.Module] = []
        cin = spec.base
        for w in spec.widths:
            layers += [_up(cin, w), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            cin = w
        last = nn.ConvTranspose2d(cin, channels, 5, stride=2, padding=2, output_padding=1)
        layers += [last, nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        """``z``: (B, latent_dim) noise; ``labels``: (B,) class indices within the split."""
        onehot = F.one_hot(labels, self.num_classes).to(z.dtype)
        h = F.relu(self.fc(torch.cat([onehot, z], dim=1)))
        h = h.view(-1, self.spec.base, self.spec.start, self.spec.start)
        return self.net(h)


class Discriminator(nn.Module):
    def __init__(
        self, num_classes: int, resolution: int = 32, channels: int = 3, dropout: float = D_DROPOUT
    ) -> None:
        super().__init__()
        _check_resolution(resolution)
        self.num_classes, self.resolution, self.channels = num_classes, resolution, channels
        layers: list[nn.Module] = []
        cin = channels
        for i, (w, s) in enumerate(zip(D_WIDTHS, D_STRIDES, strict=True)):
            layers.append(nn.Conv2d(cin, w, 3, stride=s, padding=1, bias=(i == 0)))
            if i > 0:
                layers.append(nn.BatchNorm2d(w))
            layers += [nn.LeakyReLU(LEAK, inplace=True), Dropout(dropout)]
            cin = w
        self.features = nn.Sequential(*layers)
        side = resolution // 8  # three stride-2 layers
        self.source = nn.Linear(D_WIDTHS[-1] * side * side, 1)
        self.classes = nn.Linear(D_WIDTHS[-1] * side * side, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(source_logit (B,), class_logits (B, num_classes))``."""
        h = self.features(x).flatten(1)
        return self.source(h).squeeze(1), self.classes(h)


def d_loss(
    src_real: Tensor,
    cls_real: Tensor,
    y_real: Tensor,
    src_fake: Tensor,
    cls_fake: Tensor,
    y_fake: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """D maximises L_S + L_C: returns ``(loss, L_S-part, L_C-part)`` as minimisation targets.

    L_S = log P(S=real | real) + log P(S=fake | fake); L_C = log P(C=c | real) + log P(C=c | fake).
    """
    ones, zeros = torch.ones_like(src_real), torch.zeros_like(src_fake)
    ls = F.binary_cross_entropy_with_logits(src_real, ones) + F.binary_cross_entropy_with_logits(
        src_fake, zeros
    )
    lc = F.cross_entropy(cls_real, y_real) + F.cross_entropy(cls_fake, y_fake)
    return ls + lc, ls, lc


def g_loss(src_fake: Tensor, cls_fake: Tensor, y_fake: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """G maximises L_C - L_S: returns ``(loss, source-part, class-part)`` to minimise.

    Maximising -L_S on fakes uses the non-saturating form (fakes labelled real), as the paper's
    reference implementation and every DCGAN-style trainer do.
    """
    ls = F.binary_cross_entropy_with_logits(src_fake, torch.ones_like(src_fake))
    lc = F.cross_entropy(cls_fake, y_fake)
    return ls + lc, ls, lc


def to_uint8(images: Tensor) -> Tensor:
    """G's tanh output in [-1, 1] -> uint8 in [0, 255] (same layout)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_float(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 [0, 255] -> float in [-1, 1], G's output range."""
    return images.to(dtype).div_(127.5).sub_(1.0)
