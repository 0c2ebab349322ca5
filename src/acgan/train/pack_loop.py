"""The packed trainer's loop: K splits stepped together, each with its own bookkeeping.

Every split of the pack is set up exactly as :func:`acgan.train.loop.train_split` sets up a
split (data, seed, state, checkpoint directory, resume, MLflow child run) and finishes with the
same output files in its own directory. In between, one :func:`acgan.train.packed.packed_step`
advances every active split by one step; then each split logs, runs its hooks, samples and
checkpoints on its own step counter (a rollback by the collapse monitor moves one split's
counter back without touching the others). A split that finishes or stops leaves the pack, and
the others continue as a smaller pack.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from acgan.config import Config
from acgan.devices import resolve_device
from acgan.io import atomic_dir, atomic_write_json
from acgan.lineage import open_pipeline_run, stage_record
from acgan.models.ensemble import write_generator
from acgan.models.sampling import class_grid
from acgan.progress import progress_bar
from acgan.tracking import SPLIT_TAG, NullTracker, Run, Tracker, png_bytes
from acgan.train.loop import (
    METRIC_NAMES,
    LoopContext,
    SplitData,
    StepHook,
    TrainResult,
    _graceful_sigterm,
    _resume,
    load_split_data,
    save_checkpoint,
    train_fingerprint,
)
from acgan.train.packed import PackedNets, check_supported, packed_step
from acgan.train.state import (
    TrainState,
    build_state,
    generator_record,
    resolve_amp,
    split_seed,
)

log = logging.getLogger(__name__)


@dataclass
class _Member:
    """One split inside a pack: what train_split keeps in local variables."""

    split_id: int
    out_dir: Path
    data_hash: str
    seed: int
    state: TrainState
    data: SplitData
    ctx: LoopContext
    run: Run
    parent_run_id: str
    resumed_from: int | None
    history: list[dict[str, float]]
    acc: torch.Tensor
    count: int = 0
    step0: int = 0
    stopped: bool = False

    def done(self, steps: int) -> bool:
        return self.stopped or self.state.step >= steps


def _open(
    cfg: Config,
    split_id: int,
    splits_dir: Path,
    out_dir: Path,
    checkpoint_root: Path,
    tracker: Tracker,
    parent: Run | None,
    parent_run_id: str | None,
    attempt: int,
    device: torch.device,
) -> tuple[_Member, Run]:
    plan, data = load_split_data(Path(splits_dir), split_id, device)
    seed = split_seed(cfg.train.seed, split_id, attempt)
    state = build_state(cfg, data.num_classes, device, seed)
    state.private_dropout_rng()  # before resuming: the checkpoint restores this stream
    fp = train_fingerprint(cfg, plan.data_hash, split_id, attempt)
    ckpt_dir = Path(checkpoint_root) / f"split_{split_id}" / fp
    resumed_from = _resume(state, ckpt_dir, cfg.train.steps)
    if parent is None:
        parent = open_pipeline_run(tracker, cfg, plan.data_hash, parent_run_id)
    run = tracker.child_run(
        parent,
        f"split-{split_id}" + (f"-retry{attempt}" if attempt else ""),
        tags={
            SPLIT_TAG: split_id,
            "acgan.train_fingerprint": fp,
            "acgan.classes": ",".join(data.spec.class_names),
        },
        params=cfg.flat(),
    )
    meta = {
        "split_id": split_id,
        "classes": list(data.spec.classes),
        "class_names": list(data.spec.class_names),
        "data_hash": plan.data_hash,
        "config": cfg.record(),
        "attempt": attempt,
    }
    ctx = LoopContext(cfg, state, data, ckpt_dir, run, meta, events=state.extra.get("events", []))
    member = _Member(
        split_id=split_id,
        out_dir=Path(out_dir),
        data_hash=plan.data_hash,
        seed=seed,
        state=state,
        data=data,
        ctx=ctx,
        run=run,
        parent_run_id=parent.run_id,
        resumed_from=resumed_from,
        history=state.extra.setdefault("history", []),
        acc=torch.zeros(len(METRIC_NAMES), device=device),
        step0=state.step,
        stopped=bool(state.extra.get("stopped")),
    )
    return member, parent


def _log(cfg: Config, due: Sequence[_Member], t0: float) -> None:
    """Log the splits due this step, reading their figures in one host transfer."""
    rows = torch.stack([m.acc for m in due]).tolist()
    now = time.perf_counter()
    for m, row in zip(due, rows, strict=True):
        s = m.state.step
        figures = {n: v / m.count for n, v in zip(METRIC_NAMES, row, strict=True)}
        figures["images_per_s"] = (s - m.step0) * cfg.train.batch_size / max(now - t0, 1e-9)
        m.history.append({"step": s, **figures})
        m.run.log_metrics(figures, step=s)
        m.acc.zero_()
        m.count = 0


def _after_step(cfg: Config, m: _Member, hooks: Sequence[StepHook], term: bool) -> None:
    """The single-split loop's per-step bookkeeping for one split (logging is batched)."""
    t, s = cfg.train, m.state.step
    for hook in hooks:
        if s % hook.every == 0 and hook(m.ctx) == "stop":
            m.stopped = True
    if s % t.sample_every == 0:
        m.run.log_image(
            class_grid(m.state.sampler, names=m.ctx.meta["class_names"]),
            f"samples/step_{s:07d}.png",
        )
    if s % t.checkpoint_every == 0 or s == t.steps or m.stopped or term:
        m.state.extra["events"] = m.ctx.events
        save_checkpoint(m.ctx, m.ctx.meta, t.keep_checkpoints)


