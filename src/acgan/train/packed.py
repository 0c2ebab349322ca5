"""Packed training: K splits' AC-GANs run as one batched model on one device.

The paper's split models are small; on a GPU one split cannot fill the device and its step time
is mostly per-kernel overhead. :class:`PackedNets` runs the K splits' own
:class:`~acgan.models.acgan.Generator` / :class:`~acgan.models.acgan.Discriminator` modules as
one model: every call stacks the splits' parameters and buffers (``torch.stack``, so gradients
flow back to each split's own leaves and each split's own Adam steps them) and evaluates the
module with ``torch.func.functional_call`` under ``torch.func.vmap`` over the split dimension;
the losses are :mod:`acgan.models.losses`' under the same ``vmap``. There is no second
implementation of a layer or a loss: a model change or recipe option works packed as is.

What vmap needs to be told (checked with torch 2.14):

- BatchNorm's running statistics and spectral norm's power-iteration vectors are buffers that
  the forward pass updates in place; they are stacked per call (a batched buffer takes the
  in-place update) and copied back into each split's module after it.
- D's dropout masks are drawn outside vmap, from each split's own ``dropout_gen``, in the order
  the split's own forward pass would draw them, and handed to the modules as their ``mask``
  buffer (:class:`acgan.models.layers.Dropout`). So on the CPU a packed split draws exactly the
  masks it draws alone (``tests/test_packed.py``); on CUDA the single-split module uses
  ``F.dropout``'s fused kernel, so there the two agree in distribution, not bit for bit.
- Other randomness inside the model (``model.d_noise_std``'s Gaussian noise) runs under
  ``randomness="different"``: each split gets its own noise, from the process-wide stream.

Each split keeps everything else of its own (:class:`~acgan.train.state.TrainState`, seed and
streams, checkpoints, MLflow run, hooks, output directory): see :mod:`acgan.train.run`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from acgan.models.layers import Dropout, dropout_mask
from acgan.train.state import TrainState


class _Stacked:
    """K modules of one architecture called as one: ``(K, ...)`` inputs -> ``(K, ...)``."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list(modules)
        self.base = copy.deepcopy(self.modules[0]).to("meta")  # the structure, no storage
        # Spectral norm's power iteration writes its vectors with ``out=`` (no vmap rule):
        # it runs on each split's own module before the call (reading a parametrized weight
        # in training mode runs it, as the module's own forward would), and the batched call
        # only divides by the largest singular value (the parametrization in eval mode).
        sn = [
            name
            for name, m in self.base.named_modules()
            if ".parametrizations.weight." in name and hasattr(m, "_u")
        ]
        self._sn_owners = sorted({name.split(".parametrizations.")[0] for name in sn})
        for name in sn:
            self.base.get_submodule(name).eval()

        def call(params: dict[str, Tensor], buffers: dict[str, Tensor], *args: Tensor) -> Any:
            return functional_call(self.base, (params, buffers), args)

        self._call = vmap(call, randomness="different")

    def __call__(
        self,
        *args: Tensor,
        extra: dict[str, Tensor] | None = None,
        amp: torch.dtype | None = None,
    ) -> Any:
        """``amp``: compute in this dtype. ``torch.autocast`` has no effect inside ``vmap``
        (torch 2.14: the batching rules call the kernels below autocast; see
        pytorch/functorch#305), and a batched BatchNorm wants one dtype for its input and
        statistics, so the pack runs the whole model in ``amp``: weights cast differentiably
        (the fp32 masters get fp32 gradients), inputs and buffers cast, the buffers' updates
        (BatchNorm statistics) added to their fp32 masters; the losses stay fp32."""
        if self._sn_owners:
            with torch.no_grad():
                for m in self.modules:
                    for name in self._sn_owners:
                        m.get_submodule(name).weight  # noqa: B018 (runs the power iteration)
        named = [(dict(m.named_parameters()), dict(m.named_buffers())) for m in self.modules]
        params = {n: torch.stack([p[n] for p, _ in named]) for n in named[0][0]}
        buffers = {n: torch.stack([b[n] for _, b in named]) for n in named[0][1]}
        if amp is not None:
            args = tuple(a.to(amp) if a.is_floating_point() else a for a in args)
            params = {n: t.to(amp) if t.is_floating_point() else t for n, t in params.items()}
            before = {n: t.to(amp) if t.is_floating_point() else t for n, t in buffers.items()}
            call = {n: t.clone() for n, t in before.items()}
        else:
            before = call = buffers
        out = self._call(params, {**call, **(extra or {})}, *args)
        with torch.no_grad():  # the in-place updates (BatchNorm statistics, spectral norm)
            for n, stacked in call.items():
                for k, (_, b) in enumerate(named):
                    if amp is None or not stacked.is_floating_point():
                        b[n].copy_(stacked[k])
                    else:  # what changed, added to the fp32 master
                        b[n].add_(stacked[k].float() - before[n][k].float())
        return out


