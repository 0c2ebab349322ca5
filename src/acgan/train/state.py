"""Everything a split's training needs to continue exactly where it stopped.

:class:`TrainState` holds G, D, the EMA copy of G, both optimizers, the step and every random
stream. ``to_checkpoint`` / ``load_checkpoint`` turn it into a plain dict and back, so a resumed
run continues bit-for-bit as if it had never stopped (same device, same thread count).

D's dropout draws from the process-wide RNG when a split trains alone; the packed trainer gives
each split its own ``dropout_gen`` started from the same state instead. Both are saved under the
same checkpoint key, so a checkpoint continues identically in either mode (exactly on CPU).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from acgan.config import Config
from acgan.errors import CheckpointError
from acgan.models.acgan import DArch, Discriminator, GArch, Generator
from acgan.models.ensemble import GENERATOR_FORMAT
from acgan.monitor.decision import MonitorState

CHECKPOINT_FORMAT = "acgan.train/1"
log = logging.getLogger(__name__)


def amp_supported(device: torch.device) -> bool:
    """Whether bf16 autocast is fast here: CUDA with bf16 (Ampere and later), or a CPU whose
    oneDNN has a bf16 path (AVX512-BF16 / AMX). Elsewhere bf16 convolutions fall back to
    reference kernels (measured 35x slower than fp32 on an AVX2-only EPYC, see
    docs/performance.md), so mixed precision would slow training down."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    return False


def resolve_amp(requested: bool, device: torch.device) -> bool:
    """``train.amp`` as it will run: on only where :func:`amp_supported`; a request the
    hardware cannot serve trains in fp32 with a warning (the same params file runs anywhere)."""
    if requested and not amp_supported(device):
        log.warning(
            "train.amp: no fast bf16 on this %s; training in fp32 (set train.amp=false to "
            "silence this)",
            device.type,
        )
        return False
    return requested


def split_seed(base: int, split_id: int, attempt: int = 0) -> int:
    """Independent, reproducible seed per split (and per retrain attempt)."""
    return (base * 1_000_003 + split_id * 7919 + attempt * 104_729) % (2**63 - 1)


class EMA:
    """Exponential moving average of G's parameters, with the usual warm-up.

    The decay ramps as min(decay, (1 + t) / (10 + t)) so a short run is not dominated by the
    random initialisation. Buffers (BatchNorm running statistics) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.updates = 0

    def update(self, model: nn.Module) -> None:
        update_emas([self], [model])

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.model.load_state_dict(sd["model"])
        self.updates = int(sd["updates"])


@torch.no_grad()
def update_emas(emas: Sequence[EMA], models: Sequence[nn.Module]) -> None:
    """:meth:`EMA.update` of several models in a few fused kernels: one lerp per distinct
    decay (the packed trainer's splits advance together, so theirs agree) and one copy of all
    buffers. The same elementwise operations as one model at a time, bit for bit."""
    lerps: dict[float, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    buf_dst: list[torch.Tensor] = []
    buf_src: list[torch.Tensor] = []
    for ema, model in zip(emas, models, strict=True):
        ema.updates += 1
        d = min(ema.decay, (1 + ema.updates) / (10 + ema.updates))
        dst, src = lerps.setdefault(1.0 - d, ([], []))
        dst += list(ema.model.parameters())
        src += [p.detach() for p in model.parameters()]
        buf_dst += list(ema.model.buffers())
        buf_src += list(model.buffers())
    for weight, (dst, src) in lerps.items():
        torch._foreach_lerp_(dst, src, weight)
    if buf_dst:
        torch._foreach_copy_(buf_dst, buf_src)


@contextlib.contextmanager
def frozen(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Forward passes inside record no gradient for the modules' parameters. G's update
    backpropagates through D only to reach the fake images; D's own weight gradients there
    would be discarded (zeroed before D's next update); skipping them saves ~4 of the step's
    59 GFLOP (``python -m benchmarks.step_ablation``: 3% of a CPU step on 2 AVX2 cores)."""
    params = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for p, _ in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in params:
            p.requires_grad_(flag)


def make_adam(params: Any, cfg: Config, device: torch.device, lr: float) -> torch.optim.Adam:
    # The fused kernel (one launch for all parameters) exists for CUDA and CPU in torch >= 2.4;
    # it is what removes the per-parameter overhead that dominates these small models.
    kwargs: dict[str, Any] = {"lr": lr, "betas": (cfg.train.beta1, cfg.train.beta2)}
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, foreach=True, **kwargs)


