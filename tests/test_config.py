"""Config strictness: unknown keys, wrong types and out-of-range values name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from acgan import config
from acgan.errors import ConfigError


def test_defaults_and_repo_params_load() -> None:
    cfg = config.load(Path(__file__).parents[1] / "params.yaml")
    assert cfg.data.source == "synthetic" and cfg.data.resolution == 32
    assert cfg.tracking.uri == "sqlite:///mlflow.db"
    assert cfg.model_name == "acgan-synthetic"
    with pytest.raises(AttributeError):  # frozen
        cfg.train.steps = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("train:\n  stepz: 5\n", "train.stepz"),
        ("trian:\n  steps: 5\n", "trian"),
        ("train:\n  steps: ten\n", "train.steps"),
        ("train:\n  steps: 0\n", "train.steps"),
        ("train:\n  steps: true\n", "train.steps"),
        ("train:\n  lr: 5\n", "train.lr"),
        ("data:\n  resolution: 48\n", "data.resolution"),
        ("data:\n  channels: 2\n", "data.channels"),
        ("data:\n  source: imagenet\n", "data.source"),
        ("data:\n  download: 'yes'\n", "data.download"),
        ("train:\n  device: tpu\n", "train.device"),
        ("split:\n  classes: [[0, 1], [1, 2]]\n", "split.classes[1]"),
        ("split:\n  classes: [[0, 'a']]\n", "split.classes[0][1]"),
        ("monitor:\n  action: panic\n", "monitor.action"),
        ("train: 5\n", "train"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, yaml_text: str, needle: str) -> None:
    p = tmp_path / "params.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        config.load(p)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


def test_overrides_parse_as_yaml_and_validate() -> None:
    cfg = config.load(
        None,
        ["train.steps=7", "train.lr=1e-3", "split.classes=[[0,1],[2]]", "data.classes=[cat, dog]"],
    )
    assert cfg.train.steps == 7 and cfg.train.lr == pytest.approx(1e-3)
    assert cfg.split.classes == [[0, 1], [2]] and cfg.data.classes == ["cat", "dog"]
    with pytest.raises(ConfigError, match="train.nope"):
        config.load(None, ["train.nope=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        config.load(None, ["steps"])


def test_missing_explicit_params_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "other.yaml")


def test_fingerprint_tracks_content() -> None:
    a = config.load(None, ["train.steps=10"])
    b = config.load(None, ["train.steps=20"])
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint(exclude=("train.steps",)) == b.fingerprint(exclude=("train.steps",))
    assert a.fingerprint("data") == b.fingerprint("data")


def test_describe_lists_every_key() -> None:
    keys = {row[0] for row in config.describe()}
    for k in (
        "data.source",
        "data.root",
        "data.download",
        "data.resolution",
        "data.channels",
        "split.classes_per_split",
        "split.classes",
        "train.steps",
        "train.batch_size",
        "train.lr",
        "train.seed",
        "train.device",
        "train.checkpoint_every",
        "tracking.uri",
    ):
        assert k in keys
