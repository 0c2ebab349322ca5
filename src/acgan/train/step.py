"""One training step of a pack of K splits (K = 1: a split trained alone).

:func:`train_step` is the AC-GAN update — ``d_steps`` D updates, one G update, EMA — written
once. It sees the pack through :class:`Nets`: tensors carry a leading split dimension K, G and
D map them split by split, and the losses of :mod:`acgan.models.losses` are evaluated per
split. Two implementations:

- :class:`SingleNets` (K = 1): the split's own modules, called as they are; exactly the
  computation of one split trained alone (the default recipe's results do not depend on it);
- :class:`acgan.train.packed.PackedNets` (K > 1): the same modules run as one batched model
  (``torch.func.functional_call`` under ``vmap``), so every recipe option works packed.

The hot loop does no host-device synchronisation: the batch indices, labels and noise are
drawn on the device from each split's own ``torch.Generator``, the decoded uint8 images live on
the device (when they fit), and the figures are returned as one device tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from acgan.config import TrainConfig
from acgan.data.splits import SplitSpec
from acgan.models.acgan import to_float
from acgan.models.losses import d_loss, g_loss
from acgan.train import augment
from acgan.train.state import TrainState, frozen, update_emas

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
    mode_seeking: float = 0.0
    mode_seeking_ref: str = "noise"

    @classmethod
    def from_config(cls, t: TrainConfig, amp: bool) -> StepRecipe:
        return cls(
            t.batch_size, amp, t.loss, t.fake_class_loss, t.class_weight, t.d_steps,
            tuple(t.augment), t.d_joint_batch, t.mode_seeking, t.mode_seeking_ref,
        )  # fmt: skip


class Nets(Protocol):
    """The K splits' G and D, seen with a leading split dimension."""

    states: Sequence[TrainState]

    def G(self, z: Tensor, y: Tensor) -> Tensor: ...  # (K, B, L), (K, B) -> (K, B, C, H, W)
    def D(self, x: Tensor) -> tuple[Tensor, Tensor]: ...  # -> (K, B), (K, B, classes)
    def per_split(
        self, fn: Callable[..., tuple[Tensor, ...]], *args: Tensor, **kw: Any
    ) -> tuple[Tensor, ...]: ...  # fn on each split's slice of args -> (K,) results
    def mean(self, t: Tensor) -> Tensor: ...  # (K, B) -> (K,)


class SingleNets:
    """A pack of one: the split's modules and losses called on its own tensors."""

    def __init__(self, states: Sequence[TrainState]) -> None:
        (self.state,) = states
        self.states = list(states)

    def G(self, z: Tensor, y: Tensor) -> Tensor:
        return self.state.G(z[0], y[0]).unsqueeze(0)

    def D(self, x: Tensor) -> tuple[Tensor, Tensor]:
        src, cls = self.state.D(x[0])
        return src.unsqueeze(0), cls.unsqueeze(0)

    def per_split(
        self, fn: Callable[..., tuple[Tensor, ...]], *args: Tensor, **kw: Any
    ) -> tuple[Tensor, ...]:
        return tuple(t.unsqueeze(0) for t in fn(*(a[0] for a in args), **kw))

    def mean(self, t: Tensor) -> Tensor:
        return t[0].mean().unsqueeze(0)


