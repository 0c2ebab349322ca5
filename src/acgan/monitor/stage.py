"""The monitor stage (``acgan monitor``): judge every split's output and choose the ensemble.

For each split it reads the training output (``train.json``, ``history.json`` with the
in-training curve) and measures the delivered ``generator.pt`` once more on the same fixed
latent codes. The collapse rule (:mod:`acgan.monitor.detector`) is replayed over the checks in
the history of the delivered weights (checks abandoned by a rollback, or after a stop, are left
out) followed by that final measurement, so the verdict is about what the split hands on.

Each class is judged against its own real reference (``healthy``, ``not_converged``,
``collapsing``, ``collapsed``); a split takes its worst class's status. Splits are ranked by
one figure, their *excess*: how far the least diverse class sits above its own threshold. A
collapsed split is set aside only when it is less diverse than every split that stays (so a
split is never excluded while a less diverse one is kept: a collapsed split that still beats
a kept one stays, with its status saying what happened). The stage retrains nothing: with
``monitor.retrain_collapsed`` the *trainer* already trained a split its monitor left collapsed
once more with a new seed, into the same ``models/split_<id>`` (its ``train.json`` records the
first attempt under ``retrained_from``); such a split is shown as ``retrained`` when it is
kept, and excluded with the reason when it is still set aside. An ensemble that misses classes
fails the evaluation gate (``eval.require_all_classes``). Outputs, written atomically into
``out_dir``: ``monitor.json``, ``plots/split_<id>.png``, ``report.html``, ``ensemble.json``
(the manifest evaluation and registration read) and ``config.json``; all of it is logged to
the MLflow child run ``monitor`` of the pipeline run. This stage imports nothing of
:mod:`acgan.train`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acgan.config import Config
from acgan.data.splits import SplitPlan, load_plan
from acgan.errors import DataError
from acgan.io import atomic_write_json, read_json
from acgan.lineage import stage
from acgan.metrics.msssim import protocol
from acgan.models.ensemble import find_split_dirs, load_member, write_manifest
from acgan.monitor import report
from acgan.monitor.detector import (
    COLLAPSED,
    metric_key,
    monitor_seed,
    replay,
    sample_msssim,
    split_status,
    thresholds_for,
    warm_from,
)
from acgan.monitor.status import RETRAINED
from acgan.progress import progress_bar
from acgan.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)

MONITOR_JSON = "monitor.json"
REPORT_HTML = "report.html"


@dataclass
class MonitorResult:
    out_dir: Path
    manifest: Path  # out_dir/ensemble.json
    splits: dict[int, dict[str, Any]]  # per split: status, classes, events (as in monitor.json)
    members: list[dict[str, Any]] = field(default_factory=list)
    excluded: list[dict[str, Any]] = field(default_factory=list)
    run_id: str = ""


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object of the split's training output (a one-line DataError otherwise)."""
    return read_json(path, "re-run `acgan train` for this split", "training output", DataError)


