"""MS-SSIM, the one implementation used by the split stage, the collapse monitor and evaluation.

The paper (Odena et al. 2017, section 4.2) measures a class's diversity as the mean MS-SSIM of
random pairs of its images: near 1 means the pairs look alike (a collapsed class), lower means
more diverse. Real-image figures (the split stage's reference) and generated-sample figures
(monitor, evaluation) are only comparable when computed with the same protocol, so every caller
goes through :func:`msssim_pairs` and the protocol name travels with the numbers.

Protocol per resolution (torchmetrics' ``multiscale_structural_similarity_index_measure``,
Gaussian window sigma 1.5, k1=0.01, k2=0.03, images scaled to [0, 1] with ``data_range=1``):

* 32 px:  3 scales, ``kernel_size=7`` — the default 5 scales cannot run on 32x32 (torchmetrics
  requires ``H // (scales - 1)**2 > kernel_size - 1``). The betas are the first three of Wang
  et al.'s five (0.0448, 0.2856, 0.3001) renormalised to sum to 1, so the coarse scales keep
  their relative weight.
* 64 px:  4 scales, ``kernel_size=7``, the first four betas renormalised.
* 128 px: 5 scales (the original betas), ``kernel_size=7``; ``kernel_size=11`` fails the same
  size check (128 // 16 = 8 is not > 10).

Note that with a Gaussian window torchmetrics derives the window's width from ``sigma``
(1.5 -> 11 taps, reflect-padded); ``kernel_size`` only enters its size check. We keep the
standard sigma so the figures stay comparable with the literature and name the protocol after
the arguments actually passed.

Per-scale contrast terms can be negative for anti-correlated images, and a negative number to a
fractional power is NaN; ``normalize="relu"`` clamps them at 0 so a pair scores 0, never NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

_DEFAULT_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_KERNEL = 7
_SCALES = {32: 3, 64: 4, 128: 5}

# The protocol name recorded next to every MS-SSIM figure (splits.json, metrics.json, MLflow).
PROTOCOL: dict[int, str] = {res: f"msssim-{n}scale-k{_KERNEL}" for res, n in _SCALES.items()}

# Pairs per torchmetrics call: bounds memory (torchmetrics stacks 5 maps per image) while
# keeping the work batched.
_CHUNK = 256


def _betas(scales: int) -> tuple[float, ...]:
    head = _DEFAULT_BETAS[:scales]
    total = sum(head)
    return tuple(b / total for b in head)


def protocol(resolution: int) -> str:
    """The protocol name for square images of ``resolution`` pixels."""
    if resolution not in PROTOCOL:
        raise ValueError(f"MS-SSIM is defined here for {sorted(PROTOCOL)} px, not {resolution}")
    return PROTOCOL[resolution]


def _to_unit(x: Tensor) -> Tensor:
    """uint8 [0, 255] or float [-1, 1] -> float32 [0, 1] (clamped: generator outputs can
    overshoot tanh's range after EMA averaging or in bf16)."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if not x.is_floating_point():
        raise ValueError(f"MS-SSIM expects uint8 or float images, got {x.dtype}")
    return x.float().add(1.0).mul_(0.5).clamp_(0.0, 1.0)


def msssim_pairs(a: Tensor, b: Tensor) -> Tensor:
    """Per-pair MS-SSIM of two batches (N, C, H, W), C in {1, 3}, uint8 or [-1, 1] floats.

    Returns a float32 tensor of N values in [0, 1] on the inputs' device.
    """
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(
            f"MS-SSIM needs two (N, C, H, W) batches of one shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    n, c, h, w = a.shape
    if h != w or c not in (1, 3):
        raise ValueError(f"MS-SSIM needs square 1- or 3-channel images, got {tuple(a.shape)}")
    scales = _SCALES.get(h)
    if scales is None:
        raise ValueError(f"MS-SSIM is defined here for {sorted(_SCALES)} px, not {h}")
    # imported here: torchmetrics brings matplotlib, scipy and pandas (~2 s), which the
    # commands that only import this module (register, ...) do not need
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    betas = _betas(scales)
    out = []
    for start in range(0, n, _CHUNK):
        x = _to_unit(a[start : start + _CHUNK])
        y = _to_unit(b[start : start + _CHUNK])
        val = multiscale_structural_similarity_index_measure(
            x,
            y,
            gaussian_kernel=True,
            sigma=1.5,
            kernel_size=_KERNEL,
            reduction="none",
            data_range=1.0,
            k1=0.01,
            k2=0.03,
            betas=betas,
            normalize="relu",
        )
        out.append(val.reshape(-1))
    if not out:
        return torch.empty(0, device=a.device)
    # Rounding can push an identical pair a hair above 1.
    return torch.cat(out).clamp_(0.0, 1.0)


def class_generator(seed: int, class_index: int) -> torch.Generator:
    """An independent CPU generator per (seed, class): adding or dropping classes does not
    change which pairs another class gets."""
    ss = np.random.SeedSequence([int(seed), int(class_index)])
    return torch.Generator().manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] >> 1))


def sample_pairs(n: int, n_pairs: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n_pairs`` distinct unordered pairs (i < j) of ``range(n)``; all pairs when fewer exist.

    Indices are int64 tensors on the generator's device; the draw depends only on ``n``,
    ``n_pairs`` and the generator.
    """
    if n < 2:
        raise ValueError(f"MS-SSIM pairs need at least 2 images, got {n}")
    dev = generator.device
    total = n * (n - 1) // 2
    k = min(n_pairs, total)
    if total <= max(4 * k, 200_000):
        # Few pairs in all: enumerate them and take a random subset without replacement.
        ij = torch.triu_indices(n, n, offset=1, device=dev)
        pick = torch.randperm(total, generator=generator, device=dev)[:k]
        return ij[0, pick], ij[1, pick]
    # Many pairs: rejection-sample, dropping repeats (rare when k << total).
    chosen: dict[int, None] = {}
    while len(chosen) < k:
        i = torch.randint(0, n, (2 * k,), generator=generator, device=dev)
        j = torch.randint(0, n, (2 * k,), generator=generator, device=dev)
        lo, hi = torch.minimum(i, j), torch.maximum(i, j)
        for key in (lo * n + hi)[lo != hi].tolist():
            chosen.setdefault(key, None)
            if len(chosen) == k:
                break
    keys = torch.tensor(list(chosen), dtype=torch.int64, device=dev)
    return keys // n, keys % n


def mean_pairwise_msssim(images: Tensor, n_pairs: int, generator: torch.Generator) -> float:
    """Mean MS-SSIM over ``n_pairs`` random distinct pairs of one class's images."""
    ia, ib = sample_pairs(images.shape[0], n_pairs, generator)
    ia, ib = ia.to(images.device), ib.to(images.device)
    return float(msssim_pairs(images[ia], images[ib]).mean())


def per_class_msssim(
    images: Tensor, labels: Tensor, classes: Sequence[int], n_pairs: int, seed: int
) -> dict[int, float]:
    """``{class: mean pairwise MS-SSIM}`` for each of ``classes`` (labels as in ``labels``)."""
    out: dict[int, float] = {}
    for c in classes:
        members = images[labels == c]
        if members.shape[0] < 2:
            raise ValueError(
                f"MS-SSIM of class {c} needs at least 2 images, got {members.shape[0]}"
            )
        out[int(c)] = mean_pairwise_msssim(members, n_pairs, class_generator(seed, int(c)))
    return out
