"""Each training-recipe option changes what it claims to change (docs/quality.md)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from acgan import config
from acgan.config import Config, ModelConfig, TrainConfig
from acgan.data.splits import SplitSpec
from acgan.errors import ConfigError
from acgan.models.acgan import DArch, Discriminator, GArch, Generator, GSpec
from acgan.models.layers import MinibatchStd, PixelNorm
from acgan.models.losses import d_loss, g_loss
from acgan.train import augment
from acgan.train.state import build_state
from acgan.train.step import (
    SplitData,
    StepRecipe,
    _draw,
    data_spread_loss,
    mode_seeking_loss,
    step_split,
)


def _weights(module: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def test_spectral_norm_keeps_the_largest_singular_value_near_one() -> None:
    torch.manual_seed(0)
    D = Discriminator(5, 32, 3, arch=DArch(spectral_norm=True, norm="none"))
    with torch.no_grad():
        for _ in range(30):  # each training-mode forward is one power iteration
            D(torch.randn(8, 3, 32, 32))
    sigmas = [torch.linalg.matrix_norm(w.flatten(1), ord=2).item() for w in _weights(D)]
    assert len(sigmas) == 8 and all(abs(s - 1) < 0.05 for s in sigmas), sigmas
    plain = Discriminator(5, 32, 3)
    # without it the paper's N(0, 0.02) weights are far from norm 1 (the 512-map layer: ~1.3)
    assert any(abs(torch.linalg.matrix_norm(w.flatten(1), ord=2).item() - 1) > 0.2
               for w in _weights(plain))  # fmt: skip


def test_hinge_loss_values_on_known_logits() -> None:
    y = torch.tensor([0, 1])
    cls = torch.zeros(2, 2)
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    total, ls, lc = d_loss(real, cls, y, fake, cls, y, loss="hinge", class_weight=0.0)
    # D: mean(relu(1 - real)) + mean(relu(1 + fake)) = (0 + 0.5)/2 + (0 + 1.5)/2
    assert ls.item() == pytest.approx(1.0) and total.item() == pytest.approx(1.0)
    g_total, g_ls, _ = g_loss(fake, cls, y, loss="hinge", class_weight=0.0)
    assert g_ls.item() == pytest.approx(0.75) and g_total.item() == pytest.approx(0.75)
    # the class part is cross-entropy on logits whatever the source loss: ln 2 per batch here
    assert lc.item() == pytest.approx(2 * 0.693147, abs=1e-5)


def test_without_fake_class_loss_d_class_head_gets_no_gradient_from_fakes() -> None:
    torch.manual_seed(0)
    D = Discriminator(3, 32, 1, arch=DArch(dropout=0.0))
    real, fake = torch.randn(6, 1, 32, 32), torch.randn(6, 1, 32, 32, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    src_r, cls_r = D(real)
    src_f, cls_f = D(fake)
    for flag, expect_zero in ((False, True), (True, False)):
        loss, _, _ = d_loss(src_r, cls_r, y, src_f, cls_f, y, fake_class_loss=flag)
        (g_cls,) = torch.autograd.grad(loss, cls_f, retain_graph=True, allow_unused=True)
        assert (g_cls is None or g_cls.abs().sum().item() == 0) is expect_zero


def test_class_weight_scales_the_class_terms() -> None:
    y = torch.tensor([0, 1])
    src, cls = torch.tensor([0.3, -0.2]), torch.tensor([[2.0, 0.0], [0.5, 0.1]])
    t1, ls, lc = d_loss(src, cls, y, src, cls, y, class_weight=1.0)
    t3, _, _ = d_loss(src, cls, y, src, cls, y, class_weight=3.0)
    assert t3.item() == pytest.approx(ls.item() + 3 * lc.item())
    g1, gls, glc = g_loss(src, cls, y, class_weight=0.5)
    assert g1.item() == pytest.approx(gls.item() + 0.5 * glc.item())


def test_augmentation_is_one_transform_for_real_and_fake() -> None:
    gen = torch.Generator().manual_seed(0)
    p = augment.draw(augment.POLICIES, 16, 32, gen, torch.device("cpu"))
    x = torch.rand(16, 3, 32, 32) * 2 - 1
    assert torch.equal(augment.apply(x, p), augment.apply(x.clone(), p))
    ones = torch.ones(16, 1, 32, 32)
    out = augment.apply(ones, augment.Params(shift=p.shift, cutout=p.cutout))
    zeros = (out == 0).flatten(1).sum(1)
    assert (zeros >= 16 * 16 - 1).all()  # the cutout square (part of it may be shifted in)
    # gradients flow back to the images (G learns through the augmentation)
    y = torch.rand(2, 3, 32, 32, requires_grad=True)
    augment.apply(
        y, augment.draw(augment.POLICIES, 2, 32, gen, torch.device("cpu"))
    ).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_translation_shifts_by_whole_pixels() -> None:
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 3, 4] = 1.0
    out = augment.apply(x, augment.Params(shift=torch.tensor([[1, -1]])))
    assert out[0, 0, 2, 5] == 1 and out.sum() == 1  # x + 1, y - 1


def _tiny_data(k: int = 3, n: int = 24) -> SplitData:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=g)
    spec = SplitSpec(id=0, classes=list(range(k)), class_names=[f"c{i}" for i in range(k)])
    return SplitData(spec=spec, images=images, labels=torch.arange(n) % k)


def _state(*overrides: str) -> tuple[Config, object]:
    cfg = config.load(None, ["data.channels=1", *overrides])
    return cfg, build_state(cfg, 3, torch.device("cpu"), seed=0)


def test_train_step_applies_the_same_augmentation_to_real_and_fake(monkeypatch) -> None:  # noqa: ANN001
    calls: list[augment.Params] = []
    real_apply = augment.apply

    def spy(x: torch.Tensor, p: augment.Params) -> torch.Tensor:
        calls.append(p)
        return real_apply(x, p)

    monkeypatch.setattr(augment, "apply", spy)
    _, state = _state("train.augment=[color, translation, cutout]")
    step_split(state, _tiny_data(), StepRecipe(8, False, augment=tuple(augment.POLICIES)))
    assert len(calls) == 3  # D: real and fake; G: fake
    assert calls[0] is calls[1] and calls[2] is not calls[0]


def test_d_steps_and_learning_rates() -> None:
    _, state = _state("train.lr_g=0.0001", "train.lr_d=0.0004", "train.d_steps=3")
    assert state.opt_g.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert state.opt_d.param_groups[0]["lr"] == pytest.approx(4e-4)
    step_split(state, _tiny_data(), StepRecipe(8, False, d_steps=3))
    first = next(iter(state.opt_d.state.values()))["step"]
    assert int(first) == 3 and int(next(iter(state.opt_g.state.values()))["step"]) == 1
    state.set_lr_scale(0.5)  # a monitor rollback halves both, keeping their ratio
    assert state.opt_d.param_groups[0]["lr"] == pytest.approx(2e-4)


def test_joint_batch_runs_d_once_per_update() -> None:
    for joint, calls_per_step in ((True, 2), (False, 3)):  # D step(s) + G step
        _, state = _state("model.d_dropout=0")
        seen: list[int] = []
        state.D.register_forward_hook(lambda m, i, o, seen=seen: seen.append(i[0].shape[0]))
        step_split(state, _tiny_data(), StepRecipe(8, False, d_joint_batch=joint))
        assert len(seen) == calls_per_step
        assert seen[0] == (16 if joint else 8)


def _class_spread(weight: float, ref: str = "noise") -> float:
    """Mean |G(z1) - G(z2)| of one class after a few steps with this mode-seeking term."""
    _, st = _state("model.g_widths=[32, 16, 8]", "model.d_widths=[8, 8, 16, 16, 32, 32]")
    recipe = StepRecipe(16, False, mode_seeking=weight, mode_seeking_ref=ref)
    for _ in range(4):
        step_split(st, _tiny_data(), recipe)
    st.G.eval()
    zz = torch.randn(32, st.G.latent_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = st.G(zz, torch.zeros(32, dtype=torch.long))
    return float((x[:16] - x[16:]).abs().mean())


def test_mode_seeking_pairs_one_class_and_pushes_samples_apart() -> None:
    _, state = _state()
    _, _, _, y = _draw(state, _tiny_data(), 8, paired=True)
    assert torch.equal(y[:4], y[4:])  # each pair (i, i + B/2) is one class
    z = torch.randn(1, 8, 5)
    alike, apart = torch.zeros(1, 8, 3, 4, 4), torch.randn(1, 8, 3, 4, 4)
    assert mode_seeking_loss(apart, z) < mode_seeking_loss(alike + 1e-3 * apart, z)

    assert _class_spread(20.0) > _class_spread(0.0)


def test_mode_seeking_against_the_data_stops_at_the_data_s_spread() -> None:
    """``mode_seeking_ref: data``: 1 for identical samples of a class, 0 once a class's
    samples are as far apart as its real images, and G pushed apart while short of that."""
    g = torch.Generator().manual_seed(0)
    real = torch.rand(2, 32, 3, 8, 8, generator=g) * 2 - 1
    y_real = torch.randint(0, 3, (2, 32), generator=g)
    half = torch.randint(0, 3, (2, 16), generator=g)
    y_fake = torch.cat([half, half], 1)
    same = torch.zeros(2, 32, 3, 8, 8)
    assert torch.allclose(data_spread_loss(same, y_fake, real, y_real, 3), torch.ones(2))
    as_data = torch.rand(2, 32, 3, 8, 8, generator=g) * 2 - 1  # drawn as the real images are
    assert data_spread_loss(as_data, y_fake, real, y_real, 3).max() < 0.1
    assert data_spread_loss(3 * as_data, y_fake, real, y_real, 3).max() == 0  # no push past it
    narrow = 0.5 * as_data
    short = float(data_spread_loss(narrow, y_fake, real, y_real, 3).mean())
    assert 0.3 < short < 0.7
    # a class absent from the real batch has no reference: it is left out, not pushed
    only_0 = torch.zeros_like(y_real)
    alone = data_spread_loss(same, torch.ones_like(y_fake), real, only_0, 3)
    assert torch.equal(alone, torch.zeros(2))
    assert _class_spread(20.0, "data") > _class_spread(0.0, "data")


def test_hinge_step_and_every_option_train_without_nan() -> None:
    _, state = _state(
        "model.g_upsample=nearest", "model.g_norm=pixel", "model.g_widths=[64, 32, 16]",
        "model.d_widths=[8, 8, 16, 16, 32, 32]", "model.d_norm=none",
        "model.d_spectral_norm=true", "model.d_mbstd=true", "model.d_noise_std=0.1",
        "model.equalized_lr=true", "train.loss=hinge", "train.fake_class_loss=false",
        "train.augment=[translation]",
    )  # fmt: skip
    recipe = StepRecipe(8, False, loss="hinge", fake_class_loss=False, augment=("translation",))
    for _ in range(3):
        figures = step_split(state, _tiny_data(), recipe)
    assert torch.isfinite(figures).all()


def test_minibatch_std_pixel_norm_noise_and_equalized_lr() -> None:
    same = torch.ones(4, 2, 3, 3)
    out = MinibatchStd()(same)
    assert out.shape == (4, 3, 3, 3) and out[:, 2].abs().max() < 1e-3  # identical: ~0 spread
    varied = MinibatchStd()(torch.randn(4, 2, 3, 3))
    assert varied[:, 2].min() > 0.1
    x = torch.randn(2, 8, 4, 4) * 5
    assert PixelNorm()(x).pow(2).mean(1).sub(1).abs().max() < 1e-4
    D = Discriminator(3, 32, 1, arch=DArch(noise_std=0.2, dropout=0.0, norm="none"))
    img = torch.randn(2, 1, 32, 32)
    D.eval()
    assert torch.equal(D(img)[0], D(img)[0])  # noise only while training
    D.train()
    assert not torch.equal(D(img)[0], D(img)[0])
    G = Generator(3, 16, 32, 1, GArch(equalized_lr=True, widths=(32, 16, 8)))
    raw = G.fc.parametrizations.weight.original
    assert abs(raw.std().item() - 1) < 0.05  # stored at unit scale, scaled at run time
    assert G.fc.weight.std().item() == pytest.approx(raw.std().item() * (2 / 19) ** 0.5, rel=1e-3)


def test_architecture_options_build_what_they_say() -> None:
    G = Generator(3, 10, 32, 3, GArch(widths=(64, 32, 16), upsample="nearest", norm="none"))
    assert not any(isinstance(m, nn.ConvTranspose2d | nn.BatchNorm2d) for m in G.modules())
    assert G(torch.randn(2, 10), torch.tensor([0, 2])).shape == (2, 3, 32, 32)
    G4 = Generator(3, 10, 64, 1, GArch(upsample="transposed4"))
    assert all(m.kernel_size == (4, 4) for m in G4.modules() if isinstance(m, nn.ConvTranspose2d))
    assert G4(torch.randn(2, 10), torch.tensor([0, 1])).shape == (2, 1, 64, 64)
    with pytest.raises(ConfigError, match="model.g_widths"):
        Generator(3, 10, 32, 3, GArch(widths=(8, 8)))
    with pytest.raises(ConfigError, match="model.d_widths"):
        Discriminator(3, 32, 3, arch=DArch(widths=(8, 8)))


def test_paper_recipe_is_the_papers_network(make_cfg: Callable[..., Config]) -> None:
    cfg = make_cfg("recipe=paper", "train.steps=3")
    assert cfg.recipe == "paper"
    assert GArch.from_config(cfg.model) == GArch() and DArch.from_config(cfg.model) == DArch()
    t = cfg.train
    assert (t.loss, t.fake_class_loss, t.class_weight, t.d_steps, t.augment) == (
        "bce", True, 1.0, 1, [],
    )  # fmt: skip
    assert (t.lr, t.beta1, t.beta2, cfg.model.d_dropout) == (2e-4, 0.5, 0.999, 0.5)
    # params files and --set still win over the preset
    assert make_cfg("recipe=paper", "model.d_dropout=0.1").model.d_dropout == 0.1


def test_paper_recipe_pins_every_recipe_key() -> None:
    """paper.yaml names every model and train key but those of the run (length, batch,
    device, bookkeeping), so a change of the code's defaults never changes the paper."""
    pinned = yaml.safe_load((config.RECIPES_DIR / "paper.yaml").read_text())
    run_keys = {"steps", "batch_size", "seed", "device", "amp", "ema_decay", "checkpoint_every",
                "keep_checkpoints", "log_every", "sample_every", "pack"}  # fmt: skip
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)} - run_keys
    model_keys = {f.name for f in dataclasses.fields(ModelConfig)} - {"latent_dim"}
    assert set(pinned["train"]) == train_keys
    assert set(pinned["model"]) == model_keys


