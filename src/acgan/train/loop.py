"""Training one split's AC-GAN: resume, the hot loop, checkpoints, logging, outputs.

The hot loop does no host-device synchronisation: the batch indices, labels and noise are
drawn on the device from the split's own ``torch.Generator``, the decoded uint8 images live on
the device (when they fit), and the per-step figures are summed in one device tensor that is
read once every ``train.log_every`` steps.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from acgan import checkpoint
from acgan.config import Config, TrainConfig
from acgan.data.shards import read_images
from acgan.data.splits import SplitSpec, load_plan
from acgan.devices import resolve_device
from acgan.io import atomic_dir, atomic_write_json
from acgan.lineage import EXECUTION_KEYS, open_pipeline_run, stage_record
from acgan.models.acgan import to_float
from acgan.models.ensemble import write_generator
from acgan.models.losses import d_loss, g_loss
from acgan.models.sampling import class_grid
from acgan.progress import progress_bar
from acgan.tracking import SPLIT_TAG, NullTracker, Run, Tracker, png_bytes
from acgan.train import augment
from acgan.train.state import (
    TrainState,
    build_state,
    frozen,
    generator_record,
    resolve_amp,
    split_seed,
)

log = logging.getLogger(__name__)

METRIC_NAMES = ("loss_d", "loss_g", "d_real_prob", "d_fake_prob", "d_acc_real", "d_acc_fake")


@dataclass
class SplitData:
    """A split's images decoded once into one uint8 tensor (on the device when it fits)."""

    spec: SplitSpec
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64, split-local 0..k-1

    @property
    def num_classes(self) -> int:
        return len(self.spec.classes)


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


@dataclass
class LoopContext:
    """What a step hook (the collapse monitor) can see and act on."""

    cfg: Config
    state: TrainState
    data: SplitData
    ckpt_dir: Path
    run: Run
    meta: dict[str, Any]  # what every checkpoint of this split carries (see save_checkpoint)
    events: list[dict[str, Any]] = field(default_factory=list)


class StepHook(Protocol):
    """Called every ``every`` steps; returns ``"stop"`` to end training, else None."""

    every: int

    def __call__(self, ctx: LoopContext) -> str | None: ...


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


def train_fingerprint(cfg: Config, data_hash: str, split_id: int, attempt: int) -> str:
    """Checkpoints are reused only by a run that would train the same thing. ``train.steps``
    is left out so that raising it continues from the last checkpoint."""
    fp = cfg.fingerprint(
        "data", "split", "model", "train", "monitor", exclude=(*EXECUTION_KEYS, "train.steps")
    )
    return f"{data_hash[:12]}-{fp}-s{split_id}-a{attempt}"


@dataclass(frozen=True)
class StepRecipe:
    """The ``train.*`` recipe options one step needs (see :mod:`acgan.models.losses` and
    :mod:`acgan.train.augment`)."""

    batch_size: int
    amp: bool
    loss: str = "bce"
    fake_class_loss: bool = True
    class_weight: float = 1.0
    d_steps: int = 1
    augment: tuple[str, ...] = ()
    d_joint_batch: bool = False

    @classmethod
    def from_config(cls, t: TrainConfig, amp: bool) -> StepRecipe:
        return cls(
            t.batch_size, amp, t.loss, t.fake_class_loss, t.class_weight, t.d_steps,
            tuple(t.augment), t.d_joint_batch,
        )  # fmt: skip


