"""The judge: hold-out choice, caching keyed by the data hash, torchmetrics compatibility,
Inception-v3 from local weights (never downloaded) and its bad-input errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from acgan.config import Config
from acgan.data.ingest import ingest
from acgan.data.shards import read_images
from acgan.errors import CheckpointError
from acgan.evaluation.judge import fit_judge, train_judge
from acgan.metrics import fid_is
from acgan.metrics.judge import (
    JUDGE_FILE,
    JUDGE_JSON,
    build_judge,
    holdout_mask,
    load_inception,
    load_judge,
)


def test_holdout_is_per_class_deterministic_and_subset_stable() -> None:
    labels = torch.tensor([0] * 20 + [1] * 10 + [2] * 1 + [0] * 5)
    mask = holdout_mask(labels, 0.2, seed=3)
    assert torch.equal(mask, holdout_mask(labels, 0.2, seed=3))
    assert int(mask[labels == 0].sum()) == 5 and int(mask[labels == 1].sum()) == 2
    assert int(mask[labels == 2].sum()) == 0  # a single image stays for training
    # Reading only classes 1 and 0 (rows in the same order) holds out the same images.
    keep = labels != 2
    assert torch.equal(holdout_mask(labels[keep], 0.2, seed=3), mask[keep])
    assert not torch.equal(holdout_mask(labels, 0.2, seed=4), mask)


def test_judge_cache_is_keyed_by_data_hash(
    make_cfg: Callable[..., Config], synthetic_ingested: Path, tmp_path: Path
) -> None:
    cfg = make_cfg("eval.judge_epochs=1")
    out = tmp_path / "judge"
    first = train_judge(cfg, synthetic_ingested, out, progress=False)
    assert not first.cached and (out / JUDGE_FILE).is_file() and (out / "training.png").is_file()
    stamp = (out / JUDGE_FILE).stat().st_mtime_ns
    again = train_judge(cfg, synthetic_ingested, out, progress=False)
    assert again.cached and again.real_accuracy == first.real_accuracy
    assert (out / JUDGE_FILE).stat().st_mtime_ns == stamp  # nothing was retrained

    other = tmp_path / "other"  # same settings, different images: a new judge
    ingest(make_cfg("data.synthetic_seed=7").data, other, progress=False)
    fresh = train_judge(cfg, other, out, progress=False)
    assert not fresh.cached and fresh.data_hash != first.data_hash
    # A judge setting is part of the key too.
    assert not train_judge(
        make_cfg("eval.judge_epochs=1", "eval.judge_seed=5"), other, out, progress=False
    ).cached


def test_judge_is_a_torchmetrics_feature_extractor(synthetic_ingested: Path) -> None:
    data = read_images(synthetic_ingested)
    judge = build_judge(data.class_names, 32, 3).eval()
    real, fake = data.images[:60], data.images[60:120]
    direct = FrechetInceptionDistance(feature=judge)  # uint8 images in, judge features out
    direct.update(real, real=True)
    direct.update(fake, real=False)
    emb_r, emb_f = judge.embed(real).features, judge.embed(fake).features
    assert float(direct.compute()) == pytest.approx(
        fid_is.frechet_distance(emb_r, emb_f), rel=1e-3, abs=1e-4
    )


def test_load_judge_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="judge not found; run `acgan judge"):
        load_judge(tmp_path)
    (tmp_path / JUDGE_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(tmp_path / JUDGE_FILE)):
        load_judge(tmp_path)


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised torchvision Inception-v3 state_dict (the real file has the same
    keys and shapes; nothing is downloaded)."""
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path_factory.mktemp("inception") / "inception_v3.pth"
    torch.save(net.state_dict(), path)
    return path


def test_inception_judge_from_local_weights(inception_file: Path, tmp_path: Path) -> None:
    names = ["a", "b"]
    judge = build_judge(names, 32, 1, str(inception_file))
    assert judge.kind == "inception-v3" and judge.num_features == 2048
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 1, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.tensor([0, 1])
    history = fit_judge(judge, images, labels, epochs=3, seed=0, progress=False)
    assert len(history) == 3 and history[-1]["loss"] < history[0]["loss"]  # the probe learns
    emb = judge.embed(images, batch_size=1)
    assert emb.features.shape == (2, 2048) and emb.logits.shape == (2, 2)
    assert emb.score_logits.shape == (2, 1000)  # the IS uses Inception's own ImageNet logits
    torch.save(judge.record(), tmp_path / JUDGE_FILE)
    again = load_judge(tmp_path)
    assert torch.allclose(again.embed(images).logits, emb.logits, atol=1e-4)


def test_wrong_or_missing_inception_weights(inception_file: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"eval.inception_weights .*file not found"):
        load_inception(tmp_path / "nope.pth")
    sd = torch.load(inception_file, weights_only=True)
    sd["fc.weight"] = sd["fc.weight"][:, :100]  # wrong size
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    with pytest.raises(CheckpointError) as err:
        load_inception(bad)
    msg = str(err.value)
    assert "eval.inception_weights" in msg and str(bad) in msg and "\n" not in msg
    (tmp_path / "junk.pth").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="not a loadable state_dict"):
        load_inception(tmp_path / "junk.pth")
    assert not (tmp_path / JUDGE_JSON).exists()
