"""The judge stage (``acgan judge``): train the evaluation's judge classifier once on the real
data and cache it by the data's content hash.

``out_dir/``: ``judge.pt`` (plain-dict checkpoint, ``weights_only`` loadable), ``judge.json``
(held-out real accuracy overall and per class, the data hash it was trained on, the cache key,
the per-epoch history), ``training.png`` and ``config.json``. A second run on the same data with
the same ``eval.judge_*`` settings (and the same Inception weights file) keeps the judge that is
there: the key is the data hash plus those settings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acgan import checkpoint
from acgan.checkpoint import file_sha256
from acgan.config import Config, EvalConfig
from acgan.data.ingest import load_manifest
from acgan.data.shards import read_images
from acgan.evaluate_report import training_plot
from acgan.lineage import open_pipeline_run, write_stage_config
from acgan.metrics.judge import (
    JUDGE_FILE,
    JUDGE_FORMAT,
    JUDGE_JSON,
    accuracy,
    build_judge,
    fit_judge,
    holdout_mask,
)
from acgan.tracking import STAGE_TAG, NullTracker, Tracker, png_bytes

# The keys that decide what the judge learns (its cache key also covers the data hash).
JUDGE_KEYS = ("judge_epochs", "judge_holdout", "judge_seed", "inception_weights")


@dataclass(frozen=True)
class JudgeResult:
    out_dir: Path
    kind: str  # "cnn" or "inception-v3"
    real_accuracy: float  # top-1 on the held-out real images
    per_class_accuracy: dict[str, float]
    data_hash: str
    cached: bool  # True: judge.json already matched the data and config; nothing trained
    run_id: str | None


def judge_key(cfg: EvalConfig, data_hash: str) -> str:
    """The judge's cache key: the data's content hash + the judge's settings (+ the
    Inception weights' content)."""
    parts: dict[str, Any] = {
        "format": JUDGE_FORMAT,  # a new judge architecture invalidates cached judges
        "data_hash": data_hash,
        **{k: getattr(cfg, k) for k in JUDGE_KEYS},
    }
    if cfg.inception_weights and Path(cfg.inception_weights).expanduser().is_file():
        parts["inception_sha256"] = file_sha256(Path(cfg.inception_weights).expanduser())
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def _cached(out_dir: Path, key: str) -> JudgeResult | None:
    info = read_json(out_dir / JUDGE_JSON)
    if info is None or info.get("key") != key or not (out_dir / JUDGE_FILE).is_file():
        return None
    return JudgeResult(
        out_dir,
        str(info["kind"]),
        float(info["real_accuracy"]),
        {str(k): float(v) for k, v in info["per_class_accuracy"].items()},
        str(info["data_hash"]),
        True,
        info.get("run_id"),
    )


def train_judge(
    cfg: Config,
    ingested_dir: Path,
    out_dir: Path,
    tracker: Tracker | None = None,
    *,
    parent_run_id: str | None = None,
    progress: bool = True,
) -> JudgeResult:
    """Train the judge on the real data (hold-out ``eval.judge_holdout`` per class to score
    it) and write ``out_dir``; a judge already there for the same data and settings is kept."""
    e, out_dir = cfg.eval, Path(out_dir)
    manifest = load_manifest(ingested_dir)
    key = judge_key(e, manifest.content_hash)
    hit = _cached(out_dir, key)
    if hit is not None:
        return hit
    data = read_images(Path(ingested_dir), progress=progress)
    hold = holdout_mask(data.labels, e.judge_holdout, e.judge_seed)
    judge = build_judge(
        manifest.class_names, manifest.resolution, manifest.channels, e.inception_weights
    )
    tracker = tracker or NullTracker()
    parent = open_pipeline_run(tracker, cfg, manifest.content_hash, parent_run_id)
    run = tracker.child_run(
        parent,
        "judge",
        tags={STAGE_TAG: "judge", "acgan.judge_key": key},
        params={f"eval.{k}": getattr(e, k) for k in JUDGE_KEYS},
    )
    try:
        history = fit_judge(
            judge,
            data.images[~hold],
            data.labels[~hold],
            e.judge_epochs,
            e.judge_seed,
            holdout=(data.images[hold], data.labels[hold]),
            progress=progress,
            on_epoch=lambda row: run.log_metrics(
                {k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"])
            ),
        )
    except BaseException as exc:  # the run must not stay RUNNING in MLflow
        run.end("FAILED" if isinstance(exc, Exception) else "KILLED")
        raise
    logits = judge.embed(data.images[hold], e.batch_size).logits
    y = data.labels[hold]
    per_class = {
        name: accuracy(logits[y == c], y[y == c]) for c, name in enumerate(manifest.class_names)
    }
    info = {
        "kind": judge.kind,
        "key": key,
        "data_hash": manifest.content_hash,
        "real_accuracy": accuracy(logits, y),
        "per_class_accuracy": per_class,
        "holdout_fraction": e.judge_holdout,
        "seed": e.judge_seed,
        "train_images": int((~hold).sum()),
        "holdout_images": int(hold.sum()),
        "class_names": manifest.class_names,
        "resolution": manifest.resolution,
        "channels": manifest.channels,
        "num_features": judge.num_features,
        "history": history,
        "run_id": run.run_id,
    }
    plot = training_plot(history)
    with checkpoint.atomic_dir(out_dir) as tmp:
        checkpoint.save(
            {**judge.record(), "key": key, "data_hash": manifest.content_hash}, tmp / JUDGE_FILE
        )
        checkpoint.atomic_write_json(tmp / JUDGE_JSON, info)
        (tmp / "training.png").write_bytes(png_bytes(plot))
        write_stage_config(tmp, cfg, "judge", manifest.content_hash, judge_key=key)
    run.log_metrics({"real_accuracy": info["real_accuracy"]})
    run.log_image(plot, "judge/training.png")
    run.log_artifact(out_dir / JUDGE_JSON, "judge")
    run.end("FINISHED")
    return JudgeResult(
        out_dir,
        judge.kind,
        info["real_accuracy"],
        per_class,
        manifest.content_hash,
        False,
        run.run_id,
    )