def _d_outputs(
    D: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor, joint: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """D's source and class logits for the real and the fake batch: two forward passes (the
    paper's, each batch with its own BatchNorm statistics) or one over both."""
    if joint:
        src, cls = D(torch.cat([real, fake]))
        n = real.shape[0]
        return src[:n], cls[:n], src[n:], cls[n:]
    src_r, cls_r = D(real)
    src_f, cls_f = D(fake)
    return src_r, cls_r, src_f, cls_f


def train_step(state: TrainState, data: SplitData, recipe: StepRecipe) -> torch.Tensor:
    """``recipe.d_steps`` D updates and one G update; returns the step's figures as a device
    tensor (those of the last D update)."""
    G, D, gen, dev = state.G, state.D, state.gen, state.device
    n, k, b = data.images.shape[0], data.num_classes, recipe.batch_size
    side = data.images.shape[-1]
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=recipe.amp)
    d_kw = {"loss": recipe.loss, "fake_class_loss": recipe.fake_class_loss,
            "class_weight": recipe.class_weight}  # fmt: skip

    for d_step in range(recipe.d_steps):
        last = d_step == recipe.d_steps - 1
        # Drawn on the generator's device (a CUDA generator cannot draw CPU tensors), then
        # moved to the images (a no-op when they fit on the device, the usual case).
        idx = torch.randint(0, n, (b,), generator=gen, device=dev).to(data.images.device)
        real = to_float(data.images[idx].to(dev, non_blocking=True))
        y_real = data.labels[idx].to(dev, non_blocking=True)
        z = torch.randn(b, G.latent_dim, generator=gen, device=dev)
        y_fake = torch.randint(0, k, (b,), generator=gen, device=dev)
        with autocast, torch.set_grad_enabled(last):  # G's graph is kept for its update only
            fake = G(z, y_fake)
        d_real, d_fake = real, fake.detach()
        if recipe.augment:
            params = augment.draw(recipe.augment, b, side, gen, dev)
            d_real, d_fake = augment.apply(d_real, params), augment.apply(d_fake, params)
        with autocast:
            src_r, cls_r, src_f, cls_f = _d_outputs(D, d_real, d_fake, recipe.d_joint_batch)
            loss_d, _, _ = d_loss(
                src_r.float(), cls_r.float(), y_real, src_f.float(), cls_f.float(), y_fake,
                **d_kw,
            )  # fmt: skip
        state.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        state.opt_d.step()

    g_in = fake
    if recipe.augment:
        g_in = augment.apply(fake, augment.draw(recipe.augment, b, side, gen, dev))
    with autocast, frozen([D]):
        src_g, cls_g = D(g_in)
        loss_g, _, _ = g_loss(
            src_g.float(), cls_g.float(), y_fake, loss=recipe.loss,
            class_weight=recipe.class_weight,
        )  # fmt: skip
    state.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    state.opt_g.step()
    if state.ema is not None:
        state.ema.update(G)

    with torch.no_grad():
        return torch.stack(
            [
                loss_d.detach(),
                loss_g.detach(),
                torch.sigmoid(src_r.detach().float()).mean(),
                torch.sigmoid(src_f.detach().float()).mean(),
                (cls_r.detach().argmax(1) == y_real).float().mean(),
                (cls_f.detach().argmax(1) == y_fake).float().mean(),
            ]
        )


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


def _resume(state: TrainState, ckpt_dir: Path, steps: int) -> int | None:
    """Load the newest checkpoint at or below ``steps``. A checkpoint that fails to load is an
    error naming it — silently starting over would throw the user's compute away."""
    # A process killed while saving leaves its temp file behind (never a partial checkpoint).
    for stale in Path(ckpt_dir).glob(".step-*.tmp") if Path(ckpt_dir).is_dir() else ():
        stale.unlink(missing_ok=True)
    for step, path in checkpoint.iter_newest(ckpt_dir, max_step=steps):
        state.load_checkpoint(checkpoint.load(path, map_location=state.device), str(path))
        log.info("resumed split from %s (step %d)", path, step)
        return step
    return None


def save_checkpoint(ctx: LoopContext, meta: dict[str, Any], keep: int) -> Path:
    path = checkpoint.save(
        ctx.state.to_checkpoint(meta), checkpoint.step_path(ctx.ckpt_dir, ctx.state.step)
    )
    protect = {checkpoint.step_path(ctx.ckpt_dir, s) for s in ctx.state.extra.get("protect", [])}
    checkpoint.prune(ctx.ckpt_dir, keep, protect)
    return path


