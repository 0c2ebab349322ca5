"""The training loop: a pack of K splits stepped together (K = 1: a split trained alone).

Each split of the pack is a :class:`~acgan.train.run.SplitRun` (data, seed, state, checkpoint
directory, resume, MLflow child run, outputs). One :func:`~acgan.train.step.train_step`
advances every active split by one step — the split's own modules for a pack of one, the
batched model of :mod:`acgan.train.packed` for more — then each split logs, runs its hooks
(acting on their decisions), samples and checkpoints on its own step counter (a rollback moves
one split's counter back without touching the others). A split that finishes or stops leaves
the pack, and the others continue as a smaller pack.

With ``retrain`` (``monitor.retrain_collapsed``), a split whose collapse monitor left classes
collapsed at the end is trained once more from scratch with a new seed (attempt 1) into the
same output directory, which records the first attempt (``train.json``: ``retrained_from``).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from acgan.config import Config
from acgan.devices import resolve_device
from acgan.progress import progress_bar
from acgan.tracking import NullTracker, Tracker
from acgan.train.run import SplitRun, StepHook, TrainResult
from acgan.train.state import resolve_amp
from acgan.train.step import Nets, SingleNets, StepRecipe, train_step

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _graceful_sigterm() -> Iterator[dict[str, bool]]:
    """A pod being evicted gets SIGTERM: finish the step, checkpoint, then exit."""
    flag = {"term": False}
    try:
        previous = signal.signal(signal.SIGTERM, lambda *_: flag.__setitem__("term", True))
    except ValueError:  # not the main thread (e.g. inside a test runner thread)
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def _nets(runs: Sequence[SplitRun], amp: bool) -> Nets:
    if len(runs) == 1:
        return SingleNets([runs[0].state])
    from acgan.train.packed import PackedNets  # torch.func: only when packing

    return PackedNets([r.state for r in runs], amp)


def _loop(runs: list[SplitRun], hooks: list[StepHook], amp: bool, progress: bool) -> float:
    """Step the pack until every split is done; returns the loop's seconds."""
    cfg = runs[0].cfg
    t = cfg.train
    recipe = StepRecipe.from_config(t, amp)
    ids = [r.split_id for r in runs]
    bar = progress_bar(
        total=t.steps * len(runs),
        initial=sum(min(r.state.step, t.steps) for r in runs),
        desc=f"train split {ids[0]}" if len(runs) == 1 else f"train splits {ids} (packed)",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    t0 = time.perf_counter()
    try:
        with _graceful_sigterm() as sig:
            active = [r for r in runs if not r.done()]
            while active:
                nets = _nets(active, amp)
                data = [r.data for r in active]
                while all(not r.done() for r in active):
                    figures = train_step(nets, data, recipe)
                    due = []
                    for i, r in enumerate(active):
                        r.acc += figures[i]
                        r.count += 1
                        r.state.step += 1
                        if r.state.step % t.log_every == 0 or r.state.step == t.steps:
                            due.append(r)
                    if due:  # one host transfer for every split due
                        rows = torch.stack([r.acc / r.count for r in due]).tolist()
                        now = time.perf_counter()
                        last = [r.log(row, t0, now) for r, row in zip(due, rows, strict=True)]
                        bar.set_postfix(
                            d=f"{last[-1]['loss_d']:.2f}",
                            g=f"{last[-1]['loss_g']:.2f}",
                            acc=f"{last[-1]['d_acc_real']:.2f}",
                        )
                    bar.update(len(active))
                    term = sig["term"]  # read once: every split checkpoints, or none
                    for r in active:
                        r.after_step(hooks, term)
                    if term:
                        raise KeyboardInterrupt("SIGTERM: checkpoint saved, exiting")
                active = [r for r in active if not r.done()]
    finally:
        bar.close()
    return time.perf_counter() - t0


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
    retrain: bool = False,
    retrained_from: dict[int, dict[str, Any]] | None = None,
) -> list[TrainResult]:
    """Train (or resume) ``split_ids`` together on one device; split ``i`` writes
    ``out_dirs[i]``. The splits of a pack of more than one must have the same number of
    classes. With ``retrain``, splits left collapsed are trained once more (see above)."""
    tracker = tracker or NullTracker()
    device = resolve_device(cfg.train.device, "train.device")
    amp = resolve_amp(cfg.train.amp, device)  # bf16 only where the hardware has it
    runs: list[SplitRun] = []
    # Each split is one stage (acgan.lineage.stage): its run ends FINISHED with the block, or
    # FAILED / KILLED (Ctrl-C, SIGTERM) when it raises.
    with contextlib.ExitStack() as stages:
        for sid, out in zip(split_ids, out_dirs, strict=True):
            r = SplitRun(
                cfg, sid, splits_dir, out, checkpoint_root, tracker, parent_run_id, attempt,
                device, stages,
            )  # fmt: skip
            # A split trained alone draws D's dropout from the process-wide stream; in a pack,
            # each from its own (started from the same state: a checkpoint continues in either).
            r.resume(private_dropout=len(split_ids) > 1)
            r.retrained_from = (retrained_from or {}).get(sid)
            parent_run_id = r.parent.run_id  # the pack's splits share the pipeline run
            runs.append(r)
        seconds = _loop(runs, list(hooks), amp, progress)
        pack = [r.split_id for r in runs] if len(runs) > 1 else None
        results = [r.finish(amp, seconds, pack) for r in runs]
    again = [res for res in results if retrain and attempt == 0 and res.collapsed]
    if not again:
        return results
    for res in again:
        log.warning(
            "split %d: classes %s collapsed; retraining once from scratch with a new seed "
            "(monitor.retrain_collapsed)",
            res.split_id,
            ", ".join(res.collapsed),
        )
    redone = train_pack(
        cfg,
        [res.split_id for res in again],
        splits_dir,
        [res.out_dir for res in again],
        checkpoint_root,
        tracker,
        parent_run_id=runs[0].parent.run_id,
        attempt=1,
        progress=progress,
        hooks=hooks,
        retrained_from={res.split_id: _first_attempt(res) for res in again},
    )
    by_id = {res.split_id: res for res in redone}
    return [by_id.get(res.split_id, res) for res in results]


def _first_attempt(res: TrainResult) -> dict[str, Any]:
    """What the retrained split's ``train.json`` records of the run it replaces."""
    return {
        "attempt": res.attempt,
        "step": res.step,
        "run_id": res.run_id,
        "collapsed_classes": res.collapsed,
        "events": [e for e in res.events if e.get("source") == "monitor"],
    }


def train_split(
    cfg: Config,
    split_id: int,
    splits_dir: Path,
    out_dir: Path,
    checkpoint_root: Path,
    tracker: Tracker | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Train (or resume) split ``split_id`` for ``cfg.train.steps`` steps; write ``out_dir``
    (a pack of one; keyword arguments as :func:`train_pack`)."""
    (result,) = train_pack(
        cfg, [split_id], splits_dir, [out_dir], checkpoint_root, tracker, **kwargs
    )
    return result
