"""Training: one split's AC-GAN (``loop``), its state and EMA (``state``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from acgan.config import Config
from acgan.errors import ConfigError
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
        hooks.append(CollapseMonitor.from_config(cfg, plan.reference_msssim))
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

    One after another for ``train.pack: 1``; otherwise in packs of ``train.pack`` splits (in
    the order given), each pack trained as one batched model (:mod:`acgan.train.packed`) on
    CUDA. On a CPU, which one split already saturates, the batched model measured 10-20% slower
    than single steps (cache locality, ``python -m benchmarks.packed``), so there the splits
    train one after another in this process unless ``batched=True``. Splits of a pack with
    different class counts (an uneven last group) train as separate packs. The keyword
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
    from acgan.train.pack_loop import train_pack

    plan = load_plan(splits_dir)
    hooks = list(kwargs.pop("hooks", ()))
    if cfg.monitor.enabled:
        # The same hook train_split_with_monitor attaches: it keeps its per-split state in each
        # split's LoopContext, so one instance serves the whole pack.
        from acgan.monitor.hook import CollapseMonitor

        hooks.append(CollapseMonitor.from_config(cfg, plan.reference_msssim))
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
                **kwargs,
            )
    return results
