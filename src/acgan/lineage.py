"""Where an artifact came from: data hash + configuration + git commit, and its MLflow run.

Every stage writes its resolved configuration beside its outputs (``config.json``) with these
fields, and logs them to the pipeline's MLflow run, so any artifact can be traced back.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from acgan import __version__
from acgan.checkpoint import atomic_write_json
from acgan.config import Config

# git_commit lives with the tracker factory (it tags every run); the stages import it here
from acgan.tracking import Run, Tracker, git_commit

# Sections that define the trained ensemble: one MLflow parent run per distinct combination.
ENSEMBLE_SECTIONS = ("data", "split", "model", "train", "monitor")
# Keys that change how a run is executed or logged, not what it learns.
EXECUTION_KEYS = (
    "train.device",
    "train.log_every",
    "train.sample_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.pack",
)


def pipeline_key(cfg: Config, data_hash: str) -> str:
    """Identity of one pipeline run: what the ensemble is trained from and how."""
    return f"{data_hash[:12]}-{cfg.fingerprint(*ENSEMBLE_SECTIONS, exclude=EXECUTION_KEYS)}"


def stage_record(cfg: Config, stage: str, data_hash: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "stage": stage,
        "acgan_version": __version__,
        "git_commit": git_commit(),
        "data_hash": data_hash,
        "config": cfg.record(),
        **extra,
    }


def write_stage_config(
    out_dir: Path, cfg: Config, stage: str, data_hash: str | None, **extra: Any
) -> dict[str, Any]:
    record = stage_record(cfg, stage, data_hash, **extra)
    atomic_write_json(Path(out_dir) / "config.json", record)
    return record


def finish_pipeline_run(
    parent: Run, metrics: Mapping[str, float] | None = None, tags: Mapping[str, Any] | None = None
) -> None:
    """The pipeline's result on its parent run, which ends FINISHED: the last stage that runs
    calls this (evaluate; register after it when it runs). A later stage reopens the run."""
    if metrics:
        have = parent.metrics()  # a second stage's same figures add no duplicate points
        parent.log_metrics({k: v for k, v in metrics.items() if have.get(k) != v})
    if tags:
        parent.set_tags(tags)
    parent.end("FINISHED")


def open_pipeline_run(
    tracker: Tracker, cfg: Config, data_hash: str, parent_run_id: str | None = None
) -> Run:
    """The parent run: the given id (KFP passes it down), else found-or-created by key."""
    key = pipeline_key(cfg, data_hash)
    return tracker.pipeline_run(
        key,
        name=f"acgan-{cfg.data.source}-{key[-8:]}",
        run_id=parent_run_id,
        params=cfg.flat(),
        tags={
            "acgan.data_hash": data_hash,
            "acgan.git_commit": git_commit() or "unknown",
            "acgan.version": __version__,
            "acgan.dataset": cfg.data.source,
        },
    )
