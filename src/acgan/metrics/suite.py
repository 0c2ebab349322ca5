"""The evaluation's figures, one registered metric each (``@register_metric``).

A metric is a function of the evaluation's images (:class:`EvalData`) returning
:class:`Figures`: overall numbers, per-class numbers, nested tables and plot data. Its
registered *name* says what it measures and how (like stylegan2-ada's ``fid50k_full``), and its
*protocol* line, recorded next to the numbers in ``reports/eval/config.json``, spells out the
details a reader needs to compare two runs (judge, sample counts, MS-SSIM scales, pairs).

The evaluation runs every registered metric (:func:`compute`); all of them embed the images
with the judge once, through :meth:`EvalData.embedding`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from acgan.metrics import fid_is, msssim
from acgan.metrics.judge import Embedding, Judge, accuracy
from acgan.metrics.memorisation import nearest_l1

# Pairs of (sample, nearest training image) per class shown in the memorisation grid.
MEMO_GRID_PAIRS = 4
# Smallest side the resolution-discriminability figure shrinks images to.
MIN_SIDE = 4
# Samples per class re-judged at each reduced resolution: the curve is an overall accuracy,
# and 200 per class (2,000 for ten classes) pins it to about +-1%, at a fifth of the cost of
# re-judging 1,000 per class three times.
RESOLUTION_PER_CLASS = 200


@dataclass
class EvalData:
    """Real images of the ensemble's classes and the ensemble's samples (uint8, N C H W)."""

    judge: Judge
    classes: list[int]  # dataset-level class indices in the ensemble
    class_names: dict[int, str]
    real_images: Tensor
    real_labels: Tensor
    holdout: Tensor  # bool per real row: held out from the judge's training
    fake_images: Tensor
    fake_labels: Tensor
    split_of: dict[int, int]  # class -> the split (generator) that serves it
    msssim_pairs: int = 100
    memorisation_samples: int = 100
    seed: int = 0
    batch_size: int = 500
    progress: bool = False
    _cache: dict[str, Embedding] = field(default_factory=dict, repr=False)

    @property
    def resolution(self) -> int:
        return int(self.real_images.shape[-1])

    def embedding(self, which: str) -> Embedding:
        """The judge's view of ``"real"`` or ``"fake"`` images, computed once."""
        if which not in self._cache:
            images = self.real_images if which == "real" else self.fake_images
            self._cache[which] = self.judge.embed(
                images, self.batch_size, self.progress, desc=f"judge {which}"
            )
        return self._cache[which]


@dataclass
class Figures:
    overall: dict[str, float] = field(default_factory=dict)
    per_class: dict[int, dict[str, float]] = field(default_factory=dict)
    nested: dict[str, Any] = field(default_factory=dict)  # written to metrics.json as is
    tables: dict[str, Any] = field(default_factory=dict)  # plot data, grids (not metrics)

    def merge(self, other: Figures) -> None:
        self.overall.update(other.overall)
        for c, figs in other.per_class.items():
            self.per_class.setdefault(c, {}).update(figs)
        self.nested.update(other.nested)
        self.tables.update(other.tables)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    fn: Callable[[EvalData], Figures]
    protocol: Callable[[EvalData], str]


METRICS: dict[str, MetricSpec] = {}


def register_metric(
    name: str, protocol: Callable[[EvalData], str]
) -> Callable[[Callable[[EvalData], Figures]], Callable[[EvalData], Figures]]:
    """Register ``fn`` under ``name``; ``protocol(data)`` describes how it was measured."""

    def deco(fn: Callable[[EvalData], Figures]) -> Callable[[EvalData], Figures]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        METRICS[name] = MetricSpec(name, fn, protocol)
        return fn

    return deco


def compute(
    data: EvalData,
    names: Sequence[str] | None = None,
    on_metric: Callable[[str], None] = lambda name: None,
    timings: dict[str, float] | None = None,
) -> tuple[Figures, dict[str, str]]:
    """Run the named metrics (all when None); returns the merged figures and protocols.
    ``on_metric(name)`` is called after each metric (progress); ``timings``, when given,
    receives each metric's wall time in seconds."""
    out, protocols = Figures(), {}
    for name in names or list(METRICS):
        if name not in METRICS:
            raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
        spec = METRICS[name]
        t0 = time.perf_counter()
        out.merge(spec.fn(data))
        protocols[name] = spec.protocol(data)
        if timings is not None:
            timings[name] = time.perf_counter() - t0
        on_metric(name)
    return out, protocols


def _per_class_mean(per_class: dict[int, dict[str, float]], key: str) -> float:
    return float(sum(f[key] for f in per_class.values()) / max(1, len(per_class)))


# ------------------------------------------------------------------------------- the metrics