def train_split(
    cfg: Config,
    split_id: int,
    splits_dir: Path,
    out_dir: Path,
    checkpoint_root: Path,
    tracker: Tracker | None = None,
    *,
    parent_run_id: str | None = None,
    attempt: int = 0,
    progress: bool = True,
    hooks: Sequence[StepHook] = (),
) -> TrainResult:
    """Train (or resume) split ``split_id`` for ``cfg.train.steps`` steps; write ``out_dir``."""
    tracker = tracker or NullTracker()
    device = resolve_device(cfg.train.device, "train.device")
    plan, data = load_split_data(Path(splits_dir), split_id, device)
    seed = split_seed(cfg.train.seed, split_id, attempt)
    state = build_state(cfg, data.num_classes, device, seed)
    fp = train_fingerprint(cfg, plan.data_hash, split_id, attempt)
    ckpt_dir = Path(checkpoint_root) / f"split_{split_id}" / fp
    resumed_from = _resume(state, ckpt_dir, cfg.train.steps)

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
    history: list[dict[str, float]] = state.extra.setdefault("history", [])
    meta = {
        "split_id": split_id,
        "classes": list(data.spec.classes),
        "class_names": list(data.spec.class_names),
        "data_hash": plan.data_hash,
        "config": cfg.record(),
        "attempt": attempt,
    }
    ctx = LoopContext(cfg, state, data, ckpt_dir, run, meta, events=state.extra.get("events", []))
    t_cfg = cfg.train
    acc = torch.zeros(len(METRIC_NAMES), device=device)
    # A hook that ended training (the collapse monitor's "stop") marks the state, so that
    # re-running the same training reproduces its output instead of training past the stop.
    count, stopped, status = 0, bool(state.extra.get("stopped")), "FAILED"
    bar = progress_bar(
        total=t_cfg.steps,
        initial=state.step,
        desc=f"train split {split_id}",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    amp = resolve_amp(t_cfg.amp, device)  # bf16 only where the hardware has it
    recipe = StepRecipe.from_config(t_cfg, amp)
    t0, step0 = time.perf_counter(), state.step
    try:
        with _graceful_sigterm() as sig:
            while not stopped and state.step < t_cfg.steps:
                acc += train_step(state, data, recipe)
                count += 1
                state.step += 1
                bar.update(1)
                s = state.step
                if s % t_cfg.log_every == 0 or s == t_cfg.steps:
                    figures = dict(zip(METRIC_NAMES, (acc / count).tolist(), strict=True))
                    figures["images_per_s"] = (
                        (s - step0) * t_cfg.batch_size / max(time.perf_counter() - t0, 1e-9)
                    )
                    history.append({"step": s, **figures})
                    run.log_metrics(figures, step=s)
                    bar.set_postfix(
                        d=f"{figures['loss_d']:.2f}",
                        g=f"{figures['loss_g']:.2f}",
                        acc=f"{figures['d_acc_real']:.2f}",
                    )
                    acc.zero_()
                    count = 0
                for hook in hooks:
                    if s % hook.every == 0 and hook(ctx) == "stop":
                        stopped = True
                if s % t_cfg.sample_every == 0:
                    run.log_image(
                        class_grid(state.sampler, names=meta["class_names"]),
                        f"samples/step_{s:07d}.png",
                    )
                if s % t_cfg.checkpoint_every == 0 or s == t_cfg.steps or stopped or sig["term"]:
                    state.extra["events"] = ctx.events
                    save_checkpoint(ctx, meta, t_cfg.keep_checkpoints)
                if stopped:
                    break
                if sig["term"]:
                    raise KeyboardInterrupt("SIGTERM: checkpoint saved, exiting")
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        bar.close()
        if status != "FINISHED":
            run.end(status)

    final = history[-1] if history else {}
    grid = class_grid(state.sampler, names=meta["class_names"])
    summary = {
        "split_id": split_id,
        "step": state.step,
        "resumed_from": resumed_from,
        "stopped_early": stopped,
        "metrics": final,
        "run_id": run.run_id,
        "parent_run_id": parent.run_id,
        "events": ctx.events,
        "seed": seed,
        "attempt": attempt,
        "amp": amp,
        "threads": torch.get_num_threads(),
        "train_seconds": round(time.perf_counter() - t0, 3),  # this process's loop (benchmarks)
        "classes": meta["classes"],
        "class_names": meta["class_names"],
    }
    with atomic_dir(out_dir) as tmp:
        # recorded where it is written; every later load checks the file against it
        summary["generator_sha256"] = write_generator(generator_record(state, meta), tmp)
        record = stage_record(cfg, "train", plan.data_hash, split_id=split_id, seed=seed)
        atomic_write_json(tmp / "config.json", record)
        atomic_write_json(
            tmp / "history.json",
            {"history": history, "events": ctx.events, "monitor": state.extra.get("monitor")},
        )
        atomic_write_json(tmp / "train.json", summary)
        (tmp / "samples.png").write_bytes(png_bytes(grid))
    run.log_metrics({f"final_{k}": v for k, v in final.items() if k != "step"}, step=state.step)
    run.log_image(grid, "samples/final.png")
    run.log_artifact(Path(out_dir) / "history.json")
    run.set_tags({"acgan.stopped_early": stopped, "acgan.step": state.step})
    run.end("FINISHED")
    return TrainResult(
        split_id, state.step, resumed_from, Path(out_dir), run.run_id, final, stopped, ctx.events
    )
