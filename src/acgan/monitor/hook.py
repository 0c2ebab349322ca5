"""The in-training collapse monitor: a step hook of the trainer (:mod:`acgan.train.run`).

Every ``monitor.every`` steps it measures each class (see :mod:`acgan.monitor.detector`),
logs the curves, and returns a :class:`~acgan.monitor.decision.Decision` that the trainer
carries out. When a class collapses the decision is what ``monitor.action`` says:

* ``warn``: continue (the collapse is recorded as an event);
* ``stop``: restore the last healthy checkpoint and end training; that checkpoint's weights
  become the split's output, and a re-run of the same training does not continue past it;
* ``rollback``: restore the last healthy checkpoint, draw a new seed for the batches and noise,
  multiply the learning rate by ``monitor.rollback_lr_factor``, and continue; after
  ``monitor.max_rollbacks`` rollbacks a further collapse stops training as ``stop`` does.

A *healthy* check is one at which no class is collapsing; the decision says so
(``healthy=True``) and the trainer keeps a checkpoint of that step, protected from pruning, so
there is always one to go back to. The monitor never touches the trainer: it reads the
sampler, step, seed and learning-rate scale from the context, changes only its own record
(:class:`~acgan.monitor.decision.MonitorState`) and logs its figures to the split's run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from acgan.monitor.decision import CONTINUE, ROLLBACK, STOP, Decision, MonitorState
from acgan.monitor.detector import (
    COLLAPSED,
    apply_rule,
    is_healthy,
    metric_key,
    monitor_seed,
    sample_msssim,
    thresholds_for,
    warm_from,
)

if TYPE_CHECKING:
    from acgan.config import Config
    from acgan.data.splits import SplitSpec

log = logging.getLogger(__name__)


class SplitView(Protocol):
    """What the monitor reads of a split in training (the trainer's ``LoopContext``)."""

    cfg: Config
    split_id: int
    spec: SplitSpec
    run: Any  # acgan.tracking.Run: the split's MLflow run

    @property
    def step(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def lr_scale(self) -> float: ...
    @property
    def lr_g(self) -> float: ...  # G's configured learning rate
    @property
    def sampler(self) -> torch.nn.Module: ...
    @property
    def monitor(self) -> MonitorState: ...  # this split's record, kept by the trainer


class CollapseMonitor:
    """A step hook that watches each class for mode collapse and decides what to do.

    It keeps **no per-split state of its own**: its record of a split is the
    :class:`MonitorState` the trainer keeps for it (``view.monitor``), so one instance can
    serve several splits trained in one process (a pack). Each class's threshold comes from
    its own real-image reference (the split plan's, given at construction).
    """

    def __init__(self, references: Mapping[int, float], every: int) -> None:
        self.references = {int(c): float(v) for c, v in references.items()}
        self.every = int(every)

    @classmethod
    def from_config(cls, cfg: Config, references: Mapping[int, float]) -> CollapseMonitor:
        """The hook for ``cfg.monitor`` and the real-image MS-SSIM of each dataset class."""
        return cls(references, cfg.monitor.every)

    def __call__(self, view: SplitView) -> Decision:
        m = view.cfg.monitor
        mon, step, spec = view.monitor, view.step, view.spec
        names = list(spec.class_names)
        thresholds = thresholds_for(m, spec.classes, names, self.references)
        values = sample_msssim(view.sampler, m.pairs, monitor_seed(view.split_id))
        checks = apply_rule(
            mon.classes,
            dict(zip(names, values, strict=True)),
            thresholds,
            m.patience,
            m.rise,
            step >= warm_from(m, view.cfg.train.steps),
        )
        mon.curve.append(
            {
                "step": step,
                "branch": mon.rollbacks,
                "values": {c.name: round(c.value, 6) for c in checks},
                "status": {c.name: c.status for c in checks},
            }
        )
        keys = [metric_key(n, c) for n, c in zip(names, spec.classes, strict=True)]
        view.run.log_metrics(
            {
                **{f"msssim/{k}": c.value for k, c in zip(keys, checks, strict=True)},
                **{f"msssim_threshold/{k}": c.threshold for k, c in zip(keys, checks, strict=True)},
                "monitor/collapsed_classes": sum(c.status == COLLAPSED for c in checks),
            },
            step=step,
        )
        if is_healthy(mon.classes):
            mon.healthy_step = step
            mon.healthy_classes = {k: dict(v) for k, v in mon.classes.items()}
            return Decision(CONTINUE, "healthy", healthy=True)
        collapsed = [c for c in checks if c.newly_collapsed]
        if not collapsed:
            return Decision(CONTINUE)

        decision = self._decide(view, mon)
        extra: dict[str, Any] = {"reason": decision.reason} if decision.action == STOP else {}
        if decision.action != CONTINUE:
            extra["restored_step"] = decision.restore_step
        if decision.action == ROLLBACK:
            extra.update(
                seed=decision.seed,
                lr=view.lr_g * float(decision.lr_scale or 1.0),
                lr_scale=decision.lr_scale,
                rollback=mon.rollbacks,
            )
        if not extra.get("reason"):
            extra.pop("reason", None)
        for c in collapsed:
            decision.events.append(
                {
                    "source": "monitor",
                    "kind": "collapse",
                    "step": step,
                    "class": c.name,
                    "value": round(c.value, 6),
                    "threshold": round(c.threshold, 6),
                    "rise": m.rise,
                    "patience": m.patience,
                    "action": m.action if decision.action == CONTINUE else decision.action,
                    **extra,
                }
            )
            log.warning(
                "split %s: class %s collapsed at step %d (MS-SSIM %.3f > %.3f): %s%s",
                view.split_id,
                c.name,
                step,
                c.value,
                c.threshold,
                decision.events[-1]["action"],
                f" to step {decision.restore_step}" if decision.restore_step is not None else "",
            )
        return decision

    @staticmethod
    def _decide(view: SplitView, mon: MonitorState) -> Decision:
        """What a collapse at this check calls for (``monitor.action`` and its limits); the
        record is rewound to the healthy check the trainer will restore."""
        m = view.cfg.monitor
        if m.action == "warn":
            return Decision(CONTINUE, "collapse (monitor.action: warn)")
        h = mon.healthy_step
        if m.action == "rollback" and mon.rollbacks < m.max_rollbacks and h is not None:
            mon.rewind(h)
            mon.rollbacks += 1
            return Decision(
                ROLLBACK,
                f"collapse: rollback {mon.rollbacks} of {m.max_rollbacks}",
                restore_step=h,
                seed=_derive_seed(view.seed, mon.rollbacks),
                lr_scale=view.lr_scale * m.rollback_lr_factor,
            )
        reason = ""
        if m.action == "rollback":
            reason = (
                f"all {m.max_rollbacks} rollbacks used"
                if h is not None
                else "no healthy checkpoint to roll back to"
            )
        # The first check is always healthy (a class must be armed before it can collapse),
        # so there is a healthy step by the time anything collapses; None only guards state
        # from elsewhere.
        if h is not None:
            mon.rewind(h)
        return Decision(STOP, reason, restore_step=h)


def _derive_seed(seed: int, rollback: int) -> int:
    """A new, reproducible seed per rollback."""
    ss = np.random.SeedSequence([int(seed), int(rollback), 0x0C011A95])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> 1)
