"""One split's training run: resume, per-step bookkeeping, hook decisions, checkpoints, outputs.

A :class:`SplitRun` is everything :func:`acgan.train.loop.train_pack` keeps per split; the
loop steps a pack of them (one, for a split trained alone) and calls :meth:`SplitRun.after_step`
on each. The step hooks (the collapse monitor) *decide*
(:class:`~acgan.monitor.decision.Decision`); :meth:`SplitRun.act` carries the decision out on
the split's typed state: healthy checkpoints, restores, reseeds, learning rates, the history.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from acgan import checkpoint
from acgan.config import Config
from acgan.data.shards import read_images
from acgan.data.splits import SplitSpec, load_plan
from acgan.io import atomic_write_json
from acgan.lineage import EXECUTION_KEYS, stage
from acgan.models.ensemble import write_generator
from acgan.models.sampling import class_grid
from acgan.monitor.decision import CONTINUE, ROLLBACK, STOP, Decision, MonitorState
from acgan.tracking import SPLIT_TAG, Run, Tracker, png_bytes
from acgan.train.state import TrainState, build_state, generator_record, split_seed
from acgan.train.step import METRIC_NAMES, SplitData

log = logging.getLogger(__name__)


@dataclass
class LoopContext:
    """What a step hook sees of a split in training (read it; act through a Decision)."""

    cfg: Config
    state: TrainState
    data: SplitData
    run: Run
    split_id: int

    @property
    def spec(self) -> SplitSpec:
        return self.data.spec

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def seed(self) -> int:
        return self.state.seed

    @property
    def lr_scale(self) -> float:
        return self.state.lr_scale

    @property
    def lr_g(self) -> float:
        return self.state.base_lr[0]

    @property
    def sampler(self) -> torch.nn.Module:
        return self.state.sampler

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.state.events

    @property
    def monitor(self) -> MonitorState:
        """The monitor's record of this split, kept (and checkpointed) by the trainer."""
        if self.state.monitor is None:
            self.state.monitor = MonitorState()
        return self.state.monitor


class StepHook(Protocol):
    """Called every ``every`` steps; returns a Decision (None: continue)."""

    every: int

    def __call__(self, ctx: LoopContext) -> Decision | None: ...


@dataclass
class TrainResult:
    split_id: int
    step: int
    resumed_from: int | None
    out_dir: Path
    run_id: str
    metrics: dict[str, float]
    stopped_early: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    collapsed: list[str] = field(default_factory=list)  # classes the monitor left collapsed
    attempt: int = 0


def train_fingerprint(cfg: Config, data_hash: str, split_id: int, attempt: int) -> str:
    """Checkpoints are reused only by a run that would train the same thing. ``train.steps``
    is left out so that raising it continues from the last checkpoint."""
    fp = cfg.fingerprint(
        "data", "split", "model", "train", "monitor", exclude=(*EXECUTION_KEYS, "train.steps")
    )
    return f"{data_hash[:12]}-{fp}-s{split_id}-a{attempt}"


def load_split_data(splits_dir: Path, split_id: int, device: torch.device) -> tuple[Any, SplitData]:
    plan = load_plan(splits_dir)
    spec = plan.split(split_id)
    data = read_images(plan.split_dir(split_id))
    local = torch.full((max(spec.classes) + 1,), -1, dtype=torch.long)
    local[torch.tensor(spec.classes)] = torch.arange(len(spec.classes))
    labels = local[data.labels]
    images = data.images
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.numel() < free // 4:  # leave room for the models and activations
            images, labels = images.to(device), labels.to(device)
    return plan, SplitData(spec, images.contiguous(), labels)


