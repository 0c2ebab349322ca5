"""The collapse detector: the measurement (per-class MS-SSIM of samples) and the rule.

**Measurement.** For each class of a split, ``2 * pairs`` samples are generated from *fixed*
latent codes (the same codes at every check of a run, and again in the monitor stage), and the
mean MS-SSIM of the ``pairs`` disjoint pairs ``(z_i, z_{pairs+i})`` is the class's figure. Fixed
codes make consecutive checks differ only by the weights, not by the draw. The protocol is
:func:`acgan.metrics.msssim.msssim_pairs` (3 scales, kernel 7 at 32 px), the one the split
stage used for the real-image reference, so the two numbers are comparable.

**Rule.** Each class is judged against *its own* real reference: its threshold is
``monitor.threshold`` when set, else the class's real-image MS-SSIM (``splits.json``) plus
``monitor.margin``. A class *collapses* when, after it has once been at or below its
threshold (it was diverse), its figure is above the threshold **and** at least
``monitor.rise`` above the lowest figure it ever had, for ``monitor.patience`` consecutive
checks. Checks in the first ``monitor.warmup`` of training count for the status only: they
neither arm the rule nor set the best, since a generator still drawing coloured noise scores as
diverse as the real data, and its figure rises as it learns the shapes (on the synthetic
shapes, every split of a 1,000-step run was called collapsed at steps 400-600 without it).
The trend condition keeps a class that hovers around its threshold from being called collapsed
(a 0.625 reading against 0.607 after a 0.60 is noise, not a collapse); an untrained generator
scores about 0.98 and has never been diverse, so it is ``not_converged``, not collapsed.

Class states: ``healthy`` (at or below its threshold), ``not_converged`` (above it, without
the collapse trend: never diverse, or hovering), ``collapsing`` (the trend, fewer than
``patience`` checks in a row), ``collapsed``. A split's status is its worst class's
(:func:`split_status`). The rule's state is a plain dict (numbers, bools, strings), so it
travels in checkpoints.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from acgan.config import MonitorConfig
from acgan.metrics.msssim import msssim_pairs
from acgan.models.acgan import Generator
from acgan.models.sampling import latents
from acgan.monitor.status import COLLAPSED, COLLAPSING, HEALTHY, NOT_CONVERGED  # vocabulary

# Worst first: a split's status is the worst of its classes'.
SEVERITY = (COLLAPSED, COLLAPSING, NOT_CONVERGED, HEALTHY)
_Z_SEED = 20_170_901  # fixed latent codes of the monitor (offset by the split id)


def monitor_seed(split_id: int) -> int:
    """Seed of a split's fixed latent codes: the same for every check, rollback and retrain,
    so that every figure of a split is measured on the same codes."""
    return _Z_SEED + int(split_id)


def class_threshold(cfg: MonitorConfig, reference: float) -> float:
    """``monitor.threshold`` when set, else the class's own real MS-SSIM + margin."""
    return float(cfg.threshold) if cfg.threshold is not None else float(reference) + cfg.margin


def thresholds_for(
    cfg: MonitorConfig,
    classes: Sequence[int],
    names: Sequence[str],
    references: Mapping[int, float],
) -> dict[str, float]:
    """Each class's threshold by name (``references``: real MS-SSIM by dataset class)."""
    return {n: class_threshold(cfg, references[c]) for c, n in zip(classes, names, strict=True)}


def split_status(statuses: Sequence[str]) -> str:
    """A split is as healthy as its worst class."""
    return next((s for s in SEVERITY if s in statuses), HEALTHY)


def metric_key(name: str, index: int) -> str:
    """Class ``index`` (``name``) as an MLflow metric name component: the name itself when
    MLflow takes it (letters of any script, digits, ``_-. ``), else the name with the other
    characters replaced plus ``:<index>`` — a ``:`` no kept name has, so no two classes share
    a key (``men's`` and ``men_s`` stay apart)."""
    safe = re.sub(r"[^\w.\- ]", "_", name)
    return safe if safe == name and name.strip(" .") else f"{safe}:{index}"


