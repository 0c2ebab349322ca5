"""The packed ensemble trainer: equivalence with the single-split trainer, its outputs,
checkpoints that continue in either mode, and the ``train.pack`` setting."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import SMALL_OVERRIDES

from acgan import checkpoint
from acgan.config import Config, load
from acgan.errors import ConfigError
from acgan.models.ensemble import Ensemble, find_split_dirs
from acgan.train import train_split_with_monitor, train_splits
from acgan.train.state import build_state, split_seed

STEPS = 2
# A checkpoint every step (the resume test starts from step 1) and the collapse monitor at
# every step (each split's hook must see its own context in the pack). On the CPU, where
# dropout is exactly a Bernoulli mask that a split's own generator can reproduce (CUDA's fused
# dropout kernel draws differently, so there the modes agree in distribution only).
PACK_TRAIN = (
    "recipe=paper",
    "train.device=cpu",
    f"train.steps={STEPS}",
    "train.batch_size=8",
    "train.log_every=1",
    "train.sample_every=1000",
    "train.checkpoint_every=1",
    "monitor.every=1",
    "monitor.pairs=4",
)
OUTPUT_FILES = {"generator.pt", "config.json", "history.json", "train.json", "samples.png"}


@dataclass(frozen=True)
class Runs:
    cfg: Config
    splits: Path
    single: Path  # <single>/split_<id>: one split per call, as `dvc repro` runs them
    single_ck: Path
    packed: Path  # <packed>/split_<id>: train_splits with train.pack=2, the batched model
    packed_ck: Path
    cpu_default_ck: Path  # the same pack with the CPU's default: one after another


@pytest.fixture(scope="module")
def runs(synthetic_splits: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("packed")
    cfg = load(None, [*SMALL_OVERRIDES, *PACK_TRAIN])
    for sid in (0, 1):
        train_split_with_monitor(
            cfg, sid, synthetic_splits, root / "single" / f"split_{sid}", root / "ck_single",
            progress=False,
        )  # fmt: skip
    packed_cfg = load(None, [*SMALL_OVERRIDES, *PACK_TRAIN, "train.pack=2"])
    results = train_splits(
        packed_cfg, [0, 1], synthetic_splits, root / "packed", root / "ck_packed",
        progress=False, batched=True,
    )  # fmt: skip
    assert [r.split_id for r in results] == [0, 1]
    train_splits(
        packed_cfg, [0, 1], synthetic_splits, root / "cpu", root / "ck_cpu", progress=False
    )
    return Runs(cfg, synthetic_splits, root / "single", root / "ck_single", root / "packed",
                root / "ck_packed", root / "ck_cpu")  # fmt: skip


def _ckpt(ck_root: Path, sid: int, step: int) -> dict:
    (path,) = (ck_root / f"split_{sid}").glob(f"*/step-{step:08d}.pt")
    return checkpoint.load(path)


def _assert_same_training(a: dict, b: dict, cfg: Config, sid: int) -> None:
    """``b`` trained the same as ``a``: identical random streams, matching weights."""
    # Every draw (batch indices, noise, labels, D's dropout masks) came from the same streams
    # in the same order: the generator states after training are identical, bit for bit.
    assert torch.equal(a["rng"]["gen"], b["rng"]["gen"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert a["step"] == b["step"] and a["seed"] == b["seed"]
    init = build_state(cfg, 5, torch.device("cpu"), split_seed(cfg.train.seed, sid))
    t = cfg.train
    lrs = [t.lr_g or t.lr, t.lr_d or t.lr]
    lr = max(lrs) * t.d_steps  # the most a weight can move in one step
    for name, net in (("G", init.G), ("D", init.D)):
        for key, va in a[name].items():
            # Grouped kernels sum in another order; Adam's first steps move a weight by about
            # +-lr whatever the gradient's size, so a near-zero gradient may flip one step.
            torch.testing.assert_close(
                b[name][key].float(), va.float(), rtol=1e-3, atol=2 * lr * STEPS, msg=key
            )
        start = dict(net.named_parameters())
        ua = torch.cat([(a[name][k] - p.detach()).flatten() for k, p in start.items()])
        ub = torch.cat([(b[name][k] - p.detach()).flatten() for k, p in start.items()])
        # The updates agree as a whole (a split's mask, batch or BN statistics mixed up with
        # another split's would leave them far apart).
        assert torch.nn.functional.cosine_similarity(ua, ub, dim=0) > 0.99, name
        assert ua.abs().max() > 0.5 * min(lrs)  # they did train


@pytest.mark.parametrize("sid", [0, 1])
def test_packed_matches_single_split_trainer(runs: Runs, sid: int) -> None:
    a, b = _ckpt(runs.single_ck, sid, STEPS), _ckpt(runs.packed_ck, sid, STEPS)
    _assert_same_training(a, b, runs.cfg, sid)
    # The collapse monitor ran on each split's own samples, at the same steps.
    ha = json.loads((runs.single / f"split_{sid}" / "history.json").read_text())
    hb = json.loads((runs.packed / f"split_{sid}" / "history.json").read_text())
    ca, cb = ha["monitor"]["curve"], hb["monitor"]["curve"]
    assert [c["step"] for c in ca] == [c["step"] for c in cb] == list(range(1, STEPS + 1))
    for x, y in zip(ca, cb, strict=True):
        assert x["values"].keys() == y["values"].keys()
        for cls, v in x["values"].items():
            assert y["values"][cls] == pytest.approx(v, abs=0.02), cls
    assert [h["step"] for h in ha["history"]] == [h["step"] for h in hb["history"]]


def test_a_pack_on_a_cpu_trains_one_after_another(runs: Runs) -> None:
    """On a CPU (where the batched model is slower) a pack trains its splits one after another
    in its process: bit for bit what each split's own process computes."""
    for sid in (0, 1):
        a, b = _ckpt(runs.single_ck, sid, STEPS), _ckpt(runs.cpu_default_ck, sid, STEPS)
        for key in ("G", "D", "ema"):
            flat_a, flat_b = _flat(a[key]), _flat(b[key])
            assert flat_a.keys() == flat_b.keys()
            for name, va in flat_a.items():
                assert torch.equal(va, flat_b[name]), f"split {sid} {key} {name}"
        assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def _flat(d: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, torch.Tensor):
            out[f"{prefix}{k}"] = v
    return out