def _finish(cfg: Config, m: _Member, pack: list[int], amp: bool, seconds: float) -> TrainResult:
    """Write the split's outputs exactly as train_split does (plus the pack it trained in)."""
    state, meta = m.state, m.ctx.meta
    final = m.history[-1] if m.history else {}
    grid = class_grid(state.sampler, names=meta["class_names"])
    summary = {
        "split_id": m.split_id,
        "step": state.step,
        "resumed_from": m.resumed_from,
        "stopped_early": m.stopped,
        "metrics": final,
        "run_id": m.run.run_id,
        "parent_run_id": m.parent_run_id,
        "events": m.ctx.events,
        "seed": m.seed,
        "attempt": meta["attempt"],
        "amp": amp,
        "threads": torch.get_num_threads(),
        "train_seconds": round(seconds, 3),  # the pack's loop, shared by its splits
        "classes": meta["classes"],
        "class_names": meta["class_names"],
        "packed_with": pack,
    }
    with atomic_dir(m.out_dir) as tmp:
        # recorded where it is written; every later load checks the file against it
        summary["generator_sha256"] = write_generator(generator_record(state, meta), tmp)
        record = stage_record(
            cfg, "train", m.data_hash, split_id=m.split_id, seed=m.seed, packed_with=pack
        )
        atomic_write_json(tmp / "config.json", record)
        atomic_write_json(
            tmp / "history.json",
            {"history": m.history, "events": m.ctx.events, "monitor": state.extra.get("monitor")},
        )
        atomic_write_json(tmp / "train.json", summary)
        (tmp / "samples.png").write_bytes(png_bytes(grid))
    m.run.log_metrics({f"final_{k}": v for k, v in final.items() if k != "step"}, step=state.step)
    m.run.log_image(grid, "samples/final.png")
    m.run.log_artifact(m.out_dir / "history.json")
    m.run.set_tags({"acgan.stopped_early": m.stopped, "acgan.step": state.step})
    m.run.end("FINISHED")
    return TrainResult(
        m.split_id,
        state.step,
        m.resumed_from,
        m.out_dir,
        m.run.run_id,
        final,
        m.stopped,
        m.ctx.events,
    )


def train_pack(
    cfg: Config,
    split_ids: Sequence[int],
    splits_dir: Path,
    out_dirs: Sequence[Path],
    checkpoint_root: Path,
    tracker: Tracker | None = None,
    *,
    parent_run_id: str | None = None,
    attempt: int = 0,
    progress: bool = True,
    hooks: Sequence[StepHook] = (),
) -> list[TrainResult]:
    """Train (or resume) ``split_ids`` together on one device as one batched model; split
    ``i`` writes ``out_dirs[i]``. The splits must have the same number of classes."""
    check_supported(cfg)
    tracker = tracker or NullTracker()
    t = cfg.train
    device = resolve_device(t.device, "train.device")
    amp = resolve_amp(t.amp, device)
    members: list[_Member] = []
    parent = None
    for sid, out in zip(split_ids, out_dirs, strict=True):
        m, parent = _open(
            cfg,
            sid,
            splits_dir,
            out,
            checkpoint_root,
            tracker,
            parent,
            parent_run_id,
            attempt,
            device,
        )
        members.append(m)
    pack = [m.split_id for m in members]
    bar = progress_bar(
        total=t.steps * len(members),
        initial=sum(min(m.state.step, t.steps) for m in members),
        desc=f"train splits {','.join(map(str, pack))} (packed)",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    status = "FAILED"
    t0 = time.perf_counter()
    try:
        with _graceful_sigterm() as sig:
            active = [m for m in members if not m.done(t.steps)]
            while active:
                nets = PackedNets([m.state for m in active])
                data = [m.data for m in active]
                try:
                    while all(not m.done(t.steps) for m in active):
                        figures = packed_step(nets, data, t.batch_size, amp)
                        torch._foreach_add_([m.acc for m in active], list(figures.unbind(0)))
                        due = []
                        for m in active:
                            m.count += 1
                            m.state.step += 1
                            if m.state.step % t.log_every == 0 or m.state.step == t.steps:
                                due.append(m)
                        if due:
                            _log(cfg, due, t0)
                            last = due[-1].history[-1]
                            bar.set_postfix(
                                d=f"{last['loss_d']:.2f}",
                                g=f"{last['loss_g']:.2f}",
                                acc=f"{last['d_acc_real']:.2f}",
                            )
                        bar.update(len(active))
                        term = sig["term"]  # read once: every split checkpoints, or none
                        for m in active:
                            _after_step(cfg, m, hooks, term)
                        if term:
                            raise KeyboardInterrupt("SIGTERM: checkpoints saved, exiting")
                finally:
                    nets.close()
                active = [m for m in active if not m.done(t.steps)]
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        bar.close()
        if status != "FINISHED":
            for m in members:
                m.run.end(status)
    seconds = time.perf_counter() - t0
    return [_finish(cfg, m, pack, amp, seconds) for m in members]