@torch.no_grad()
def sample_msssim(G: Generator, pairs: int, seed: int) -> list[float]:
    """Mean MS-SSIM of ``pairs`` sample pairs per class (split-local order) of ``G``.

    G runs in eval mode (BatchNorm uses running statistics, as when the ensemble samples) on
    its own device. All classes go through G in a few large batches and through MS-SSIM in
    one call (per-call overhead dominates at these sizes); the figures come back to the host
    once, at the end.
    """
    if pairs < 2:
        raise ValueError(f"monitor.pairs: need at least 2 pairs per class, got {pairs}")
    device = next(G.parameters()).device
    k, n = G.num_classes, 2 * pairs
    z = latents(n, G.latent_dim, seed, device).repeat(k, 1)  # the same codes for every class
    labels = torch.arange(k, device=device).repeat_interleave(n)
    # Images per forward pass: about 1024 at 32 px, fewer at larger sizes (bounded memory).
    chunk = max(16, 1024 * 32 * 32 // (G.resolution * G.resolution))
    was_training = G.training
    G.eval()
    try:
        x = torch.cat([G(z[i : i + chunk], labels[i : i + chunk]).float()
                       for i in range(0, k * n, chunk)])  # fmt: skip
    finally:
        G.train(was_training)
    x = x.view(k, n, *x.shape[1:])
    a, b = x[:, :pairs].flatten(0, 1), x[:, pairs:].flatten(0, 1)  # pair i: codes i, pairs+i
    return [float(v) for v in msssim_pairs(a, b).view(k, pairs).mean(1).tolist()]


def new_class_state() -> dict[str, Any]:
    return {"armed": False, "best": None, "streak": 0, "status": NOT_CONVERGED}


@dataclass(frozen=True)
class Check:
    """One class at one check: its figure, the state after it, and whether it just collapsed."""

    name: str
    value: float
    threshold: float
    status: str
    streak: int
    newly_collapsed: bool


def apply_rule(
    states: dict[str, dict[str, Any]],
    values: Mapping[str, float],
    thresholds: Mapping[str, float],
    patience: int,
    rise: float,
    warm: bool = True,
) -> list[Check]:
    """Advance each class's state (updated in place) by one check; see the module docstring.
    ``warm``: the check is past the warm-up (it may arm the rule and set the best)."""
    out = []
    for name, value in values.items():
        st = states.setdefault(name, new_class_state())
        t = float(thresholds[name])
        if warm:
            st["best"] = value if st.get("best") is None else min(float(st["best"]), value)
        best = st.get("best")
        newly = False
        if value <= t:
            st.update(armed=st["armed"] or warm, streak=0, status=HEALTHY)
        elif st["armed"] and best is not None and value - best >= rise:
            st["streak"] = int(st["streak"]) + 1
            collapsed = st["streak"] >= patience
            newly = collapsed and st["status"] != COLLAPSED
            st["status"] = COLLAPSED if collapsed else COLLAPSING
        else:
            st.update(streak=0, status=NOT_CONVERGED)
        out.append(Check(name, float(value), t, st["status"], int(st["streak"]), newly))
    return out


def warm_from(cfg: MonitorConfig, steps: int) -> int:
    """The first step whose check is past the warm-up (``monitor.warmup`` of ``steps``)."""
    return round(cfg.warmup * steps)


def replay(
    curve: Sequence[tuple[int, Mapping[str, float]]],
    thresholds: Mapping[str, float],
    patience: int,
    rise: float,
    warm_step: int = 0,
) -> dict[str, dict[str, Any]]:
    """The class states after a sequence of checks (each ``(step, {class name: figure})``)."""
    states: dict[str, dict[str, Any]] = {}
    for step, values in curve:
        apply_rule(states, values, thresholds, patience, rise, step >= warm_step)
    return states


def is_healthy(states: Mapping[str, Mapping[str, Any]]) -> bool:
    """No class is collapsing or collapsed: a checkpoint here is a safe place to return to."""
    return all(int(st["streak"]) == 0 for st in states.values())