def test_train_splits_pack_writes_the_normal_outputs(runs: Runs) -> None:
    dirs = find_split_dirs(runs.packed, [0, 1])
    assert dirs == [runs.packed / "split_0", runs.packed / "split_1"]
    for sid, d in enumerate(dirs):
        assert {p.name for p in d.iterdir()} == OUTPUT_FILES
        single = runs.single / f"split_{sid}"
        for name in ("train.json", "config.json", "history.json"):
            ka = json.loads((single / name).read_text()).keys()
            kb = json.loads((d / name).read_text()).keys()
            assert set(ka) <= set(kb), name
        summary = json.loads((d / "train.json").read_text())
        assert summary["step"] == STEPS and summary["split_id"] == sid
        assert summary["packed_with"] == [0, 1]
        # Each split's generator file is its own (not a view of the pack's tensors).
        g = checkpoint.load(d / "generator.pt")["state_dict"]
        assert all(t.untyped_storage().nbytes() == t.nbytes for t in g.values())
    ens = Ensemble.load(dirs)
    assert ens.classes == list(range(10))
    assert ens.generate("star", 2, seed=0).shape == (2, 3, 32, 32)


def test_packed_checkpoint_continues_in_single_mode(runs: Runs, tmp_path: Path) -> None:
    """A split checkpointed inside a pack resumes alone and continues as if never packed."""
    src = next((runs.packed_ck / "split_0").iterdir())
    ck = tmp_path / "ck" / "split_0" / src.name
    shutil.copytree(src, ck)
    for step, path in checkpoint.list_steps(ck):
        if step > 1:
            path.unlink()
    res = train_split_with_monitor(
        runs.cfg, 0, runs.splits, tmp_path / "out", tmp_path / "ck", progress=False
    )
    assert res.resumed_from == 1 and res.step == STEPS
    _assert_same_training(_ckpt(runs.single_ck, 0, STEPS), _ckpt(tmp_path / "ck", 0, STEPS),
                          runs.cfg, 0)  # fmt: skip


@pytest.mark.parametrize(
    "value, message",
    [("0", "must be >= 1"), ("2.5", "expected an integer"), ("true", "expected an integer")],
)
def test_pack_setting_is_validated(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"train\.pack: {message}"):
        load(None, [*SMALL_OVERRIDES, f"train.pack={value}"])


def test_a_split_cannot_be_packed_twice(runs: Runs, tmp_path: Path) -> None:
    cfg = load(None, [*SMALL_OVERRIDES, *PACK_TRAIN, "train.pack=2"])
    with pytest.raises(ConfigError, match=r"split ids \[1, 1\]"):
        train_splits(cfg, [1, 1], runs.splits, tmp_path / "m", tmp_path / "ck", progress=False)


# Every recipe option that changes the network, the losses or the step, at once (all but
# model.d_noise_std, whose noise comes from the process-wide stream: packed, in distribution).
ALL_OPTIONS = (
    "model.g_upsample=nearest", "model.g_norm=pixel", "model.g_width_scale=0.25",
    "model.d_widths=[4, 8, 8, 16, 16, 32]", "model.d_norm=none", "model.d_spectral_norm=true",
    "model.d_dropout=0.3", "model.d_mbstd=true", "model.equalized_lr=true",
    "train.lr_g=0.0001", "train.lr_d=0.0004", "train.d_steps=2", "train.loss=hinge",
    "train.fake_class_loss=false", "train.class_weight=0.5",
    "train.augment=[color, translation, cutout]", "train.d_joint_batch=true",
    "train.mode_seeking=1.0",
)  # fmt: skip


def test_every_recipe_option_trains_packed_as_alone(synthetic_splits: Path, tmp_path: Path) -> None:
    """The batched model is the splits' own modules and losses: recipe options need nothing
    of their own to train packed, and a packed split trains as it does alone."""
    over = [*SMALL_OVERRIDES, *PACK_TRAIN, *ALL_OPTIONS, "monitor.enabled=false"]
    cfg = load(None, over)
    for sid in (0, 1):
        train_split_with_monitor(
            cfg, sid, synthetic_splits, tmp_path / "single" / f"split_{sid}", tmp_path / "ck1",
            progress=False,
        )  # fmt: skip
    train_splits(
        load(None, [*over, "train.pack=2"]), [0, 1], synthetic_splits, tmp_path / "packed",
        tmp_path / "ck2", progress=False, batched=True,
    )  # fmt: skip
    for sid in (0, 1):
        a, b = _ckpt(tmp_path / "ck1", sid, STEPS), _ckpt(tmp_path / "ck2", sid, STEPS)
        _assert_same_training(a, b, cfg, sid)
        # spectral norm's power-iteration vectors advanced as they do alone
        u = [k for k in a["D"] if k.endswith("._u")]
        assert u and all(torch.allclose(a["D"][k], b["D"][k], atol=1e-4) for k in u)