def assess_split(cfg: Config, plan: SplitPlan, split_id: int, model_dir: Path) -> dict[str, Any]:
    """The verdict on one split's training output (a ``monitor.json`` split record)."""
    spec = plan.split(split_id)
    train = _read_json(model_dir / "train.json")
    history = _read_json(model_dir / "history.json")
    record = (model_dir / "config.json").is_file() and _read_json(model_dir / "config.json")
    if record and record.get("data_hash") not in (None, plan.data_hash):
        raise DataError(
            f"{model_dir}: trained on data {str(record['data_hash'])[:12]}, but "
            f"{plan.root}/splits.json is data {plan.data_hash[:12]}; retrain split {split_id}"
        )
    member = load_member(model_dir)
    if member.classes != list(spec.classes):
        raise DataError(
            f"{model_dir}: generator has classes {member.classes}, split {split_id} of "
            f"{plan.root}/splits.json has {list(spec.classes)}; retrain split {split_id}"
        )
    names = list(spec.class_names)
    thresholds = thresholds_for(cfg.monitor, spec.classes, names, plan.reference_msssim)
    final = dict(
        zip(
            names,
            sample_msssim(member.G, cfg.monitor.pairs, monitor_seed(split_id)),
            strict=True,
        )
    )
    mon = history.get("monitor") or {}
    curve = list(mon.get("curve") or [])
    step = int(train.get("step", member.step))
    # The checks in the history of the delivered weights, then the delivered weights themselves.
    lineage = [
        (int(e["step"]), e["values"])
        for e in curve
        if not e.get("discarded") and int(e["step"]) < step
    ]
    m = cfg.monitor
    states = replay(
        [*lineage, (step, final)], thresholds, m.patience, m.rise, warm_from(m, cfg.train.steps)
    )
    classes = {
        name: {
            "class": c,
            "final_msssim": round(final[name], 6),
            "reference": plan.reference_msssim.get(c),
            "threshold": round(thresholds[name], 6),
            "best_msssim": _rounded(states[name]["best"]),
            "status": states[name]["status"],
            "collapsed": states[name]["status"] == COLLAPSED,
        }
        for c, name in zip(spec.classes, names, strict=True)
    }
    collapsed = [n for n, r in classes.items() if r["collapsed"]]
    return {
        "split_id": split_id,
        "model_dir": str(model_dir),
        "generator_sha256": train.get("generator_sha256"),  # checked by load_member above
        "step": step,
        "stopped_early": bool(train.get("stopped_early")),
        "rollbacks": int(mon.get("rollbacks", 0)),
        "monitored": bool(curve),
        "status": split_status([r["status"] for r in classes.values()]),
        # the least diverse class's distance above its own threshold (< 0: all diverse)
        "excess": round(max(final[n] - thresholds[n] for n in names), 6),
        "collapsed_classes": collapsed,
        "classes": classes,
        "events": [e for e in history.get("events", []) if e.get("source") == "monitor"],
        "curve": curve,
        **({"retrained_from": train["retrained_from"]} if train.get("retrained_from") else {}),
    }