def _dropout_layers(D: nn.Module) -> list[tuple[str, float, torch.Size]]:
    """D's dropout layers in forward order: name, rate and input shape of one image (from an
    eval-mode pass, which updates no statistics and draws nothing)."""
    shapes: dict[str, torch.Size] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[Tensor, ...]) -> None:
            shapes.setdefault(name, args[0].shape[1:])

        return hook

    hooks = [
        m.register_forward_pre_hook(record(name))
        for name, m in D.named_modules()
        if isinstance(m, Dropout) and m.p > 0
    ]
    was = D.training
    try:
        D.eval()
        with torch.no_grad():
            p = next(D.parameters())
            D(torch.zeros(1, D.channels, D.resolution, D.resolution, device=p.device))
    finally:
        D.train(was)
        for h in hooks:
            h.remove()
    rates = {name: m.p for name, m in D.named_modules() if isinstance(m, Dropout)}
    return [(name, rates[name], shape) for name, shape in shapes.items()]


class PackedNets:
    """The G and D of K splits (one architecture and class count) as one batched model."""

    def __init__(self, states: Sequence[TrainState], amp: bool = False) -> None:
        self.states = list(states)
        shapes = {(s.G.num_classes, s.G.resolution, s.G.channels) for s in self.states}
        if len(shapes) != 1:
            raise ValueError(f"a pack needs splits of one shape, got {sorted(shapes)}")
        self._g = _Stacked([s.G for s in self.states])
        self._d = _Stacked([s.D for s in self.states])
        self.dropout_gens = [s.private_dropout_rng() for s in self.states]
        self.dropout = _dropout_layers(self.states[0].D)
        dev = self.states[0].device
        self.amp = torch.bfloat16 if amp else None
        self._like = torch.empty(0, device=dev, dtype=self.amp or torch.float32)

    def G(self, z: Tensor, y: Tensor) -> Tensor:
        return self._g(z, y, amp=self.amp)

    def D(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._d(x, extra=self._masks(x.shape[1]), amp=self.amp)

    def _masks(self, batch: int) -> dict[str, Tensor]:
        """Each split's masks for one D pass, drawn layer by layer from its own stream (the
        order of the split's own forward pass)."""
        per_split = [
            [dropout_mask((batch, *shape), p, self._like, g) for _, p, shape in self.dropout]
            for g in self.dropout_gens
        ]
        return {
            f"{name}.mask": torch.stack([masks[i] for masks in per_split])
            for i, (name, _, _) in enumerate(self.dropout)
        }

    def per_split(
        self, fn: Callable[..., tuple[Tensor, ...]], *args: Tensor, **kw: Any
    ) -> tuple[Tensor, ...]:
        return vmap(partial(fn, **kw))(*args)

    def mean(self, t: Tensor) -> Tensor:
        return t.mean(1)
