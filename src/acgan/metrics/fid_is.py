"""FID, intra-class FID and the Inception Score, computed by torchmetrics in the judge's space.

torchmetrics' ``FrechetInceptionDistance`` and ``InceptionScore`` take any ``nn.Module`` as
their feature extractor, and :class:`acgan.metrics.judge.Judge` is one (uint8 images in,
features out). The evaluation embeds every image once and reuses the features for the overall
FID, each class's FID and the accuracy figures, so here the extractor is :class:`Precomputed`
(the identity on judge features): running the judge again inside each metric object would
triple the cost for the same numbers.

* FID: squared Frechet distance between Gaussians fitted to the two feature sets
  (torchmetrics accumulates the moments in float64).
* Intra-class FID (Miyato & Koyama 2018): the FID of each class's samples against that class's
  real images; the evaluation reports each and their mean.
* Inception Score: exp(E_x KL(p(y|x) || p(y))) over the judge's logits, averaged over the
  standard 10 splits of the samples (Salimans et al. 2016). The split assignment is a random
  permutation that we seed, so the figure is reproducible.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

IS_SPLITS = 10


class Precomputed(nn.Module):
    """The identity, announcing ``num_features``: hands already-extracted judge features (or
    logits) to a torchmetrics metric as if it had extracted them itself."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: Tensor) -> Tensor:
        return x


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """FID between two feature sets (N, D) and (M, D), N, M >= 2."""
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"FID needs (N, D) feature sets, got {tuple(real.shape)}, {fake.shape}")
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID needs >= 2 images per set, got {len(real)} and {len(fake)}")
    # imported here (as below): torchmetrics brings matplotlib, scipy and pandas
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=Precomputed(real.shape[1]))
    metric.update(real.float(), real=True)
    metric.update(fake.float(), real=False)
    # Identical sets give 0 up to the eigen-solver's rounding, which can dip just below 0.
    return max(0.0, float(metric.compute()))


def intra_fid(
    real: Tensor, real_labels: Tensor, fake: Tensor, fake_labels: Tensor, classes: list[int]
) -> dict[int, float]:
    """``{class: FID of that class's samples against that class's real images}``."""
    return {c: frechet_distance(real[real_labels == c], fake[fake_labels == c]) for c in classes}


def inception_score(logits: Tensor, splits: int = IS_SPLITS, seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation over ``splits`` groups (fewer when there are fewer images)."""
    if logits.ndim != 2 or len(logits) < 1:
        raise ValueError(f"the Inception Score needs (N, K) logits, got {tuple(logits.shape)}")
    from torchmetrics.image.inception import InceptionScore

    splits = max(1, min(splits, len(logits)))
    with warnings.catch_warnings():
        # "will save all extracted features in buffer" (that is what we want: N x K floats),
        # and the std of a single split (reported as 0 below).
        warnings.simplefilter("ignore", UserWarning)
        metric = InceptionScore(feature=Precomputed(logits.shape[1]), splits=splits)
        metric.update(logits.double())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))  # compute() permutes the rows with the global RNG
            mean, std = metric.compute()
    return float(mean), float(std) if splits > 1 else 0.0
