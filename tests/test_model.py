"""The paper's AC-GAN: shapes per resolution, architecture details, loss signs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from acgan.models.acgan import (
    D_WIDTHS,
    Discriminator,
    Dropout,
    Generator,
    dropout_mask,
    to_float,
    to_uint8,
)
from acgan.models.losses import d_loss, g_loss


@pytest.mark.parametrize("resolution", [32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(resolution: int, channels: int) -> None:
    G = Generator(10, 100, resolution, channels)
    D = Discriminator(10, resolution, channels)
    assert G.fc.in_features == 110  # the paper's 110-d input: 10 one-hot + 100 noise
    x = G(torch.randn(3, 100), torch.tensor([0, 4, 9]))
    assert x.shape == (3, channels, resolution, resolution)
    assert x.min() >= -1 and x.max() <= 1  # tanh
    src, cls = D(x)
    assert src.shape == (3,) and cls.shape == (3, 10)


def test_architecture_follows_the_paper() -> None:
    G, D = Generator(10, 100, 32, 3), Discriminator(10, 32, 3)
    tconvs = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert all(m.kernel_size == (5, 5) and m.stride == (2, 2) for m in tconvs)
    assert [m.out_channels for m in tconvs] == [192, 96, 3]
    assert isinstance(G.net[-1], nn.Tanh)
    convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert tuple(m.out_channels for m in convs) == D_WIDTHS
    assert [m.stride[0] for m in convs] == [2, 1, 2, 1, 2, 1]
    assert all(m.kernel_size == (3, 3) for m in convs)
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.5 for m in D.modules()) == 6
    assert sum(isinstance(m, nn.BatchNorm2d) for m in D.modules()) == 5
    leaky = [m for m in D.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(leaky) == 6 and all(m.negative_slope == 0.2 for m in leaky)
    w = torch.cat([m.weight.flatten() for m in convs])
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002


def test_loss_signs() -> None:
    y = torch.tensor([0, 1, 2, 3])
    confident = torch.full((4, 4), -10.0)
    confident[torch.arange(4), y] = 10.0
    big, small = torch.full((4,), 10.0), torch.full((4,), -10.0)
    # D that is right about source and class has ~zero loss; wrong about the source, large.
    good, _, _ = d_loss(big, confident, y, small, confident, y)
    bad, _, _ = d_loss(small, confident, y, big, confident, y)
    assert good < 1e-3 < 10 < bad
    # G wins (lower loss) when D calls its fakes real and classifies them right.
    g_win, _, _ = g_loss(big, confident, y)
    g_lose, ls, lc = g_loss(small, confident, y)
    assert g_win < 1e-3 and g_lose > 5 and ls > 5 and lc < 1e-3
    # Logits in, not probabilities: a softmax before cross-entropy would bound the loss.
    wrong = confident.roll(1, dims=1)
    _, _, lc_wrong = g_loss(big, wrong, y)
    assert lc_wrong > 15


def test_uint8_round_trip() -> None:
    u = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(to_uint8(to_float(u)), u)


@pytest.mark.parametrize("p", [0.5, 0.3, 0.8])
def test_dropout_mask_is_bernoulli(p: float) -> None:
    """The CPU dropout's mask keeps each element with probability 1-p, independently (the
    p = 0.5 path packs 8 elements into one random byte), scaled by 1/(1-p)."""
    like = torch.empty(0)
    m = dropout_mask((200_000,), p, like)
    zero, scale = m.unique().tolist()
    assert m.dtype == like.dtype and zero == 0.0 and scale == pytest.approx(1 / (1 - p))
    kept = (m > 0).float()
    assert abs(kept.mean().item() - (1 - p)) < 0.006  # > 5 standard errors
    # neighbours (within one random byte for p = 0.5) agree as often as independent draws do
    agree = (kept[1:] == kept[:-1]).float().mean().item()
    assert abs(agree - (p * p + (1 - p) * (1 - p))) < 0.006
    g = torch.Generator().manual_seed(3)
    a = dropout_mask((7, 9), p, like, g)
    g.manual_seed(3)
    assert torch.equal(a, dropout_mask((7, 9), p, like, g))  # reproducible from its stream


def test_dropout_module() -> None:
    d = Dropout(0.5)
    x = torch.ones(4, 8, 3, 3, requires_grad=True)
    y = d(x)
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient passes the kept elements, scaled
    d.eval()
    assert torch.equal(d(x), x)  # identity outside training, as nn.Dropout
    assert torch.equal(Dropout(0.0)(x), x)
