"""Packed ensemble training: K splits' AC-GANs trained as one batched model on one device.

The paper's split models are small; on a GPU one split cannot fill the device and its step time
is mostly per-kernel overhead. Here each layer of the K generators (discriminators) runs as one
kernel for all K splits: activations are laid out ``(B, K*C, H, W)``, so a ``groups=K``
convolution is K independent convolutions, BatchNorm over ``K*C`` channels is each split's own
BatchNorm, and the linear layers are batched matrix products.

Each split keeps everything of its own: a normal :class:`~acgan.train.state.TrainState` (G, D,
EMA, both Adam optimizers; the packed forward stacks the K splits' parameters every step, so the
gradients land in each split's own leaves and each split's optimizer steps them), its seed and
random streams (batches, noise and labels from ``state.gen``; D's dropout masks from
``state.dropout_gen``), checkpoints, MLflow child run, step hooks (the collapse monitor, called
with the split's own :class:`~acgan.train.loop.LoopContext`) and output directory. Drawn in the
same order from the same streams, a packed split computes what the single-split trainer
computes; only the summation order inside the grouped kernels differs
(``tests/test_packed.py`` compares the weights). That holds on the CPU; on CUDA, F.dropout uses a
fused kernel whose masks no generator call reproduces, so there the two modes agree in
distribution, not bit for bit. The loop lives in :mod:`acgan.train.pack_loop`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from acgan.config import Config
from acgan.errors import ConfigError
from acgan.models.acgan import dropout_mask, to_float
from acgan.train.loop import SplitData
from acgan.train.state import TrainState, frozen, step_adams, update_emas

# The recipe options the batched model implements, at the values it implements: the paper's
# network and losses (any dropout rate, learning rate, Adam betas and EMA).
SUPPORTED = {
    "model.g_widths": None, "model.g_upsample": "transposed5", "model.g_norm": "batch",
    "model.d_widths": None, "model.d_norm": "batch", "model.d_spectral_norm": False,
    "model.d_mbstd": False, "model.d_noise_std": 0.0, "model.equalized_lr": False,
    "train.lr_g": None, "train.lr_d": None, "train.d_steps": 1, "train.loss": "bce",
    "train.fake_class_loss": True, "train.class_weight": 1.0, "train.augment": [],
    "train.d_joint_batch": False,
}  # fmt: skip


def check_supported(cfg: Config) -> None:
    """The batched model is the paper's network: a recipe option it does not implement is a
    one-line error naming it (never silently trained as something else)."""
    flat = cfg.flat()
    for key, value in SUPPORTED.items():
        if flat[key] != value:
            raise ConfigError(
                f"{key}: {flat[key]!r} is not supported by packed training (train.pack > 1 "
                f"on CUDA trains the paper's network; it needs {value!r}); use train.pack: 1 "
                "or recipe: paper"
            )


Stacked = list[tuple[Tensor | None, Tensor | None]]  # per layer: (weight, bias) of all K splits


def _stack(tensors: Iterable[Tensor]) -> Tensor:
    return torch.stack(list(tensors))


class PackedNets:
    """The G and D of K splits (equal shapes) run as one grouped model.

    BatchNorm running statistics are shared: while the pack exists, each split's buffers are
    views into one packed buffer that the grouped BatchNorm updates in place (a checkpoint or
    rollback reads and writes them through the split's own module as usual). :meth:`close`
    gives every split its own buffers back.
    """

    def __init__(self, states: Sequence[TrainState]) -> None:
        self.states = list(states)
        self.k = len(self.states)
        shapes = {(s.G.num_classes, s.G.resolution, s.G.channels) for s in self.states}
        if len(shapes) != 1:
            raise ValueError(f"a pack needs splits of one shape, got {sorted(shapes)}")
        self.dropout_gens = [s.private_dropout_rng() for s in self.states]
        self._bn: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        for seqs in ([s.G.net for s in self.states], [s.D.features for s in self.states]):
            for layers in zip(*seqs, strict=True):
                if isinstance(layers[0], nn.BatchNorm2d):
                    self._bind(layers)

    def _bind(self, layers: Sequence[nn.Module]) -> None:
        if layers[0].momentum is None or not layers[0].track_running_stats:
            raise TypeError("packed BatchNorm supports a fixed momentum with running stats")
        packed = []
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            buf = torch.cat([getattr(m, name).reshape(-1) for m in layers])
            n = buf.numel() // self.k
            for i, m in enumerate(layers):
                view = buf[i * n : (i + 1) * n]
                setattr(m, name, view.view(()) if name == "num_batches_tracked" else view)
            packed.append(buf)
        self._bn[id(layers[0])] = (packed[0], packed[1], packed[2])

    def close(self) -> None:
        """Give each split private copies of its BatchNorm statistics again."""
        for s in self.states:
            for m in (*s.G.net, *s.D.features):
                if isinstance(m, nn.BatchNorm2d):
                    for name in ("running_mean", "running_var", "num_batches_tracked"):
                        setattr(m, name, getattr(m, name).clone())
        self._bn.clear()

    # -- parameters --------------------------------------------------------------------------

    @staticmethod
    def _stack_layers(seqs: Sequence[nn.Sequential]) -> Stacked:
        out: Stacked = []
        for layers in zip(*seqs, strict=True):
            w = getattr(layers[0], "weight", None)
            b = getattr(layers[0], "bias", None)
            out.append(
                (
                    _stack(m.weight for m in layers).flatten(0, 1) if w is not None else None,
                    _stack(m.bias for m in layers).flatten(0, 1) if b is not None else None,
                )
            )
        return out

    def stack_g(self) -> dict[str, Any]:
        Gs = [s.G for s in self.states]
        return {
            "fc_w": _stack(g.fc.weight for g in Gs),
            "fc_b": _stack(g.fc.bias for g in Gs),
            "net": self._stack_layers([g.net for g in Gs]),
        }

    def stack_d(self) -> dict[str, Any]:
        Ds = [s.D for s in self.states]
        # Both heads read the same features: one batched product computes them together.
        return {
            "features": self._stack_layers([d.features for d in Ds]),
            "head_w": torch.cat(
                [_stack(d.source.weight for d in Ds), _stack(d.classes.weight for d in Ds)], 1
            ),
            "head_b": torch.cat(
                [_stack(d.source.bias for d in Ds), _stack(d.classes.bias for d in Ds)], 1
            ),
        }

    # -- forward -----------------------------------------------------------------------------

    def generator(self, p: dict[str, Any], z: Tensor, y: Tensor) -> Tensor:
        """``z`` (K, B, latent), ``y`` (K, B) -> images (B, K*C, H, W)."""
        g0 = self.states[0].G
        batch = z.shape[1]
        x = torch.cat([F.one_hot(y, g0.num_classes).to(z.dtype), z], dim=2)
        h = F.relu(torch.baddbmm(p["fc_b"].unsqueeze(1), x, p["fc_w"].transpose(1, 2)))
        s = g0.spec
        h = h.view(self.k, batch, s.base, s.start, s.start).transpose(0, 1)
        h = h.reshape(batch, self.k * s.base, s.start, s.start)
        return self._run(h, g0.net, p["net"])

    def discriminator(self, p: dict[str, Any], x: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, K*C, H, W) -> (source logits (K, B), class logits (K, B, classes))."""
        batch = x.shape[0]
        h = self._run(x, self.states[0].D.features, p["features"])
        h = h.view(batch, self.k, -1).transpose(0, 1)  # each split's flatten(1) order
        out = torch.baddbmm(p["head_b"].unsqueeze(1), h, p["head_w"].transpose(1, 2))
        return out[..., 0], out[..., 1:]

    def _run(self, h: Tensor, template: nn.Sequential, params: Stacked) -> Tensor:
        k = self.k
        for m, (w, b) in zip(template, params, strict=True):
            if isinstance(m, nn.Conv2d):
                h = F.conv2d(h, w, b, m.stride, m.padding, m.dilation, groups=k * m.groups)
            elif isinstance(m, nn.ConvTranspose2d) and self._split_tconv(m):
                h = self._tconv_per_split(h, m, w, b)
            elif isinstance(m, nn.ConvTranspose2d):
                h = F.conv_transpose2d(
                    h, w, b, m.stride, m.padding, m.output_padding, k * m.groups, m.dilation
                )
            elif isinstance(m, nn.BatchNorm2d):
                rm, rv, nbt = self._bn[id(m)]
                nbt.add_(1)
                h = F.batch_norm(h, rm, rv, w, b, True, m.momentum, m.eps)
            elif isinstance(m, nn.ReLU):
                h = F.relu(h, inplace=m.inplace)
            elif isinstance(m, nn.LeakyReLU):
                h = F.leaky_relu(h, m.negative_slope, inplace=m.inplace)
            elif isinstance(m, nn.Dropout):
                h = self._dropout(h, m.p)
            elif isinstance(m, nn.Tanh):
                h = torch.tanh(h)
            else:  # a model change the packed trainer does not know yet: a bug, not bad input
                raise TypeError(f"packed training has no rule for {type(m).__name__}")
        return h

    def _split_tconv(self, m: nn.ConvTranspose2d) -> bool:
        """On the CPU, oneDNN's grouped transposed convolution was measured 20-35% slower than
        one split at a time for G's wide layers (384->192, 192->96 maps, K = 3 and 10), and
        faster for the narrow last one (96->3); on CUDA one grouped kernel saves launches."""
        return self.states[0].device.type == "cpu" and m.out_channels >= 16 and m.groups == 1

    def _tconv_per_split(
        self, h: Tensor, m: nn.ConvTranspose2d, w: Tensor, b: Tensor | None
    ) -> Tensor:
        k, batch = self.k, h.shape[0]
        xs = h.view(batch, k, m.in_channels, *h.shape[2:])
        ws = w.view(k, m.in_channels, *w.shape[1:])  # stacked (K*in, out, kh, kw) -> per split
        bs = b.view(k, -1) if b is not None else None
        outs = [
            F.conv_transpose2d(
                xs[:, i].contiguous(), ws[i], None if bs is None else bs[i], m.stride,
                m.padding, m.output_padding, 1, m.dilation,
            )
            for i in range(k)
        ]  # fmt: skip
        return torch.stack(outs, dim=1).flatten(1, 2)

    def _dropout(self, h: Tensor, p: float) -> Tensor:
        """What :class:`acgan.models.acgan.Dropout` does on the CPU, with each split's mask
        drawn from that split's own stream."""
        if p == 0:
            return h  # the single-split module draws nothing either
        batch, kc, hh, ww = h.shape
        shape = (batch, kc // self.k, hh, ww)
        masks = [dropout_mask(shape, p, h, g) for g in self.dropout_gens]
        return h * torch.stack(masks, dim=1).view_as(h)


def _bce(logits: Tensor, target: float) -> Tensor:
    t = torch.full_like(logits, target)
    return F.binary_cross_entropy_with_logits(logits, t, reduction="none").mean(1)


def _ce(logits: Tensor, y: Tensor) -> Tensor:
    k, b, c = logits.shape
    return (
        F.cross_entropy(logits.reshape(k * b, c), y.reshape(-1), reduction="none")
        .view(k, b)
        .mean(1)
    )


def packed_step(nets: PackedNets, data: Sequence[SplitData], batch_size: int, amp: bool) -> Tensor:
    """One D and one G update of every split in the pack; returns (K, 6) device figures in
    the order of ``acgan.train.loop.METRIC_NAMES``. Mirrors :func:`acgan.train.loop.train_step`
    split by split: the same draws in the same order, the same losses (per split: each split's
    loss is a mean over its own batch; their sum has each split's gradient in its parameters)."""
    states = nets.states
    dev = states[0].device
    reals, y_real, zs, y_fake = [], [], [], []
    for st, d in zip(states, data, strict=True):
        n = d.images.shape[0]
        idx = torch.randint(0, n, (batch_size,), generator=st.gen, device=dev)
        idx = idx.to(d.images.device)
        reals.append(d.images[idx].to(dev, non_blocking=True))
        y_real.append(d.labels[idx].to(dev, non_blocking=True))
        zs.append(torch.randn(batch_size, st.G.latent_dim, generator=st.gen, device=dev))
        y_fake.append(torch.randint(0, d.num_classes, (batch_size,), generator=st.gen, device=dev))
    real = to_float(torch.stack(reals, dim=1).flatten(1, 2))  # (B, K*C, H, W)
    yr, z, yf = torch.stack(y_real), torch.stack(zs), torch.stack(y_fake)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp)

    with autocast:
        fake = nets.generator(nets.stack_g(), z, yf)
        pd = nets.stack_d()
        src_r, cls_r = nets.discriminator(pd, real)
        src_f, cls_f = nets.discriminator(pd, fake.detach())
        src_r, cls_r, src_f, cls_f = src_r.float(), cls_r.float(), src_f.float(), cls_f.float()
        loss_d = (_bce(src_r, 1.0) + _bce(src_f, 0.0)) + (_ce(cls_r, yr) + _ce(cls_f, yf))
    for st in states:
        st.opt_d.zero_grad(set_to_none=True)
    loss_d.sum().backward()
    step_adams([st.opt_d for st in states])

    with autocast, frozen([st.D for st in states]):
        src_g, cls_g = nets.discriminator(nets.stack_d(), fake)
        src_g, cls_g = src_g.float(), cls_g.float()
        loss_g = _bce(src_g, 1.0) + _ce(cls_g, yf)
    for st in states:
        st.opt_g.zero_grad(set_to_none=True)
    loss_g.sum().backward()
    step_adams([st.opt_g for st in states])
    with_ema = [st for st in states if st.ema is not None]
    update_emas([st.ema for st in with_ema], [st.G for st in with_ema])

    with torch.no_grad():
        return torch.stack(
            [
                loss_d.detach(),
                loss_g.detach(),
                torch.sigmoid(src_r.detach()).mean(1),
                torch.sigmoid(src_f.detach()).mean(1),
                (cls_r.detach().argmax(-1) == yr).float().mean(1),
                (cls_f.detach().argmax(-1) == yf).float().mean(1),
            ],
            dim=1,
        )
