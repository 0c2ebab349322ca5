"""Training: one trainer for a split alone and for packs of splits.

:mod:`~acgan.train.step` (the AC-GAN update, written once), :mod:`~acgan.train.packed` (the
same modules and losses batched over a pack's splits), :mod:`~acgan.train.run` (one split's
run: resume, bookkeeping, hook decisions, outputs), :mod:`~acgan.train.loop` (the loop over a
pack), :mod:`~acgan.train.state` (G, D, EMA, optimizers, random streams, checkpoints).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from acgan.config import Config
from acgan.errors import ConfigError
from acgan.train.loop import train_pack, train_split
from acgan.train.run import TrainResult

__all__ = ["TrainResult", "train_split", "train_split_with_monitor", "train_splits"]


def _monitor_hooks(cfg: Config, splits_dir: Path, hooks: Sequence[Any]) -> list[Any]:
    """The caller's hooks, then the collapse monitor as configured (``monitor.*``)."""
    hooks = list(hooks)
    if cfg.monitor.enabled:
        from acgan.data.splits import load_plan
        from acgan.monitor.hook import CollapseMonitor

        plan = load_plan(splits_dir)
        hooks.append(CollapseMonitor.from_config(cfg, plan.reference_msssim))
    return hooks


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

    With ``monitor.enabled`` a :class:`acgan.monitor.hook.CollapseMonitor` (thresholds from
    the split plan's real-image references) runs after any ``hooks`` the caller passes, and
    with ``monitor.retrain_collapsed`` a split it leaves collapsed is trained once more with a
    new seed into ``out_dir``. The other keyword arguments (``parent_run_id``, ``attempt``,
    ``progress``) go to :func:`acgan.train.loop.train_pack`.
    """
    hooks = _monitor_hooks(cfg, Path(splits_dir), kwargs.pop("hooks", ()))
    retrain = cfg.monitor.enabled and cfg.monitor.retrain_collapsed
    return train_split(
        cfg, split_id, splits_dir, out_dir, checkpoint_root, tracker, hooks=hooks,
        retrain=retrain, **kwargs,
    )  # fmt: skip


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

    One after another for ``train.pack: 1``; otherwise in packs of ``train.pack`` splits (in
    the order given), each pack trained as one batched model (:mod:`acgan.train.packed`) on
    CUDA. On a CPU, which one split already saturates, the batched model measured slower than
    one split at a time (``python -m benchmarks.packed``, docs/performance.md), so there the
    splits train one after another in this process unless ``batched=True``. Splits of a pack
    with different class counts (an uneven last group) train as separate packs. The keyword
    arguments (``parent_run_id``, ``attempt``, ``progress``, ``hooks``) apply to every split;
    the collapse monitor is attached as configured, as for a single split.
    """
    batched = kwargs.pop("batched", None)
    ids = [int(s) for s in split_ids]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"split ids {ids}: each split can be trained once per call")
    out = Path(out_root)
    if batched is None:
        from acgan.devices import resolve_device

        batched = resolve_device(cfg.train.device).type == "cuda"
    if cfg.train.pack == 1 or len(ids) == 1 or not batched:
        return [
            train_split_with_monitor(
                cfg, sid, splits_dir, out / f"split_{sid}", checkpoint_root, tracker, **kwargs
            )
            for sid in ids
        ]
    from acgan.data.splits import load_plan

    plan = load_plan(splits_dir)
    # One monitor serves the whole pack: its record of a split is in that split's state.
    hooks = _monitor_hooks(cfg, Path(splits_dir), kwargs.pop("hooks", ()))
    retrain = cfg.monitor.enabled and cfg.monitor.retrain_collapsed
    results: list[TrainResult] = []
    for start in range(0, len(ids), cfg.train.pack):
        chunk = ids[start : start + cfg.train.pack]
        by_shape: dict[int, list[int]] = {}
        for sid in chunk:
            by_shape.setdefault(len(plan.split(sid).classes), []).append(sid)
        for group in by_shape.values():
            results += train_pack(
                cfg,
                group,
                splits_dir,
                [out / f"split_{sid}" for sid in group],
                checkpoint_root,
                tracker,
                hooks=hooks,
                retrain=retrain,
                **kwargs,
            )
    return results
