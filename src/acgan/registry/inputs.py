"""What registration reads: the ensemble manifest, the ingest manifest, and the optional
monitor and evaluation reports. Missing optional reports degrade gracefully: without
``gate.json`` the gate is "every split trained"; without ``metrics.json`` the figures are the
training figures that exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acgan.data.ingest import load_manifest
from acgan.errors import AcganError
from acgan.io import read_json
from acgan.models.ensemble import ENSEMBLE_JSON, read_manifest
from acgan.monitor import status

MONITOR_JSON = "monitor.json"
METRICS_JSON = "metrics.json"
GATE_JSON = "gate.json"


@dataclass
class Inputs:
    member_dirs: list[Path]
    excluded: list[dict[str, Any]]
    data_hash: str
    dataset: str
    health: dict[int, str]  # split id -> a code of acgan.monitor.status (healthy, ...)
    figures: dict[str, float]  # evaluation figures (or training figures without evaluation)
    figures_source: str
    gate_passed: bool
    gate_reasons: list[str]
    gate_source: str
    train: dict[int, dict[str, Any]] = field(default_factory=dict)  # split id -> train.json


def _status(entry: Any) -> str | None:
    """One split's status code (:mod:`acgan.monitor.status`) from a monitor or manifest
    entry, whatever shape the monitor chose."""
    if not isinstance(entry, dict):
        return str(entry) if entry is not None else None
    if isinstance(entry.get("status"), str):
        return entry["status"]
    if isinstance(entry.get("healthy"), bool):
        return status.HEALTHY if entry["healthy"] else status.COLLAPSED
    collapsed = entry.get("collapsed")
    if isinstance(collapsed, bool | list):
        return status.COLLAPSED if collapsed else status.HEALTHY
    return None


def split_health(monitor: Any, manifest: dict[str, Any]) -> dict[int, str]:
    """Per-split status: ``monitor.json`` when it says, else the ensemble manifest's."""
    health: dict[int, str] = {}
    for entry in manifest.get("members", []):
        if (s := _status(entry)) is not None:
            health[int(entry["split_id"])] = s
    for entry in manifest.get("excluded", []):  # the reason is in acgan.excluded_splits
        health[int(entry["split_id"])] = _status(entry) or status.EXCLUDED
    splits = monitor.get("splits") if isinstance(monitor, dict) else None
    items: list[tuple[Any, Any]] = []
    if isinstance(splits, dict):
        items = list(splits.items())
    elif isinstance(splits, list):
        items = [(e.get("split_id", e.get("id")), e) for e in splits if isinstance(e, dict)]
    for sid, entry in items:
        s = _status(entry)
        if s is not None and sid is not None and str(sid).lstrip("-").isdigit():
            health[int(sid)] = s
    return health


def numeric_figures(raw: Any) -> dict[str, float]:
    """The top-level finite numbers of a metrics file (nested sections are per-class detail)."""
    if not isinstance(raw, dict):
        return {}
    return {
        k: float(v)
        for k, v in raw.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def read_inputs(
    ensemble_manifest: Path,
    ingested_dir: Path,
    monitor_dir: Path | None = None,
    eval_dir: Path | None = None,
) -> Inputs:
    path = Path(ensemble_manifest)
    if path.is_dir():
        path = path / ENSEMBLE_JSON
    member_dirs = read_manifest(path)  # raises a one-line error on a bad manifest
    manifest = read_json(path, "re-run `acgan monitor`", "ensemble manifest")
    ingest = load_manifest(ingested_dir)

    monitor: Any = None
    if monitor_dir is not None and (Path(monitor_dir) / MONITOR_JSON).is_file():
        monitor = read_json(
            Path(monitor_dir) / MONITOR_JSON, "re-run `acgan monitor`", "monitor report"
        )
    health = split_health(monitor, manifest)

    train: dict[int, dict[str, Any]] = {}
    missing: list[str] = []
    for d in member_dirs:
        tj = d / "train.json"
        if tj.is_file():
            rec = read_json(tj, f"retrain the split in {d}", "training summary")
            train[int(rec.get("split_id", -1))] = rec
        else:
            missing.append(str(d))

    figures: dict[str, float] = {}
    figures_source = "training (no evaluation report)"
    gate_source = "all splits trained (no gate.json)"
    gate_passed, reasons = True, []
    if eval_dir is not None and (Path(eval_dir) / METRICS_JSON).is_file():
        figures = numeric_figures(
            read_json(Path(eval_dir) / METRICS_JSON, "re-run evaluate", "evaluation metrics")
        )
        figures_source = str(Path(eval_dir) / METRICS_JSON)
    else:
        # "the figures that exist": each training figure averaged over the splits
        per_key: dict[str, list[float]] = {}
        for rec in train.values():
            for k, v in numeric_figures(rec.get("metrics")).items():
                if k not in ("step", "images_per_s"):  # quality figures, not speed
                    per_key.setdefault(f"train_{k}", []).append(v)
        figures = {k: sum(v) / len(v) for k, v in per_key.items()}
    if eval_dir is not None and (Path(eval_dir) / GATE_JSON).is_file():
        gate = read_json(Path(eval_dir) / GATE_JSON, "re-run evaluate", "evaluation gate")
        if not isinstance(gate, dict) or not isinstance(gate.get("passed"), bool):
            raise AcganError(
                f"{Path(eval_dir) / GATE_JSON}: expected {{'passed': bool, 'reasons': [...]}}; "
                "re-run `acgan evaluate`"
            )
        gate_passed = gate["passed"]
        reasons = [str(r) for r in gate.get("reasons", [])]
        gate_source = str(Path(eval_dir) / GATE_JSON)
    else:
        excluded = manifest.get("excluded", [])
        if excluded:
            gate_passed = False
            reasons += [f"split {e.get('split_id')} excluded: {e.get('reason')}" for e in excluded]
        if missing:
            gate_passed = False
            reasons += [f"{d}: no train.json (training did not finish)" for d in missing]
    return Inputs(
        member_dirs=member_dirs,
        excluded=list(manifest.get("excluded", [])),
        data_hash=ingest.content_hash,
        dataset=ingest.source,
        health=health,
        figures=figures,
        figures_source=figures_source,
        gate_passed=gate_passed,
        gate_reasons=reasons,
        gate_source=gate_source,
        train=train,
    )
