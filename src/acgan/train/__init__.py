"""Training: one split's AC-GAN (``loop``), its state and EMA (``state``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from acgan.config import Config
from acgan.train.loop import TrainResult, train_split

__all__ = ["TrainResult", "train_split", "train_split_with_monitor", "train_splits"]


def train_split_with_monitor(
    cfg: Config,
    split_id: int,
    splits_dir: Path,
    out_dir: Path,
    checkpoint_root: Path,
    tracker: Any = None,
    **kwargs: Any,
) -> TrainResult:
    """Train a split with the collapse monitor attached as configured (``monitor.*``).

    With ``monitor.enabled`` a :class:`acgan.monitor.hook.CollapseMonitor` (threshold from the
    split plan's real-image references) runs after any ``hooks`` the caller passes; the other
    keyword arguments (``parent_run_id``, ``attempt``, ``progress``) go to :func:`train_split`.
    """
    hooks = list(kwargs.pop("hooks", ()))
    if cfg.monitor.enabled:
        # Imported here: acgan.monitor's stage drives this trainer when it retrains a split.
        from acgan.data.splits import load_plan
        from acgan.monitor.hook import CollapseMonitor

        plan = load_plan(splits_dir)
        hooks.append(CollapseMonitor.from_config(cfg, plan.reference_max))
    return train_split(
        cfg, split_id, splits_dir, out_dir, checkpoint_root, tracker, hooks=hooks, **kwargs
    )


def train_splits(
    cfg: Config,
    split_ids: Sequence[int],
    splits_dir: Path,
    out_root: Path,
    checkpoint_root: Path,
    tracker: Any = None,
    **kwargs: Any,
) -> list[TrainResult]:
    """Train a group of splits on this process's device into ``out_root/split_<id>``.

    One after another for ``train.pack: 1``; packed into one batched model otherwise.
    """
    return [
        train_split_with_monitor(
            cfg,
            sid,
            splits_dir,
            Path(out_root) / f"split_{sid}",
            checkpoint_root,
            tracker,
            **kwargs,
        )
        for sid in split_ids
    ]