class SplitRun:
    """One split's run inside a pack (a pack of one: plain training)."""

    def __init__(
        self,
        cfg: Config,
        split_id: int,
        splits_dir: Path,
        out_dir: Path,
        checkpoint_root: Path,
        tracker: Tracker,
        parent_run_id: str | None,
        attempt: int,
        device: torch.device,
        stages: contextlib.ExitStack,
    ) -> None:
        """Opens the split's stage (its MLflow run under the pipeline's, ended by ``stages``:
        FINISHED when the pack's block succeeds, FAILED / KILLED when it raises)."""
        self.cfg, self.split_id, self.out_dir = cfg, split_id, Path(out_dir)
        plan, self.data = load_split_data(Path(splits_dir), split_id, device)
        self.data_hash = plan.data_hash
        self.seed = split_seed(cfg.train.seed, split_id, attempt)
        self.state = build_state(cfg, self.data.num_classes, device, self.seed)
        fp = train_fingerprint(cfg, plan.data_hash, split_id, attempt)
        self.ckpt_dir = Path(checkpoint_root) / f"split_{split_id}" / fp
        self.resumed_from: int | None = None
        self.stage = stages.enter_context(
            stage(
                "train",
                cfg,
                self.out_dir,
                data_hash=plan.data_hash,
                tracker=tracker,
                parent_run_id=parent_run_id,
                run_name=f"split-{split_id}" + (f"-retry{attempt}" if attempt else ""),
                tags={
                    SPLIT_TAG: split_id,
                    "acgan.train_fingerprint": fp,
                    "acgan.classes": ",".join(self.data.spec.class_names),
                },
            )
        )
        self.run, self.parent = self.stage.run, self.stage.pipeline_run
        self.meta = {  # what every checkpoint of this split carries
            "split_id": split_id,
            "classes": list(self.data.spec.classes),
            "class_names": list(self.data.spec.class_names),
            "data_hash": plan.data_hash,
            "config": cfg.record(),
            "attempt": attempt,
        }
        self.ctx = LoopContext(cfg, self.state, self.data, self.run, split_id)
        self.acc = torch.zeros(len(METRIC_NAMES), device=device)
        self.count = 0
        self.step0 = 0
        self.retrained_from: dict[str, Any] | None = None  # attempt 1: the run it replaces

    def resume(self, private_dropout: bool) -> None:
        """Load the newest checkpoint at or below ``train.steps``. A checkpoint that fails to
        load is an error naming it — silently starting over would throw compute away."""
        if private_dropout:
            self.state.private_dropout_rng()  # before loading: the checkpoint restores it
        ckpt_dir, steps = self.ckpt_dir, self.cfg.train.steps
        # A process killed while saving leaves its temp file behind (never a partial one).
        for stale in ckpt_dir.glob(".step-*.tmp") if ckpt_dir.is_dir() else ():
            stale.unlink(missing_ok=True)
        for step, path in checkpoint.iter_newest(ckpt_dir, max_step=steps):
            self.state.load_checkpoint(
                checkpoint.load(path, map_location=self.state.device), str(path)
            )
            log.info("resumed split %d from %s (step %d)", self.split_id, path, step)
            self.resumed_from = step
            break
        self.step0 = self.state.step

    def done(self) -> bool:
        return self.state.stopped or self.state.step >= self.cfg.train.steps

    # -- per step ----------------------------------------------------------------------------

    def log(self, row: list[float], t0: float, now: float) -> dict[str, float]:
        """Record the mean figures since the last log (``row``) as one history entry."""
        s = self.state.step
        figures = dict(zip(METRIC_NAMES, row, strict=True))
        figures["images_per_s"] = (s - self.step0) * self.cfg.train.batch_size / max(now - t0, 1e-9)
        self.state.history.append({"step": s, **figures})
        self.run.log_metrics(figures, step=s)
        self.acc.zero_()
        self.count = 0
        return figures

    def after_step(self, hooks: list[StepHook], term: bool) -> None:
        """The hooks (each decision carried out at once), samples and the checkpoint."""
        t, s = self.cfg.train, self.state.step
        for hook in hooks:
            if s % hook.every == 0:
                decision = hook(self.ctx)
                if decision is not None:
                    self.act(decision)
        if s % t.sample_every == 0:
            self.run.log_image(
                class_grid(self.state.sampler, names=self.meta["class_names"]),
                f"samples/step_{s:07d}.png",
            )
        if s % t.checkpoint_every == 0 or s == t.steps or self.state.stopped or term:
            self.save()

    def save(self) -> Path:
        state = self.state
        path = checkpoint.save(
            state.to_checkpoint(self.meta), checkpoint.step_path(self.ckpt_dir, state.step)
        )
        protect = set() if state.protect is None else {state.protect}
        checkpoint.prune(
            self.ckpt_dir,
            self.cfg.train.keep_checkpoints,
            {checkpoint.step_path(self.ckpt_dir, p) for p in protect},
        )
        return path

    def act(self, d: Decision) -> None:
        """Carry out a hook's decision on this split."""
        state, t = self.state, self.cfg.train
        step = state.step
        if d.healthy:
            state.protect = step
            if step % t.checkpoint_every != 0 and step < t.steps:
                self.save()  # else the checkpoint after the hooks is this one
        state.events.extend(d.events)
        if d.action == ROLLBACK:
            assert d.restore_step is not None and d.seed is not None  # Decision checks both
            self._restore(d.restore_step)
            state.seed = d.seed
            state.gen.manual_seed(d.seed)
            state.set_lr_scale(float(d.lr_scale or state.lr_scale))
            # Rewrite the restored step's checkpoint with the new branch's seed, learning
            # rate, events and monitor record: a crash now resumes on the new branch.
            checkpoint.save(
                state.to_checkpoint(self.meta), checkpoint.step_path(self.ckpt_dir, state.step)
            )
        elif d.action == STOP:
            if d.restore_step is not None:
                self._restore(d.restore_step)
            state.stopped = True
        if d.events:
            monitor_events = [e for e in state.events if e.get("source") == "monitor"]
            self.run.log_metrics({"monitor/events": len(monitor_events)}, step=step)
            self.run.log_dict(monitor_events, "monitor/events.json")
        if d.action != CONTINUE:
            log.info("split %d: %s at step %d (%s)", self.split_id, d.action, step, d.reason)

    def _restore(self, h: int) -> None:
        """Load the checkpoint of step ``h``; keep the live record (the events, the hooks'
        records, the history up to ``h``) and delete the abandoned branch's checkpoints."""
        state = self.state
        live = (state.history, state.events, state.monitor)
        path = checkpoint.step_path(self.ckpt_dir, h)
        state.load_checkpoint(checkpoint.load(path, map_location=state.device), str(path))
        history, state.events, state.monitor = live
        # The losses of the abandoned steps stay in MLflow.
        history[:] = [r for r in history if r["step"] <= h]
        state.history, state.protect = history, h
        for step, p in checkpoint.list_steps(self.ckpt_dir):
            if step > h:
                p.unlink(missing_ok=True)

    # -- the end -----------------------------------------------------------------------------

    def finish(self, amp: bool, seconds: float, pack: list[int] | None) -> TrainResult:
        """Write the split's outputs atomically into ``out_dir`` and end its MLflow run."""
        state, meta = self.state, self.meta
        history = state.history
        final = history[-1] if history else {}
        grid = class_grid(state.sampler, names=meta["class_names"])
        collapsed = state.monitor.collapsed_classes if state.monitor is not None else []
        summary: dict[str, Any] = {
            "split_id": self.split_id,
            "step": state.step,
            "resumed_from": self.resumed_from,
            "stopped_early": state.stopped,
            "metrics": final,
            "run_id": self.run.run_id,
            "parent_run_id": self.parent.run_id,
            "events": state.events,
            "seed": self.seed,
            "attempt": meta["attempt"],
            "amp": amp,
            "threads": torch.get_num_threads(),
            "train_seconds": round(seconds, 3),  # this process's loop (shared in a pack)
            "classes": meta["classes"],
            "class_names": meta["class_names"],
        }
        if collapsed:
            summary["collapsed_classes"] = collapsed
        if self.retrained_from is not None:
            summary["retrained_from"] = self.retrained_from
        extra = {"packed_with": pack} if pack else {}
        summary.update(extra)
        monitor = state.monitor.to_dict() if state.monitor is not None else None
        with self.stage.output(split_id=self.split_id, seed=self.seed, **extra) as tmp:
            # recorded where it is written; every later load checks the file against it
            summary["generator_sha256"] = write_generator(generator_record(state, meta), tmp)
            atomic_write_json(
                tmp / "history.json",
                {"history": history, "events": state.events, "monitor": monitor},
            )
            atomic_write_json(tmp / "train.json", summary)
            (tmp / "samples.png").write_bytes(png_bytes(grid))
        run = self.run
        run.log_metrics({f"final_{k}": v for k, v in final.items() if k != "step"}, step=state.step)
        run.log_image(grid, "samples/final.png")
        run.log_artifact(self.out_dir / "history.json")
        run.set_tags({"acgan.stopped_early": state.stopped, "acgan.step": state.step})
        return TrainResult(
            self.split_id, state.step, self.resumed_from, self.out_dir, run.run_id, final,
            state.stopped, state.events, collapsed, meta["attempt"],
        )  # fmt: skip