def _d_outputs(
    nets: Nets, real: Tensor, fake: Tensor, joint: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """D's source and class logits for the real and the fake batch: two forward passes (the
    paper's, each batch with its own BatchNorm statistics) or one over both."""
    if joint:
        src, cls = nets.D(torch.cat([real, fake], dim=1))
        n = real.shape[1]
        return src[:, :n], cls[:, :n], src[:, n:], cls[:, n:]
    src_r, cls_r = nets.D(real)
    src_f, cls_f = nets.D(fake)
    return src_r, cls_r, src_f, cls_f


def _augment(x: Tensor, recipe: StepRecipe, states: Sequence[TrainState]) -> list[Any]:
    """Each split's augmentation parameters, from its own stream."""
    b, side = x.shape[1], x.shape[-1]
    return [augment.draw(recipe.augment, b, side, st.gen, st.device) for st in states]


def _apply(x: Tensor, params: Sequence[Any]) -> Tensor:
    """``augment.apply`` split by split (each image's own transform: K*B images at once)."""
    if len(params) == 1:
        return augment.apply(x[0], params[0]).unsqueeze(0)
    joined = augment.Params(
        **{
            f: None if getattr(params[0], f) is None else torch.cat([getattr(p, f) for p in params])
            for f in augment.Params.__dataclass_fields__
        }
    )
    return augment.apply(x.flatten(0, 1), joined).view_as(x)


def _draw(
    st: TrainState, data: SplitData, b: int, paired: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A split's real batch, its labels, noise and fake labels, from its own stream. Drawn on
    the generator's device (a CUDA generator cannot draw CPU tensors), then moved to the
    images (a no-op when they fit on the device, the usual case). ``paired``: the second half
    of the fake labels repeats the first (the mode-seeking term compares those pairs)."""
    gen, dev = st.gen, st.device
    idx = torch.randint(0, data.images.shape[0], (b,), generator=gen, device=dev)
    idx = idx.to(data.images.device)
    real = data.images[idx].to(dev, non_blocking=True)
    y_real = data.labels[idx].to(dev, non_blocking=True)
    z = torch.randn(b, st.G.latent_dim, generator=gen, device=dev)
    if paired:
        half = torch.randint(0, data.num_classes, ((b + 1) // 2,), generator=gen, device=dev)
        y_fake = torch.cat([half, half])[:b]
    else:
        y_fake = torch.randint(0, data.num_classes, (b,), generator=gen, device=dev)
    return real, y_real, z, y_fake


def mode_seeking_loss(fake: Tensor, z: Tensor) -> Tensor:
    """MSGAN's term per split, (K,): 1 / (mean |G(z1) - G(z2)| / mean |z1 - z2| + eps) over
    the pairs (i, i + B/2) of one class; G minimises it, so different noise gives different
    images (against a class's samples settling on one colour or pose)."""
    h = fake.shape[1] // 2
    img = (fake[:, :h] - fake[:, h : 2 * h]).abs().flatten(1).mean(1)
    lat = (z[:, :h] - z[:, h : 2 * h]).abs().flatten(1).mean(1)
    return 1.0 / (img / lat + 1e-5)


def data_spread_loss(
    fake: Tensor, y_fake: Tensor, real: Tensor, y_real: Tensor, num_classes: int
) -> Tensor:
    """The mode-seeking term measured against the data, per split, (K,): for each class of
    the pairs (i, i + B/2), how far short its mean |G(z1) - G(z2)| falls of the mean distance
    between two real images of that class in the batch, as a fraction (0 once the samples are
    as spread as the data), averaged over the classes present in both batches."""
    h = fake.shape[1] // 2
    pair = (fake[:, :h] - fake[:, h : 2 * h]).abs().flatten(2).mean(2)  # (K, h)
    of_f = torch.nn.functional.one_hot(y_fake[:, :h], num_classes).to(pair.dtype)  # (K, h, n)
    f_sum, f_cnt = torch.einsum("kh,khn->kn", pair, of_f), of_f.sum(1)
    with torch.no_grad():
        flat = real.flatten(2)
        dist = torch.cdist(flat, flat, p=1) / flat.shape[2]  # (K, B, B), 0 on the diagonal
        of_r = torch.nn.functional.one_hot(y_real, num_classes).to(dist.dtype)  # (K, B, n)
        r_sum = torch.einsum("kic,kij,kjc->kc", of_r, dist, of_r)
        r_cnt = of_r.sum(1) * (of_r.sum(1) - 1)
    both = (f_cnt > 0) & (r_cnt > 0)
    target = r_sum / r_cnt.clamp(min=1)
    short = torch.relu(1 - f_sum / f_cnt.clamp(min=1) / target.clamp(min=1e-6))
    return (short * both).sum(1) / both.sum(1).clamp(min=1)


def train_step(nets: Nets, data: Sequence[SplitData], recipe: StepRecipe) -> Tensor:
    """``recipe.d_steps`` D updates and one G update of every split in the pack; returns the
    step's figures as a (K, 6) device tensor in the order of :data:`METRIC_NAMES` (those of
    the last D update). Each split's loss is a mean over its own batch, so the sum of the K
    losses has each split's gradient in its own parameters."""
    states = nets.states
    dev = states[0].device
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=recipe.amp)
    d_kw = {"loss": recipe.loss, "fake_class_loss": recipe.fake_class_loss,
            "class_weight": recipe.class_weight}  # fmt: skip

    for d_step in range(recipe.d_steps):
        last = d_step == recipe.d_steps - 1
        paired = recipe.mode_seeking > 0
        draws = [
            _draw(st, d, recipe.batch_size, paired) for st, d in zip(states, data, strict=True)
        ]
        real_u8, y_real, z, y_fake = (torch.stack(t) for t in zip(*draws, strict=True))
        real = to_float(real_u8)
        with autocast, torch.set_grad_enabled(last):  # G's graph is kept for its update only
            fake = nets.G(z, y_fake)
        d_real, d_fake = real, fake.detach()
        if recipe.augment:
            params = _augment(real, recipe, states)
            d_real, d_fake = _apply(d_real, params), _apply(d_fake, params)
        with autocast:
            src_r, cls_r, src_f, cls_f = _d_outputs(nets, d_real, d_fake, recipe.d_joint_batch)
            loss_d, _, _ = nets.per_split(
                d_loss, src_r.float(), cls_r.float(), y_real, src_f.float(), cls_f.float(),
                y_fake, **d_kw,
            )  # fmt: skip
        for st in states:
            st.opt_d.zero_grad(set_to_none=True)
        loss_d.sum().backward()
        for st in states:
            st.opt_d.step()

    g_in = fake
    if recipe.augment:
        g_in = _apply(fake, _augment(fake, recipe, states))
    with autocast, frozen([st.D for st in states]):
        src_g, cls_g = nets.D(g_in)
        loss_g, _, _ = nets.per_split(
            g_loss, src_g.float(), cls_g.float(), y_fake, loss=recipe.loss,
            class_weight=recipe.class_weight,
        )  # fmt: skip
        if recipe.mode_seeking > 0:
            if recipe.mode_seeking_ref == "data":
                ms = data_spread_loss(fake.float(), y_fake, real, y_real, cls_g.shape[-1])
            else:
                ms = mode_seeking_loss(fake.float(), z)
            loss_g = loss_g + recipe.mode_seeking * ms
    for st in states:
        st.opt_g.zero_grad(set_to_none=True)
    loss_g.sum().backward()
    for st in states:
        st.opt_g.step()
    with_ema = [st for st in states if st.ema is not None]
    if with_ema:
        update_emas([st.ema for st in with_ema], [st.G for st in with_ema])

    with torch.no_grad():
        return torch.stack(
            [
                loss_d.detach(),
                loss_g.detach(),
                nets.mean(torch.sigmoid(src_r.detach().float())),
                nets.mean(torch.sigmoid(src_f.detach().float())),
                nets.mean((cls_r.detach().argmax(-1) == y_real).float()),
                nets.mean((cls_f.detach().argmax(-1) == y_fake).float()),
            ],
            dim=1,
        )


def step_split(state: TrainState, data: SplitData, recipe: StepRecipe) -> Tensor:
    """One step of a split trained alone; its figures as a (6,) device tensor."""
    return train_step(SingleNets([state]), [data], recipe)[0]