def test_fast_recipe_is_the_default_at_half_width(make_cfg: Callable[..., Config]) -> None:
    fast, default = make_cfg("recipe=fast"), make_cfg()
    assert GArch.from_config(fast.model).spec(32) == GSpec(192, 4, (96, 48))
    assert GArch.from_config(default.model).spec(32) == GSpec(256, 4, (128, 64))
    assert DArch.from_config(fast.model).widths == (8, 16, 32, 64, 128, 256)
    same = ("g_upsample", "g_norm", "d_norm", "d_dropout", "d_spectral_norm", "d_mbstd")
    assert all(getattr(fast.model, k) == getattr(default.model, k) for k in same)
    assert fast.train == dataclasses.replace(default.train, mode_seeking=2.0)


def test_recipe_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*paper"):
        config.load(None, ["recipe=nope"])
    nested = tmp_path / "r.yaml"
    nested.write_text("recipe: paper\n")
    with pytest.raises(ConfigError, match="cannot name another recipe"):
        config.load(None, [f"recipe={nested}"])
    with pytest.raises(ConfigError, match="train.augment"):
        config.load(None, ["train.augment=[rotate]"])


SLICE = Path(__file__).parent / "data" / "fashion-mnist-slice"


def test_default_recipe_learns_the_classes_of_real_images(tmp_path: Path) -> None:
    """120 committed Fashion-MNIST images (3 classes): with the default recipe D's class head
    reads real images far above chance (1/3) within a few dozen steps."""
    from acgan.data.ingest import ingest
    from acgan.data.splits import make_splits
    from acgan.train import train_split

    cfg = config.load(
        None,
        [
            "data.source=imagefolder", f"data.root={SLICE}", "data.channels=1",
            "split.classes_per_split=3", "split.ids=[0]", "split.reference_pairs=10",
            "tracking.enabled=false", "train.steps=80", "train.batch_size=32",
            "train.log_every=10", "train.sample_every=1000", "train.checkpoint_every=1000",
            "monitor.enabled=false",
        ],
    )  # fmt: skip
    ingest(cfg.data, tmp_path / "ingested", progress=False)
    make_splits(tmp_path / "ingested", tmp_path / "splits", cfg, progress=False)
    res = train_split(
        cfg, 0, tmp_path / "splits", tmp_path / "out", tmp_path / "ck", progress=False
    )
    acc = [
        h["d_acc_real"] for h in json.loads((res.out_dir / "history.json").read_text())["history"]
    ]
    late = sum(acc[-3:]) / 3  # of the last 30 steps' batches
    assert late >= 0.9, acc  # chance is 1/3