@register_metric(
    "acc_judge_top1",
    lambda d: (
        f"top-1 accuracy of the {d.judge.kind} judge over all dataset classes; samples: "
        f"{len(d.fake_labels) // max(1, len(d.classes))}/class; real: the judge's held-out images"
    ),
)
def _accuracy(d: EvalData) -> Figures:
    fake, real = d.embedding("fake").logits, d.embedding("real").logits
    f = Figures()
    for c in d.classes:
        fm, rm = d.fake_labels == c, (d.real_labels == c) & d.holdout
        f.per_class[c] = {
            "judge_accuracy": accuracy(fake[fm], d.fake_labels[fm]),
            "real_judge_accuracy": accuracy(real[rm], d.real_labels[rm]),
        }
    acc = accuracy(fake, d.fake_labels)
    real_acc = accuracy(real[d.holdout], d.real_labels[d.holdout])
    chance = 1.0 / len(d.judge.class_names)
    f.overall["judge_accuracy"] = acc
    f.overall["real_judge_accuracy"] = real_acc
    f.overall["chance_accuracy"] = chance
    f.overall["judge_skill"] = skill(acc, real_acc, chance)
    return f


def skill(accuracy: float, real_accuracy: float, chance: float) -> float:
    """The samples' judge accuracy as a fraction of the judge's own skill above chance on
    held-out real images: 0 at chance, 1 as recognisable as real images (can exceed 1).
    A fixed accuracy threshold means different things on different data: 0.3 is noise for a
    judge that reads 44% of real images right and a failure for one that reads 99%."""
    if real_accuracy <= chance:
        return 0.0
    return (accuracy - chance) / (real_accuracy - chance)


@register_metric(
    "diversity_msssim",
    lambda d: (
        f"{msssim.protocol(d.resolution)}, {d.msssim_pairs} random pairs per class "
        "(same pairs for samples and real); diverse: sample MS-SSIM <= the least diverse real class"
    ),
)
def _diversity(d: EvalData) -> Figures:
    fake = msssim.per_class_msssim(d.fake_images, d.fake_labels, d.classes, d.msssim_pairs, d.seed)
    real = msssim.per_class_msssim(d.real_images, d.real_labels, d.classes, d.msssim_pairs, d.seed)
    threshold = max(real.values())  # the paper: the least diverse real class
    f = Figures()
    for c in d.classes:
        f.per_class[c] = {
            "msssim": fake[c],
            "msssim_real": real[c],
            "diverse": float(fake[c] <= threshold),
        }
    f.overall = {
        "msssim_mean": _per_class_mean(f.per_class, "msssim"),
        "msssim_real_mean": _per_class_mean(f.per_class, "msssim_real"),
        "msssim_real_max": threshold,
        "diverse_fraction": _per_class_mean(f.per_class, "diverse"),
    }
    return f


@register_metric(
    "is10_judge",
    lambda d: (
        f"Inception Score of the {d.judge.kind} judge's "
        f"{'ImageNet ' if d.judge.kind != 'cnn' else ''}logits, {fid_is.IS_SPLITS} splits"
    ),
)
def _inception_score(d: EvalData) -> Figures:
    mean, std = fid_is.inception_score(d.embedding("fake").score_logits, seed=d.seed)
    real, _ = fid_is.inception_score(d.embedding("real").score_logits, seed=d.seed)
    return Figures(
        overall={"inception_score": mean, "inception_score_std": std, "inception_score_real": real}
    )


@register_metric(
    "fid_judge",
    lambda d: (
        f"FID in the {d.judge.kind} judge's {d.judge.num_features}-d feature space: all "
        "samples vs all real images of the ensemble's classes; intra-FID: per class, then mean; "
        "floor: two disjoint random sets of real images, each as large as the sample set "
        "(or half the real images)"
    ),
)
def _fid(d: EvalData) -> Figures:
    real, fake = d.embedding("real").features, d.embedding("fake").features
    per = fid_is.intra_fid(real, d.real_labels, fake, d.fake_labels, d.classes)
    f = Figures(per_class={c: {"intra_fid": v} for c, v in per.items()})
    fid, floor = fid_is.frechet_distance(real, fake), real_fid_floor(real, len(fake), d.seed)
    f.overall = {
        "fid": fid,
        "intra_fid_mean": _per_class_mean(f.per_class, "intra_fid"),
        "fid_real_floor": floor,
        "fid_ratio": fid / floor if floor > 0 else float("inf"),
    }
    return f


