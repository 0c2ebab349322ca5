"""Mixed precision (``train.amp``): bf16 autocast still trains, and runs only where it is fast."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from acgan.config import Config
from acgan.train import train_split
from acgan.train.packed import PackedNets
from acgan.train.run import load_split_data
from acgan.train.state import amp_supported, build_state
from acgan.train.step import StepRecipe, step_split, train_step

CPU = torch.device("cpu")


def _update(net: nn.Module, start: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(
        [(p.detach() - s).flatten() for p, s in zip(net.parameters(), start, strict=True)]
    )


def test_bf16_autocast_still_trains(
    make_cfg: Callable[..., Config], synthetic_splits: Path
) -> None:
    """Two steps under bf16 autocast (on the CPU: forced, however slow its bf16 kernels are)
    follow the fp32 steps from the same seed and batches. Dropout is off so that both runs see
    the same network; batch 2 keeps the CPU's reference bf16 convolutions affordable."""
    cfg = make_cfg("model.d_dropout=0.0")
    _, data = load_split_data(synthetic_splits, 0, CPU)
    fp32, bf16 = (build_state(cfg, data.num_classes, CPU, seed=11) for _ in range(2))
    nets = (("G", fp32.G, bf16.G), ("D", fp32.D, bf16.D))
    start = {name: [p.detach().clone() for p in a.parameters()] for name, a, _ in nets}
    seen: list[torch.dtype] = []
    conv = next(m for m in bf16.D.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    for _ in range(2):
        f32 = step_split(fp32, data, StepRecipe(batch_size=2, amp=False))
        f16 = step_split(bf16, data, StepRecipe(batch_size=2, amp=True))
        assert torch.isfinite(f16).all(), f16
        # Same losses to bf16 precision (the batches and noise are the same draws).
        torch.testing.assert_close(f16[:2], f32[:2], rtol=0.1, atol=0.1)
    assert seen and set(seen) == {torch.bfloat16}  # autocast really ran the convolutions in bf16
    for name, a, b in nets:
        assert all(p.dtype == torch.float32 for p in b.parameters())  # master weights stay fp32
        ua, ub = (_update(m, start[name]) for m in (a, b))
        assert ub.abs().max() > 0.5 * cfg.train.lr, name  # it moved
        # bf16 gradients point where the fp32 ones do (Adam's first steps are about +-lr per
        # weight, so a few near-zero gradients flip sign; a broken path would be near 0).
        assert torch.nn.functional.cosine_similarity(ua, ub, dim=0) > 0.6, name


def test_amp_runs_only_where_bf16_is_fast(
    make_cfg: Callable[..., Config],
    synthetic_splits: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``train.amp: true`` is safe in any params file: bf16 where the device has fast bf16
    units, otherwise fp32 with a warning; train.json records what ran."""
    cfg = make_cfg(
        "train.amp=true",
        "train.device=cpu",
        "train.steps=1",
        "train.batch_size=4",
        "train.sample_every=1000",
        "monitor.enabled=false",
    )
    with caplog.at_level(logging.WARNING, logger="acgan.train.state"):
        res = train_split(cfg, 0, synthetic_splits, tmp_path / "o", tmp_path / "c", progress=False)
    summary = json.loads((res.out_dir / "train.json").read_text())
    assert summary["amp"] is amp_supported(CPU)
    assert ("train.amp" in caplog.text) is (not amp_supported(CPU))
    assert all(v == v for v in res.metrics.values())  # no NaN


def test_bf16_autocast_trains_a_pack(
    make_cfg: Callable[..., Config], synthetic_splits: Path
) -> None:
    """The packed model under bf16 autocast (the CUDA path's precision; forced on the CPU):
    the convolutions run in bf16, D's dropout masks come in bf16, the figures are finite and
    the master weights stay fp32 and move."""
    cfg = make_cfg()
    _, data = load_split_data(synthetic_splits, 0, CPU)
    states = [build_state(cfg, data.num_classes, CPU, seed=s) for s in (11, 12)]
    start = [p.detach().clone() for p in states[1].G.parameters()]
    seen: list[torch.dtype] = []
    conv = next(m for m in states[0].D.modules() if isinstance(m, nn.Conv2d))
    # the pack runs a copy of the modules' structure: watch the functional call's kernels
    nets = PackedNets(states, amp=True)
    assert all(m.dtype == torch.bfloat16 for m in nets._masks(2).values())
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda m, _i, out: seen.append(out.dtype) if isinstance(m, nn.Conv2d) else None
    )
    try:
        figures = train_step(nets, [data, data], StepRecipe(batch_size=2, amp=True))
    finally:
        hook.remove()
    assert figures.shape == (2, 6) and torch.isfinite(figures).all(), figures
    assert seen and set(seen) == {torch.bfloat16}
    assert conv.weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for s in states for p in s.G.parameters())
    assert _update(states[1].G, start).abs().max() > 0.5 * cfg.train.lr
