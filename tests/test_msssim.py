"""The shared MS-SSIM: sanity at every supported resolution, no NaN, pair sampling."""

from __future__ import annotations

import pytest
import torch

from acgan.data.shards import read_images
from acgan.metrics.msssim import (
    PROTOCOL,
    class_generator,
    mean_pairwise_msssim,
    msssim_pairs,
    per_class_msssim,
    protocol,
    sample_pairs,
)


def _noise(n: int, c: int, res: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, res, res), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("res", [32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_identical_is_one_and_noise_is_low(res: int, channels: int) -> None:
    x, y = _noise(4, channels, res, 0), _noise(4, channels, res, 1)
    same = msssim_pairs(x, x)
    assert same.shape == (4,) and torch.allclose(same, torch.ones(4), atol=1e-4)
    assert msssim_pairs(x, y).max() < 0.15
    f = x.float() / 127.5 - 1.0  # the generator's [-1, 1] floats give the same figure
    assert torch.allclose(msssim_pairs(f, y.float() / 127.5 - 1.0), msssim_pairs(x, y), atol=1e-5)


def test_no_nan_for_inverted_constant_or_out_of_range_images() -> None:
    x = _noise(3, 3, 32, 0)
    flat = torch.full((3, 3, 32, 32), 7, dtype=torch.uint8)
    wild = torch.randn(3, 3, 32, 32) * 5  # far outside [-1, 1]: clamped, not NaN
    for a, b in [(x, 255 - x), (flat, flat), (flat, x), (wild, -wild)]:
        v = msssim_pairs(a, b)
        assert torch.isfinite(v).all() and (v >= 0).all() and (v <= 1).all()


def test_real_synthetic_classes_lie_between_noise_and_identity(synthetic_ingested) -> None:
    data = read_images(synthetic_ingested)
    real = per_class_msssim(data.images, data.labels, range(10), n_pairs=40, seed=0)
    noise = mean_pairwise_msssim(_noise(40, 3, 32, 3), 40, torch.Generator().manual_seed(0))
    assert sorted(real) == list(range(10))
    assert all(noise < v < 0.5 for v in real.values()), (noise, real)
    # A collapsed class (one image repeated with tiny noise) scores near 1.
    one = data.images[:1].repeat(20, 1, 1, 1).short() + torch.randint(-2, 3, (20, 3, 32, 32))
    collapsed = mean_pairwise_msssim(
        one.clamp(0, 255).to(torch.uint8), 20, torch.Generator().manual_seed(0)
    )
    assert collapsed > 0.9


def test_per_class_is_deterministic_and_independent_of_other_classes(synthetic_ingested) -> None:
    data = read_images(synthetic_ingested)
    a = per_class_msssim(data.images, data.labels, [1, 4], n_pairs=10, seed=5)
    b = per_class_msssim(data.images, data.labels, [4], n_pairs=10, seed=5)
    assert a[4] == b[4]
    assert per_class_msssim(data.images, data.labels, [4], n_pairs=10, seed=6)[4] != a[4]


def test_sample_pairs_are_distinct_and_reproducible() -> None:
    i, j = sample_pairs(30, 50, class_generator(0, 3))
    assert len(i) == 50 and (i < j).all() and (j < 30).all()
    assert len(set(zip(i.tolist(), j.tolist(), strict=True))) == 50
    i2, j2 = sample_pairs(30, 50, class_generator(0, 3))
    assert torch.equal(i, i2) and torch.equal(j, j2)
    # Fewer pairs exist than asked: all of them, once each.
    i, j = sample_pairs(4, 100, torch.Generator().manual_seed(0))
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 2),
        (1, 3),
        (2, 3),
    ]
    # Many images: the rejection-sampling path.
    i, j = sample_pairs(100_000, 64, torch.Generator().manual_seed(0))
    assert len(set(zip(i.tolist(), j.tolist(), strict=True))) == 64 and (i < j).all()
    with pytest.raises(ValueError, match="at least 2"):
        sample_pairs(1, 5, torch.Generator())


def test_protocol_names_and_bad_inputs() -> None:
    assert PROTOCOL == {32: "msssim-3scale-k7", 64: "msssim-4scale-k7", 128: "msssim-5scale-k7"}
    assert protocol(64) == "msssim-4scale-k7"
    with pytest.raises(ValueError):
        protocol(48)
    with pytest.raises(ValueError):
        msssim_pairs(_noise(2, 3, 32, 0), _noise(3, 3, 32, 0))
    with pytest.raises(ValueError):
        msssim_pairs(_noise(2, 3, 48, 0), _noise(2, 3, 48, 0))
