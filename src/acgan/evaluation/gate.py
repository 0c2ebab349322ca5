"""The evaluation's gate: does the ensemble pass the configured thresholds (``gate.json``)?

A pure decision on the figures of :mod:`acgan.evaluation.stage`; the registry reads its
answer from ``gate.json`` and never imports this module (evaluation does not know the registry).
"""

from __future__ import annotations

import math
from typing import Any

from acgan.config import EvalConfig

# What to do next when a gate check fails (the last field of GATE_CHECKS).
_UNRECOGNISED = (
    "the judge does not recognise the samples' classes: train longer (train.steps) or on a "
    "GPU, and look at the split runs' sample grids"
)
_FAR = (
    "the samples are far from the real images overall: train longer, and compare the "
    "report's sample grid with real images of the same classes"
)
_ALIKE = (
    "too many classes' samples look alike: train longer, or act on collapse (monitor.action: "
    "rollback, monitor.retrain_collapsed: true); the monitor report shows which classes"
)
# (figure, comparison, eval.* key of its limit, what to do when the check fails); a limit set
# to null switches its check off.
GATE_CHECKS: tuple[tuple[str, str, str, str], ...] = (
    ("judge_skill", ">=", "min_skill", _UNRECOGNISED),
    ("fid_ratio", "<=", "max_fid_ratio", _FAR),
    ("diverse_fraction", ">=", "min_diverse_fraction", _ALIKE),
    ("judge_accuracy", ">=", "min_accuracy", _UNRECOGNISED),
    ("fid", "<=", "max_fid", _FAR),
)


def gate_decision(metrics: dict[str, Any], cfg: EvalConfig) -> dict[str, Any]:
    """Pass when every configured threshold holds; each failure is one reason naming its key
    and one line of advice (what to do next), in ``reasons`` and ``advice`` alike.

    The default thresholds are relative: to chance and the judge's own accuracy on real images
    (``judge_skill``), to the FID two sets of real images have (``fid_ratio``), and to the real
    data's diversity (``diverse_fraction``), so one setting means the same on any dataset; and
    the ensemble must serve every class of the dataset (``require_all_classes``).
    """
    reasons, advice, figures, thresholds = [], [], {}, {}
    for name, op, key, todo in GATE_CHECKS:
        limit = getattr(cfg, key)
        thresholds[key] = limit
        if limit is None:
            continue
        value = metrics.get(name)
        figures[name] = value
        if not math.isfinite(float(limit)):  # NaN compares false both ways: never a pass
            reasons.append(f"eval.{key} is not a finite number ({limit}); set a real threshold")
            advice.append(f"eval.{key}: set a finite threshold (or null to switch it off)")
        elif value is None or not math.isfinite(float(value)):
            reasons.append(f"{name} is missing or not a number ({value}); eval.{key}: {limit:g}")
            advice.append(f"{name}: re-run `acgan evaluate` and check its log for this figure")
        elif (value < limit) if op == ">=" else (value > limit):
            side = "below the minimum" if op == ">=" else "above the maximum"
            reasons.append(f"{name} {value:.4g} is {side} {limit:g} (eval.{key})")
            advice.append(f"{name}: {todo}")
    thresholds["require_all_classes"] = cfg.require_all_classes
    missing = metrics.get("classes_missing") or []
    if cfg.require_all_classes and missing:
        reasons.append(
            f"the ensemble does not serve {len(missing)} class(es) of the dataset: "
            f"{', '.join(map(str, missing))} (eval.require_all_classes); retrain their splits"
        )
        advice.append(
            "classes_missing: the monitor excluded their splits (reports/monitor/report.html "
            "says why); retrain them, or set monitor.retrain_collapsed: true"
        )
    return {
        "passed": not reasons,
        "reasons": reasons,
        "advice": advice,
        "figures": figures,
        "thresholds": thresholds,
    }
