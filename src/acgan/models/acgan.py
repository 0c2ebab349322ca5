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

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from acgan.config import ModelConfig
from acgan.errors import ConfigError
from acgan.models.layers import (
    Dropout,
    GaussianNoise,
    MinibatchStd,
    PixelNorm,
    dropout_mask,
    equalize_lr,
)

__all__ = [
    "DArch",
    "Discriminator",
    "Dropout",
    "GArch",
    "Generator",
    "dropout_mask",
    "to_float",
    "to_uint8",
]


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
UPSAMPLES = ("transposed5", "transposed4", "nearest")
G_NORMS = ("batch", "pixel", "none")
D_NORMS = ("batch", "none")


@dataclass(frozen=True)
class GArch:
    """G's recipe options (``model.g_*``); the defaults are the paper's network.

    ``widths``: the Linear layer's maps then each upsampling block's (the paper at 32 px:
    384, 192, 96), None for the paper's. ``upsample``: the paper's 5x5 stride-2 transposed
    convolution (its kernel overlaps unevenly, which draws checkerboards), a 4x4 one (even
    overlap) or nearest-neighbour doubling + 3x3 convolution. ``norm``: BatchNorm (paper),
    ProGAN's pixelwise normalisation, or none. ``equalized_lr``: ProGAN's run-time He scaling.
    """

    widths: tuple[int, ...] | None = None
    upsample: str = "transposed5"
    norm: str = "batch"
    equalized_lr: bool = False

    @classmethod
    def from_config(cls, m: ModelConfig) -> GArch:
        widths = tuple(m.g_widths) if m.g_widths is not None else None
        return cls(widths, m.g_upsample, m.g_norm, m.equalized_lr)

    @classmethod
    def from_record(cls, d: dict[str, Any] | None) -> GArch:
        """From :meth:`to_record`'s dict; None (a generator file from before the recipe
        options) is the paper's network."""
        d = dict(d or {})
        if d.get("widths") is not None:
            d["widths"] = tuple(int(w) for w in d["widths"])
        return cls(**d)

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def spec(self, resolution: int) -> GSpec:
        paper = G_SPECS[resolution]
        if self.widths is None:
            return paper
        if len(self.widths) != 1 + len(paper.widths):
            raise ConfigError(
                f"model.g_widths: {list(self.widths)} has {len(self.widths)} entries; "
                f"{resolution} px needs {1 + len(paper.widths)} (the Linear layer's maps, "
                f"then one per upsampling block), e.g. {[paper.base, *paper.widths]}"
            )
        return GSpec(self.widths[0], paper.start, tuple(self.widths[1:]))


@dataclass(frozen=True)
class DArch:
    """D's recipe options (``model.d_*``); the defaults are the paper's network.

    ``widths``: the six convolutions' maps (None: 16 ... 512). ``norm``: BatchNorm on all but
    the first layer (paper) or none (the usual pairing with spectral normalisation).
    ``spectral_norm``: every conv and linear layer's weight divided by its largest singular
    value (Miyato et al. 2018). ``dropout``: after each layer (paper 0.5). ``mbstd``: a
    minibatch standard-deviation map before the heads. ``noise_std``: Gaussian noise added to
    each layer's activations while training (the paper's grid: 0, 0.1, 0.2).
    """

    widths: tuple[int, ...] | None = None
    norm: str = "batch"
    spectral_norm: bool = False
    dropout: float = D_DROPOUT
    mbstd: bool = False
    noise_std: float = 0.0
    equalized_lr: bool = False

    @classmethod
    def from_config(cls, m: ModelConfig) -> DArch:
        widths = tuple(m.d_widths) if m.d_widths is not None else None
        return cls(
            widths, m.d_norm, m.d_spectral_norm, m.d_dropout, m.d_mbstd, m.d_noise_std,
            m.equalized_lr,
        )  # fmt: skip

    @property
    def conv_widths(self) -> tuple[int, ...]:
        if self.widths is None:
            return D_WIDTHS
        if len(self.widths) != len(D_STRIDES):
            raise ConfigError(
                f"model.d_widths: {list(self.widths)} has {len(self.widths)} entries; "
                f"D has {len(D_STRIDES)} convolutions, e.g. {list(D_WIDTHS)}"
            )
        return tuple(self.widths)


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


