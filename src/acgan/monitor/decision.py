"""What a step hook tells the trainer, and the collapse monitor's own record.

The monitor *detects*; the trainer *acts*. A hook returns a :class:`Decision` (continue, stop
or rollback, with its reason and what the action needs: the step to restore, the new seed and
learning-rate scale); the trainer (:mod:`acgan.train.run`) carries it out: it restores and
deletes checkpoints, reseeds, changes learning rates and truncates its history.

:class:`MonitorState` is the monitor's memory of one split (each class's rule state, the
curve of checks, the last healthy step, the rollback count). The trainer keeps it in its typed
state and saves it in every checkpoint, so a resumed run keeps its streaks; only the monitor
changes it. This module imports nothing of the trainer's, so the trainer can import it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from acgan.monitor.status import COLLAPSED

CONTINUE = "continue"
STOP = "stop"
ROLLBACK = "rollback"


@dataclass
class Decision:
    """A step hook's verdict on the split at this step.

    ``action``: ``continue``, ``stop`` (restore ``restore_step`` if given, end training) or
    ``rollback`` (restore ``restore_step``, continue with ``seed`` and ``lr_scale``).
    ``healthy``: this step is a healthy one to go back to: the trainer keeps a checkpoint of
    it, protected from pruning. ``events``: records for ``history.json`` and MLflow.
    """

    action: str = CONTINUE
    reason: str = ""
    healthy: bool = False
    restore_step: int | None = None
    seed: int | None = None
    lr_scale: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.action not in (CONTINUE, STOP, ROLLBACK):
            raise ValueError(f"unknown hook action {self.action!r}")
        if self.action == ROLLBACK and (self.restore_step is None or self.seed is None):
            raise ValueError("a rollback names the step to restore and the new seed")


@dataclass
class MonitorState:
    """The collapse monitor's record of one split (saved in the trainer's checkpoints)."""

    classes: dict[str, dict[str, Any]] = field(default_factory=dict)  # the rule's state
    curve: list[dict[str, Any]] = field(default_factory=list)  # every check
    healthy_step: int | None = None  # the last check at which no class was collapsing
    healthy_classes: dict[str, dict[str, Any]] = field(default_factory=dict)  # classes then
    rollbacks: int = 0

    @property
    def collapsed_classes(self) -> list[str]:
        """The classes whose last check left them collapsed (after any restore)."""
        return [n for n, s in self.classes.items() if s.get("status") == COLLAPSED]

    def rewind(self, step: int) -> None:
        """Back to the check at ``step`` (the healthy one the trainer restores): the rule's
        state of then; later checks stay in the curve, marked discarded."""
        self.classes = copy.deepcopy(self.healthy_classes)
        for entry in self.curve:
            if entry["step"] > step:
                entry["discarded"] = True  # not in the history of the weights kept

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "curve": self.curve,
            "healthy_step": self.healthy_step,
            "healthy_classes": self.healthy_classes,
            "rollbacks": self.rollbacks,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> MonitorState | None:
        if not d:
            return None
        return cls(
            classes={k: dict(v) for k, v in (d.get("classes") or {}).items()},
            curve=list(d.get("curve") or []),
            healthy_step=d.get("healthy_step"),
            # a checkpoint from before this field: the classes of its own (last) check
            healthy_classes={
                k: dict(v) for k, v in (d.get("healthy_classes") or d.get("classes") or {}).items()
            },
            rollbacks=int(d.get("rollbacks", 0)),
        )
