"""The in-training collapse monitor: a step hook of :func:`acgan.train.loop.train_split`.

Every ``monitor.every`` steps it measures each class (see :mod:`acgan.monitor.detector`),
logs the curves, and when a class collapses it acts as ``monitor.action`` says:

* ``warn``: record the event and carry on;
* ``stop``: restore the last healthy checkpoint and end training; that checkpoint's weights
  become the split's output, and a re-run of the same training does not continue past it;
* ``rollback``: restore the last healthy checkpoint, draw a new seed for the batches and noise,
  multiply the learning rate by ``monitor.rollback_lr_factor``, and continue; after
  ``monitor.max_rollbacks`` rollbacks a further collapse stops training as ``stop`` does.

A *healthy* check is one at which no class is collapsing; there is a checkpoint of each one,
protected from pruning (``state.extra["protect"]``), so there is always one to go back to. The
monitor writes it unless the step is one the trainer checkpoints anyway right after its hooks
(multiples of ``train.checkpoint_every``, the last step): with the default cadences
(``monitor.every`` = ``train.checkpoint_every`` = 100) the monitor adds no checkpoint writes.
Checkpoints newer than the one restored belong to the abandoned branch and are deleted, so a
crash after a rollback resumes on the new branch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from acgan import checkpoint
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

if TYPE_CHECKING:  # the trainer imports this module; the types are only for the checker
    from acgan.config import Config
    from acgan.train.loop import LoopContext

log = logging.getLogger(__name__)

STATE_KEY = "monitor"  # ctx.state.extra[STATE_KEY]: the monitor's state, saved in checkpoints
STOPPED_KEY = "stopped"  # ctx.state.extra[STOPPED_KEY]: the trainer does not continue a run


class CollapseMonitor:
    """A :class:`acgan.train.loop.StepHook` that watches each class for mode collapse.

    The hook keeps **no per-split state of its own**: everything it reads and writes goes
    through the :class:`~acgan.train.loop.LoopContext` it is called with —

    * ``ctx.cfg.monitor`` (pairs, patience, action, rollback settings) and ``ctx.cfg.train``
      (``checkpoint_every``, ``steps``, ``keep_checkpoints``: the trainer is expected to save
      a checkpoint after its hooks at multiples of ``checkpoint_every`` and at the last step,
      as :func:`~acgan.train.loop.train_split` does);
    * ``ctx.state``: ``sampler`` (measured), ``step``, ``seed``, ``lr``, ``gen`` (re-seeded at a
      rollback), ``opt_g`` / ``opt_d`` (learning rate), ``to_checkpoint`` /
      ``load_checkpoint`` (healthy checkpoints and their restore) and ``extra`` (the monitor's
      state under ``"monitor"``, persisted in every checkpoint, so a resumed run keeps its
      streaks, curve and rollback count);
    * ``ctx.data.spec.class_names``, ``ctx.meta["split_id"]`` (the fixed latent codes),
      ``ctx.ckpt_dir``, ``ctx.run`` (MLflow) and ``ctx.events`` (-> ``history.json``).

    So one instance can serve several splits trained in one process (the packed trainer):
    call it with each split's own LoopContext. Each class's threshold comes from its own
    real-image reference (the split plan's, given at construction).
    """

    def __init__(self, references: Mapping[int, float], every: int) -> None:
        self.references = {int(c): float(v) for c, v in references.items()}
        self.every = int(every)

    @classmethod
    def from_config(cls, cfg: Config, references: Mapping[int, float]) -> CollapseMonitor:
        """The hook for ``cfg.monitor`` and the real-image MS-SSIM of each dataset class."""
        return cls(references, cfg.monitor.every)

    def __call__(self, ctx: LoopContext) -> str | None:
        m = ctx.cfg.monitor
        state, step = ctx.state, ctx.state.step
        mon = state.extra.setdefault(STATE_KEY, self.initial_state())
        names = list(ctx.data.spec.class_names)
        thresholds = thresholds_for(m, ctx.data.spec.classes, names, self.references)
        values = sample_msssim(state.sampler, m.pairs, monitor_seed(ctx.meta["split_id"]))
        checks = apply_rule(
            mon["classes"],
            dict(zip(names, values, strict=True)),
            thresholds,
            m.patience,
            m.rise,
            step >= warm_from(m, ctx.cfg.train.steps),
        )
        mon["curve"].append(
            {
                "step": step,
                "branch": mon["rollbacks"],
                "values": {c.name: round(c.value, 6) for c in checks},
                "status": {c.name: c.status for c in checks},
            }
        )
        keys = [metric_key(n, c) for n, c in zip(names, ctx.data.spec.classes, strict=True)]
        ctx.run.log_metrics(
            {
                **{f"msssim/{k}": c.value for k, c in zip(keys, checks, strict=True)},
                **{f"msssim_threshold/{k}": c.threshold for k, c in zip(keys, checks, strict=True)},
                "monitor/collapsed_classes": sum(c.status == COLLAPSED for c in checks),
            },
            step=step,
        )
        if is_healthy(mon["classes"]):
            self._save_healthy(ctx, mon)
        collapsed = [c for c in checks if c.newly_collapsed]
        if not collapsed:
            return None

        action, extra = m.action, {}
        if action == "rollback" and mon["rollbacks"] >= m.max_rollbacks:
            action, extra = "stop", {"reason": f"all {m.max_rollbacks} rollbacks used"}
        if action == "rollback" and mon["healthy_step"] is None:
            action, extra = "stop", {"reason": "no healthy checkpoint to roll back to"}
        if action == "rollback":
            extra = self._rollback(ctx, mon)
        elif action == "stop":
            extra = {**extra, **self._stop(ctx, mon)}
        for c in collapsed:
            event = {
                "source": "monitor",
                "kind": "collapse",
                "step": step,
                "class": c.name,
                "value": round(c.value, 6),
                "threshold": round(c.threshold, 6),
                "rise": m.rise,
                "patience": m.patience,
                "action": action,
                **extra,
            }
            ctx.events.append(event)
            log.warning(
                "split %s: class %s collapsed at step %d (MS-SSIM %.3f > %.3f): %s%s",
                ctx.meta["split_id"],
                c.name,
                step,
                c.value,
                c.threshold,
                action,
                f" to step {extra['restored_step']}" if "restored_step" in extra else "",
            )
        state.extra["events"] = ctx.events
        if action == "rollback":
            # Rewrite the restored step's checkpoint with the new branch's seed, learning rate,
            # events and rollback count: a crash now resumes on the new branch, and a later
            # rollback to it lowers the learning rate again rather than starting over.
            checkpoint.save(
                state.to_checkpoint(ctx.meta), checkpoint.step_path(ctx.ckpt_dir, state.step)
            )
        ctx.run.log_metrics({"monitor/events": _monitor_events(ctx.events)}, step=step)
        ctx.run.log_dict(
            [e for e in ctx.events if e.get("source") == "monitor"], "monitor/events.json"
        )
        return "stop" if action == "stop" else None

    def initial_state(self) -> dict[str, Any]:
        return {
            "classes": {},
            "curve": [],
            "healthy_step": None,
            "rollbacks": 0,
        }

    # -- actions ---------------------------------------------------------------------------

    def _save_healthy(self, ctx: LoopContext, mon: dict[str, Any]) -> None:
        """Checkpoint this step and protect it from pruning (the previous one loses that)."""
        step, t = ctx.state.step, ctx.cfg.train
        mon["healthy_step"] = step
        ctx.state.extra["protect"] = [step]
        if step % t.checkpoint_every == 0 or step >= t.steps:
            return  # the trainer saves this step itself, right after the hooks
        ctx.state.extra["events"] = ctx.events
        path = checkpoint.step_path(ctx.ckpt_dir, step)
        checkpoint.save(ctx.state.to_checkpoint(ctx.meta), path)
        checkpoint.prune(ctx.ckpt_dir, ctx.cfg.train.keep_checkpoints, {path})

    def _restore(self, ctx: LoopContext, mon: dict[str, Any]) -> int | None:
        """Load the last healthy checkpoint into ``ctx.state``; keep the live records.

        The first check is always healthy (a class must be armed before it can collapse), so
        there is a healthy step by the time anything collapses; None only guards state from
        elsewhere.
        """
        h = mon["healthy_step"]
        if h is None:
            return None
        path = checkpoint.step_path(ctx.ckpt_dir, h)
        live = ctx.state.extra
        ckpt = checkpoint.load(path, map_location=ctx.state.device)
        ctx.state.load_checkpoint(ckpt, str(path))
        # load_checkpoint replaced ``extra`` with the checkpoint's. The curve, the events and
        # the rollback count must outlive the restore; the class states are those at step h.
        saved = (ckpt.get("extra") or {}).get(STATE_KEY) or {}
        mon["classes"] = {k: dict(v) for k, v in saved.get("classes", {}).items()}
        for entry in mon["curve"]:
            if entry["step"] > h:
                entry["discarded"] = True  # not in the history of the weights kept
        history = live.get("history")
        if history is not None:
            # The trainer appends to this very list: truncate it in place. The losses of the
            # abandoned steps stay in MLflow.
            history[:] = [r for r in history if r["step"] <= h]
            ctx.state.extra["history"] = history
        ctx.state.extra.update({STATE_KEY: mon, "events": ctx.events, "protect": [h]})
        for step, p in checkpoint.list_steps(ctx.ckpt_dir):
            if step > h:
                p.unlink(missing_ok=True)
        return h

    def _rollback(self, ctx: LoopContext, mon: dict[str, Any]) -> dict[str, Any]:
        h = self._restore(ctx, mon)
        assert h is not None  # checked by the caller
        mon["rollbacks"] += 1
        state = ctx.state
        seed = _derive_seed(state.seed, mon["rollbacks"])
        state.seed = seed
        state.set_lr_scale(state.lr_scale * ctx.cfg.monitor.rollback_lr_factor)
        state.gen.manual_seed(seed)
        lr = state.base_lr[0] * state.lr_scale
        return {
            "restored_step": h,
            "seed": seed,
            "lr": lr,
            "lr_scale": state.lr_scale,
            "rollback": mon["rollbacks"],
        }

    def _stop(self, ctx: LoopContext, mon: dict[str, Any]) -> dict[str, Any]:
        h = self._restore(ctx, mon)
        ctx.state.extra[STOPPED_KEY] = True
        return {"restored_step": h}


def _derive_seed(seed: int, rollback: int) -> int:
    """A new, reproducible seed per rollback."""
    ss = np.random.SeedSequence([int(seed), int(rollback), 0x0C011A95])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> 1)


def _monitor_events(events: list[Mapping[str, Any]]) -> int:
    return sum(1 for e in events if e.get("source") == "monitor")