def _up(cin: int, cout: int, mode: str, bias: bool) -> list[nn.Module]:
    """One doubling of the image side."""
    if mode == "transposed5":  # padding 2 + output_padding 1: exactly twice the input size
        return [nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1, bias=bias)]
    if mode == "transposed4":
        return [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=bias)]
    return [
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(cin, cout, 3, padding=1, bias=bias),
    ]


class Generator(nn.Module):
    def __init__(
        self,
        num_classes: int,
        latent_dim: int = 100,
        resolution: int = 32,
        channels: int = 3,
        arch: GArch | None = None,
    ) -> None:
        super().__init__()
        _check_resolution(resolution)
        arch = arch or GArch()
        spec = arch.spec(resolution)
        self.num_classes, self.latent_dim = num_classes, latent_dim
        self.resolution, self.channels, self.spec, self.arch = resolution, channels, spec, arch
        self.fc = nn.Linear(num_classes + latent_dim, spec.base * spec.start * spec.start)
        self.fc_norm = PixelNorm() if arch.norm == "pixel" else nn.Identity()
        layers: list[nn.Module] = []
        cin = spec.base
        for w in spec.widths:
            # A BatchNorm right after the convolution makes its bias redundant.
            layers += _up(cin, w, arch.upsample, bias=arch.norm != "batch")
            if arch.norm == "batch":
                layers.append(nn.BatchNorm2d(w))
            layers.append(nn.ReLU(inplace=True))
            if arch.norm == "pixel":
                layers.append(PixelNorm())
            cin = w
        layers += [*_up(cin, channels, arch.upsample, bias=True), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_weights(self)
        if arch.equalized_lr:
            equalize_lr(self)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        """``z``: (B, latent_dim) noise; ``labels``: (B,) class indices within the split."""
        onehot = F.one_hot(labels, self.num_classes).to(z.dtype)
        h = self.fc_norm(F.relu(self.fc(torch.cat([onehot, z], dim=1))))
        h = h.view(-1, self.spec.base, self.spec.start, self.spec.start)
        return self.net(h)


class Discriminator(nn.Module):
    def __init__(
        self,
        num_classes: int,
        resolution: int = 32,
        channels: int = 3,
        dropout: float | None = None,
        arch: DArch | None = None,
    ) -> None:
        super().__init__()
        _check_resolution(resolution)
        arch = arch or DArch()
        if dropout is not None:
            arch = dataclasses.replace(arch, dropout=dropout)
        self.num_classes, self.resolution, self.channels = num_classes, resolution, channels
        self.arch = arch
        widths = arch.conv_widths
        layers: list[nn.Module] = []
        cin = channels
        for i, (w, s) in enumerate(zip(widths, D_STRIDES, strict=True)):
            norm = i > 0 and arch.norm == "batch"
            layers.append(nn.Conv2d(cin, w, 3, stride=s, padding=1, bias=not norm))
            if norm:
                layers.append(nn.BatchNorm2d(w))
            layers.append(nn.LeakyReLU(LEAK, inplace=True))
            if arch.noise_std > 0:
                layers.append(GaussianNoise(arch.noise_std))
            layers.append(Dropout(arch.dropout))
            cin = w
        if arch.mbstd:
            layers.append(MinibatchStd())
            cin += 1
        self.features = nn.Sequential(*layers)
        side = resolution // 8  # three stride-2 layers
        self.source = nn.Linear(cin * side * side, 1)
        self.classes = nn.Linear(cin * side * side, num_classes)
        init_weights(self)
        if arch.equalized_lr:
            equalize_lr(self)
        if arch.spectral_norm:
            for m in self.modules():
                if isinstance(m, nn.Conv2d | nn.Linear):
                    spectral_norm(m)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(source_logit (B,), class_logits (B, num_classes))``."""
        h = self.features(x).flatten(1)
        return self.source(h).squeeze(1), self.classes(h)


def to_uint8(images: Tensor) -> Tensor:
    """G's tanh output in [-1, 1] -> uint8 in [0, 255] (same layout)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_float(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 [0, 255] -> float in [-1, 1], G's output range."""
    return images.to(dtype).div_(127.5).sub_(1.0)