def _reason(rec: Mapping[str, Any], cfg: Config) -> str:
    """Why a split is set aside: its collapsed classes, and that every kept split beats it."""
    m = cfg.monitor
    worst = ", ".join(
        f"{n} {rec['classes'][n]['final_msssim']:.3f} (threshold "
        f"{rec['classes'][n]['threshold']:.3f}, best {rec['classes'][n]['best_msssim']:.3f})"
        for n in rec["collapsed_classes"]
    )
    return (
        f"collapsed: MS-SSIM above its threshold and {m.rise:g} above its best for "
        f"{m.patience} consecutive checks ({worst}), and less diverse than every split kept"
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def set_aside(records: Mapping[int, Mapping[str, Any]]) -> set[int]:
    """The collapsed splits that are less diverse (larger excess) than every split that is not
    collapsed: excluding a collapsed split while keeping a less diverse one would rank the
    ensemble's members against what their samples show."""
    others = [r["excess"] for r in records.values() if r["status"] != COLLAPSED]
    # none kept to compare with (every split collapsed): none is set aside for the others
    bar = max(others, default=float("inf"))
    return {sid for sid, r in records.items() if r["status"] == COLLAPSED and r["excess"] > bar}


def run_monitor(
    cfg: Config,
    splits_dir: Path,
    models_root: Path,
    out_dir: Path,
    tracker: Tracker | None = None,
    *,
    parent_run_id: str | None = None,
    progress: bool = True,
) -> MonitorResult:
    """Assess every split of ``cfg.split.ids`` under ``models_root``; write ``out_dir``."""
    tracker = tracker or NullTracker()
    splits_dir, models_root, out_dir = Path(splits_dir), Path(models_root), Path(out_dir)
    plan = load_plan(splits_dir)
    dirs = find_split_dirs(models_root, cfg.split.ids)
    with stage(
        "monitor", cfg, out_dir, data_hash=plan.data_hash, tracker=tracker,
        parent_run_id=parent_run_id,
    ) as st:  # fmt: skip
        links = {"run": tracker.run_url(st.run.run_id), "hint": tracker.ui_hint}
        with st.output() as tmp:
            result = _assess_all(
                cfg,
                plan,
                dict(zip(cfg.split.ids, dirs, strict=True)),
                tmp,
                out_dir,
                progress=progress,
                links=links,
            )
        result.run_id = st.run.run_id
        _log(st.run, result)
    return result


def _assess_all(
    cfg: Config,
    plan: SplitPlan,
    dirs: dict[int, Path],
    tmp: Path,
    out_dir: Path,
    *,
    progress: bool,
    links: dict[str, str | None],
) -> MonitorResult:
    """Everything but the MLflow run: assess, keep or exclude, write the files into ``tmp``
    (which becomes ``out_dir``)."""
    m = cfg.monitor
    splits: dict[int, dict[str, Any]] = {}
    plots: dict[str, Path] = {}
    for sid, model_dir in progress_bar(
        dirs.items(), desc="monitor", unit="split", disable=not progress
    ):
        rec = assess_split(cfg, plan, sid, model_dir)
        plots[f"split {sid}"] = report.plot_split(rec, tmp / "plots" / f"split_{sid}.png")
        splits[sid] = rec
    aside = set_aside(splits)
    members, excluded = [], []
    for sid in sorted(splits):
        rec = splits[sid]
        first = rec.pop("retrained_from", None)
        if first:  # the trainer retrained it (monitor.retrain_collapsed): say so
            rec["retrained"] = {"model_dir": rec["model_dir"], "status": rec["status"],
                                "first_attempt": first}  # fmt: skip
        if sid not in aside:
            if first:
                rec["status"] = RETRAINED  # the split's standing in the ensemble
            members.append(_member(rec))
            continue
        reason = _reason(rec, cfg)
        log.warning("split %d set aside: %s", sid, reason)
        if first:
            reason = f"retrained once with a new seed, still set aside; {reason}"
        rec["excluded"] = reason
        excluded.append(
            {
                "split_id": sid,
                "status": rec["status"],
                "reason": reason,
                "model_dir": rec["model_dir"],
            }
        )

    summary = {
        "protocol": plan.protocol,
        "measure_protocol": protocol(plan.resolution),
        "threshold_rule": (
            "monitor.threshold"
            if m.threshold is not None
            else f"each class's own real-image MS-SSIM + margin {m.margin}"
        ),
        "rise": m.rise,
        "patience": m.patience,
        "warmup": m.warmup,
        "pairs": m.pairs,
        "action": m.action,
        "retrain_collapsed": m.retrain_collapsed,
        "splits": {str(k): _public(r) for k, r in splits.items()},
        "members": members,
        "excluded": excluded,
    }
    atomic_write_json(tmp / MONITOR_JSON, summary)
    manifest = write_manifest(tmp / "ensemble.json", members, excluded)
    report.write_html(summary, plots, tmp / REPORT_HTML, links)
    return MonitorResult(out_dir, out_dir / manifest.name, splits, members, excluded)


def _member(rec: Mapping[str, Any]) -> dict[str, Any]:
    """An ensemble manifest entry for split ``rec``."""
    return {
        "split_id": rec["split_id"],
        "model_dir": rec["model_dir"],
        "status": rec["status"],
        "classes": [c["class"] for c in rec["classes"].values()],
        "sha256": rec.get("generator_sha256"),  # every load of the file checks it
    }


def _public(rec: Mapping[str, Any]) -> dict[str, Any]:
    """A split record for monitor.json: the curves stay in history.json and the plots."""
    return {k: v for k, v in rec.items() if k != "curve"}


def _log(run: Any, result: MonitorResult) -> None:
    metrics: dict[str, float] = {}
    for sid, rec in result.splits.items():
        for name, c in rec["classes"].items():
            key = f"final_msssim/split_{sid}/{metric_key(name, c['class'])}"
            metrics[key] = c["final_msssim"]
        metrics[f"collapsed_classes/split_{sid}"] = len(rec["collapsed_classes"])
    metrics.update(
        splits_collapsed=sum(bool(r["collapsed_classes"]) for r in result.splits.values()),
        splits_retrained=sum("retrained" in r for r in result.splits.values()),
        splits_excluded=len(result.excluded),
        ensemble_members=len(result.members),
    )
    run.log_metrics(metrics)
    out = result.out_dir
    run.log_artifact(out / "plots", "plots")
    for name in (MONITOR_JSON, REPORT_HTML, "ensemble.json", "config.json"):
        run.log_artifact(out / name)
    run.set_tags(
        {
            "acgan.monitor.members": ",".join(str(m["split_id"]) for m in result.members),
            "acgan.monitor.excluded": ",".join(str(e["split_id"]) for e in result.excluded),
            # the same codes as monitor.json, the reports and the registry's tag
            "acgan.split_health": json.dumps(
                {str(k): r["status"] for k, r in result.splits.items()}
            ),
        }
    )


__all__ = ["MonitorResult", "assess_split", "run_monitor"]