@dataclass
class TrainState:
    G: Generator
    D: Discriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    ema: EMA | None
    gen: torch.Generator  # batches, labels and noise
    device: torch.device
    seed: int
    lr_scale: float  # the monitor's rollbacks multiply both learning rates by a factor
    base_lr: tuple[float, float]  # G's and D's configured learning rates
    step: int = 0
    # The record of the run so far, saved in every checkpoint (so a resume or a rollback
    # continues it): the logged figures, the events, and what the step hooks decided.
    history: list[dict[str, float]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False  # a hook ended training: a re-run reproduces the stop
    protect: int | None = None  # the healthy step a rollback returns to (never pruned)
    monitor: MonitorState | None = None  # the collapse monitor's record of this split
    # D's dropout stream when packed (None: the process-wide RNG of ``device``).
    dropout_gen: torch.Generator | None = None

    def _dropout_rng_key(self) -> str:
        return "cuda" if self.device.type == "cuda" else "torch"

    def private_dropout_rng(self) -> torch.Generator:
        """Move D's dropout stream from the process-wide RNG to a generator of this split's
        own, continuing from the same state (the packed trainer calls this)."""
        if self.dropout_gen is None:
            gen = torch.Generator(device=self.device)
            if self.device.type == "cuda":
                gen.set_state(torch.cuda.get_rng_state(self.device))
            else:
                gen.set_state(torch.get_rng_state())
            self.dropout_gen = gen
        return self.dropout_gen

    @property
    def sampler(self) -> Generator:
        """The generator to sample from: the EMA copy when there is one."""
        return self.ema.model if self.ema is not None else self.G

    def set_lr_scale(self, scale: float) -> None:
        """Both optimizers' learning rates = their configured rate x ``scale``."""
        self.lr_scale = scale
        for opt, base in ((self.opt_g, self.base_lr[0]), (self.opt_d, self.base_lr[1])):
            for group in opt.param_groups:
                group["lr"] = base * scale

    def to_checkpoint(self, meta: dict[str, Any]) -> dict[str, Any]:
        ckpt: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "seed": self.seed,
            "lr_scale": self.lr_scale,
            "G": _own(self.G.state_dict()),
            "D": _own(self.D.state_dict()),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": {"gen": self.gen.get_state(), "torch": torch.get_rng_state()},
            "extra": self._record(),
            **meta,
        }
        if self.device.type == "cuda":
            ckpt["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.dropout_gen is not None:
            ckpt["rng"][self._dropout_rng_key()] = self.dropout_gen.get_state()
        return ckpt

    def load_checkpoint(self, ckpt: dict[str, Any], where: str) -> None:
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{where}: not a training checkpoint "
                f"(format {ckpt.get('format')!r}); delete it or retrain"
            )
        try:
            self.G.load_state_dict(ckpt["G"])
            self.D.load_state_dict(ckpt["D"])
            self.opt_g.load_state_dict(ckpt["opt_g"])
            self.opt_d.load_state_dict(ckpt["opt_d"])
            if self.ema is not None and ckpt.get("ema") is not None:
                self.ema.load_state_dict(ckpt["ema"])
            self.gen.set_state(ckpt["rng"]["gen"])
            torch.set_rng_state(ckpt["rng"]["torch"])
            if self.device.type == "cuda" and "cuda" in ckpt["rng"]:
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.device)
            if self.dropout_gen is not None and self._dropout_rng_key() in ckpt["rng"]:
                self.dropout_gen.set_state(ckpt["rng"][self._dropout_rng_key()])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(
                f"{where}: checkpoint does not match this model "
                f"({str(exc).splitlines()[0][:160]}); delete it or retrain"
            ) from exc
        self.step, self.seed = int(ckpt["step"]), int(ckpt["seed"])
        self.set_lr_scale(float(ckpt["lr_scale"]))
        rec = ckpt.get("extra") or {}
        self.history = list(rec.get("history") or [])
        self.events = list(rec.get("events") or [])
        self.stopped = bool(rec.get("stopped"))
        self.protect = (rec.get("protect") or [None])[0]
        self.monitor = MonitorState.from_dict(rec.get("monitor"))

    def _record(self) -> dict[str, Any]:
        """The run's record under the checkpoint's ``extra`` key (the layout of checkpoints
        written before these fields were typed, so those still resume)."""
        rec: dict[str, Any] = {"history": self.history, "events": self.events}
        if self.monitor is not None:
            rec["monitor"] = self.monitor.to_dict()
        if self.protect is not None:
            rec["protect"] = [self.protect]
        if self.stopped:
            rec["stopped"] = True
        return rec


def _own(sd: dict[str, Any]) -> dict[str, Any]:
    """Copy tensors that view a larger storage: ``torch.save`` would otherwise write the whole
    storage into the file."""
    return {k: v.clone() if v.untyped_storage().nbytes() > v.nbytes else v for k, v in sd.items()}


def build_state(
    cfg: Config, num_classes: int, device: torch.device, seed: int, lr_scale: float = 1.0
) -> TrainState:
    """Fresh G, D, EMA and optimizers, initialised from ``seed``."""
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)
    res, ch = cfg.data.resolution, cfg.data.channels
    G = Generator(num_classes, cfg.model.latent_dim, res, ch, GArch.from_config(cfg.model))
    D = Discriminator(num_classes, res, ch, arch=DArch.from_config(cfg.model))
    G, D = G.to(device), D.to(device)
    ema = EMA(G, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    gen = torch.Generator(device=device).manual_seed(seed)
    lr_g, lr_d = base_lrs(cfg)
    return TrainState(
        G=G,
        D=D,
        opt_g=make_adam(G.parameters(), cfg, device, lr_g * lr_scale),
        opt_d=make_adam(D.parameters(), cfg, device, lr_d * lr_scale),
        ema=ema,
        gen=gen,
        device=device,
        seed=seed,
        lr_scale=lr_scale,
        base_lr=(lr_g, lr_d),
    )


def base_lrs(cfg: Config) -> tuple[float, float]:
    """G's and D's configured learning rates (``train.lr_g`` / ``lr_d``, else ``train.lr``)."""
    t = cfg.train
    return (t.lr_g if t.lr_g is not None else t.lr, t.lr_d if t.lr_d is not None else t.lr)


def generator_record(state: TrainState, meta: dict[str, Any]) -> dict[str, Any]:
    """The split's deliverable: the sampling generator's weights and what it needs to run."""
    G = state.sampler
    return {
        "format": GENERATOR_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in _own(G.state_dict()).items()},
        "num_classes": G.num_classes,
        "latent_dim": G.latent_dim,
        "resolution": G.resolution,
        "channels": G.channels,
        "arch": G.arch.to_record(),
        "ema": state.ema is not None,
        "step": state.step,
        **meta,
    }