def real_fid_floor(real: Tensor, n: int, seed: int) -> float:
    """FID between two disjoint random sets of real images' features: what sampling noise
    alone gives at this sample size, the floor a perfect generator would sit on."""
    m = max(2, min(n, len(real) // 2))
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(int(seed)))
    return fid_is.frechet_distance(real[order[:m]], real[order[m : 2 * m]])


def degrade(images: Tensor, side: int) -> Tensor:
    """Shrink uint8 images to ``side`` px (area average) and resize back (bilinear)."""
    res = images.shape[-1]
    if side >= res:
        return images
    small = F.interpolate(images.float(), size=(side, side), mode="area")
    back = F.interpolate(small, size=(res, res), mode="bilinear", align_corners=False)
    return back.round_().clamp_(0, 255).to(torch.uint8)


def _sides(resolution: int) -> list[int]:
    sides, s = [], resolution
    while s >= MIN_SIDE:
        sides.append(s)
        s //= 2
    return sides


def _first_per_class(labels: Tensor, k: int) -> Tensor:
    """Mask of the first ``k`` rows of each label."""
    keep = torch.zeros(len(labels), dtype=torch.bool)
    for c in torch.unique(labels).tolist():
        keep[(labels == c).nonzero().flatten()[:k]] = True
    return keep


@register_metric(
    "resolution_acc_judge",
    lambda d: (
        f"judge top-1 accuracy after shrinking to {_sides(d.resolution)} px (area) and "
        f"resizing back (bilinear); samples: the first {RESOLUTION_PER_CLASS}/class; real: "
        "held-out images (the paper's Figure 2)"
    ),
)
def _resolution(d: EvalData) -> Figures:
    real_x, real_y = d.real_images[d.holdout], d.real_labels[d.holdout]
    keep = _first_per_class(d.fake_labels, RESOLUTION_PER_CLASS)
    fake_x, fake_y = d.fake_images[keep], d.fake_labels[keep]
    rows, nested = [], {}
    for side in _sides(d.resolution):
        if side == d.resolution:  # full size: the embeddings already computed
            fake_acc = accuracy(d.embedding("fake").logits[keep], fake_y)
            real_acc = accuracy(d.embedding("real").logits[d.holdout], real_y)
        else:
            fake = d.judge.embed(degrade(fake_x, side), d.batch_size).logits
            real = d.judge.embed(degrade(real_x, side), d.batch_size).logits
            fake_acc, real_acc = accuracy(fake, fake_y), accuracy(real, real_y)
        rows.append({"resolution": side, "real_accuracy": real_acc, "sample_accuracy": fake_acc})
        nested[str(side)] = {"real_accuracy": real_acc, "sample_accuracy": fake_acc}
    return Figures(nested={"resolution": nested}, tables={"resolution": rows})


@register_metric(
    "memorisation_l1",
    lambda d: (
        f"exact nearest training image by pixel L1 (mean |difference| per pixel value, "
        f"0..255) for {d.memorisation_samples} samples/class, searched among the real images of "
        "the sample's split (its generator's training data); reference: held-out real images "
        "against the other training images"
    ),
)
def _memorisation(d: EvalData) -> Figures:
    f = Figures()
    sample_d, real_d, pairs = [], [], []
    lookup = torch.full((max(d.split_of) + 1,), -1, dtype=torch.long)
    for c, sid in d.split_of.items():
        lookup[c] = sid
    real_split = lookup[d.real_labels]
    for c in d.classes:
        bank_rows = (real_split == d.split_of[c]).nonzero().flatten()
        bank = d.real_images[bank_rows]
        q = d.fake_images[d.fake_labels == c][: d.memorisation_samples]
        dist, idx = nearest_l1(q, bank)
        # Reference: held-out real images of c against the rest of the bank (not themselves).
        ref_rows = ((d.real_labels == c) & d.holdout).nonzero().flatten()[: d.memorisation_samples]
        pos = torch.searchsorted(bank_rows, ref_rows)
        rdist = nearest_l1(d.real_images[ref_rows], bank, exclude=pos)[0] if len(bank) > 1 else None
        f.per_class[c] = {"nn_l1_mean": float(dist.mean()), "nn_l1_min": float(dist.min())}
        if rdist is not None and len(rdist):
            f.per_class[c]["nn_l1_real_mean"] = float(rdist.mean())
            real_d.append(rdist)
        sample_d.append(dist)
        closest = dist.argsort()[:MEMO_GRID_PAIRS]
        pairs.append((c, q[closest], bank[idx[closest]], dist[closest]))
    all_s = torch.cat(sample_d)
    all_r = torch.cat(real_d) if real_d else torch.empty(0)
    f.overall = {"nn_l1_mean": float(all_s.mean()), "nn_l1_min": float(all_s.min())}
    if len(all_r):
        f.overall["nn_l1_real_mean"] = float(all_r.mean())
        # Well below 1: samples sit closer to training images than real images do.
        f.overall["nn_l1_ratio"] = float(all_s.mean() / all_r.mean().clamp_min(1e-9))
    f.tables["nn_distances"] = {"samples": all_s.tolist(), "real": all_r.tolist()}
    f.tables["nn_pairs"] = pairs
    return f
