"""Generic fixtures: a small configuration and a small ingested + split synthetic dataset."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from acgan.config import Config, load


@pytest.fixture(autouse=True)
def _mlflow_environment_restored() -> Iterator[None]:
    """``mlflow.set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI`` in the process's
    environment, which the CLI reads as the user's override: a command run in-process (click's
    CliRunner) must not hand its server to every later test. Every ``MLFLOW_*`` variable is
    put back as it was."""
    before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    yield
    for key in [k for k in os.environ if k.startswith("MLFLOW_") and k not in before]:
        del os.environ[key]
    os.environ.update(before)


# Small enough that ingest + split take about a second; big enough for 2 shards per run and
# MS-SSIM pairs per class.
SMALL_OVERRIDES = (
    "data.source=synthetic",
    "data.synthetic_per_class=20",
    "data.shard_rows=64",
    "split.classes_per_split=5",
    "split.ids=[0, 1]",
    "split.reference_pairs=10",
    "tracking.enabled=false",
)


@pytest.fixture
def make_cfg() -> Callable[..., Config]:
    """``make_cfg("train.steps=5", ...)``: the small configuration plus overrides."""

    def _make(*overrides: str) -> Config:
        return load(None, [*SMALL_OVERRIDES, *overrides])

    return _make


@pytest.fixture
def small_cfg(make_cfg: Callable[..., Config]) -> Config:
    return make_cfg()


@pytest.fixture(scope="session")
def synthetic_ingested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ingested small synthetic dataset (shared by the session: do not modify it)."""
    from acgan.data.ingest import ingest

    out = tmp_path_factory.mktemp("ingested") / "data"
    ingest(load(None, list(SMALL_OVERRIDES)).data, out, progress=False)
    return out


@pytest.fixture(scope="session")
def synthetic_splits(synthetic_ingested: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The split stage's output for :func:`synthetic_ingested` (shared: do not modify it)."""
    from acgan.data.splits import make_splits

    out = tmp_path_factory.mktemp("splits") / "splits"
    make_splits(synthetic_ingested, out, load(None, list(SMALL_OVERRIDES)), progress=False)
    return out


# A few steps at a small batch: enough for real generator files, not for good samples.
TINY_TRAIN = (
    "train.steps=6",
    "train.batch_size=16",
    "train.log_every=3",
    "train.sample_every=6",
    "train.checkpoint_every=3",
    "monitor.every=3",
    "monitor.pairs=4",
    "eval.samples_per_class=8",
    "eval.msssim_pairs=4",
    "eval.judge_epochs=1",
)


@dataclass(frozen=True)
class TinyPipeline:
    """A whole small pipeline's outputs up to training (shared: do not modify)."""

    cfg: Config
    ingested: Path
    splits: Path
    model_dirs: tuple[Path, ...]
    checkpoints: Path


@pytest.fixture(scope="session")
def tiny_trained(
    synthetic_ingested: Path, synthetic_splits: Path, tmp_path_factory: pytest.TempPathFactory
) -> TinyPipeline:
    """Both splits of the small dataset trained for a few steps (tracking disabled)."""
    from acgan.train import train_split_with_monitor

    cfg = load(None, [*SMALL_OVERRIDES, *TINY_TRAIN])
    root = tmp_path_factory.mktemp("trained")
    dirs = []
    for sid in cfg.split.ids:
        res = train_split_with_monitor(
            cfg, sid, synthetic_splits, root / f"split_{sid}", root / "checkpoints", progress=False
        )
        dirs.append(res.out_dir)
    return TinyPipeline(
        cfg, synthetic_ingested, synthetic_splits, tuple(dirs), root / "checkpoints"
    )
