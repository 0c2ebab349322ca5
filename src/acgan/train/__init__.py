"""Training: one split's AC-GAN (``loop``), its state and EMA (``state``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from acgan.config import Config
from acgan.train.loop import TrainResult, train_split

__all__ = ["TrainResult", "train_split", "train_split_with_monitor"]


def train_split_with_monitor(
    cfg: Config,
    split_id: int,
    splits_dir: Path,
    out_dir: Path,
    checkpoint_root: Path,
    tracker: Any = None,
    **kwargs: Any,
) -> TrainResult:
    """Train a split with the collapse monitor attached as configured (``monitor.*``)."""
    return train_split(cfg, split_id, splits_dir, out_dir, checkpoint_root, tracker, **kwargs)
