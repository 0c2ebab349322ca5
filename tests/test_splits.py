"""Split planning, the split stage's outputs, determinism and error messages."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from acgan.config import Config, SplitConfig
from acgan.data import splits as splits_mod
from acgan.data.ingest import load_manifest
from acgan.data.shards import read_images
from acgan.data.splits import SplitSpec, load_plan, make_splits, plan_splits
from acgan.data.synthetic import CLASS_NAMES
from acgan.errors import ConfigError, DataError
from acgan.metrics.msssim import class_generator, mean_pairwise_msssim

NAMES = list(CLASS_NAMES)


def _tree(d: Path) -> dict[str, bytes]:
    return {
        p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()
    }


# ----------------------------------------------------------------------------- planning


def test_contiguous_groups_last_one_smaller() -> None:
    specs = plan_splits(NAMES, SplitConfig(classes_per_split=4))
    assert [s.classes for s in specs] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [s.id for s in specs] == [0, 1, 2]
    assert specs[2].class_names == ["star", "checker"]
    assert len(plan_splits(NAMES, SplitConfig(classes_per_split=10))) == 1


def test_explicit_groups_are_used_and_checked() -> None:
    specs = plan_splits(NAMES, SplitConfig(classes=[[7, 3], [0]]))
    assert specs == [SplitSpec(0, [3, 7], ["cross", "diamond"]), SplitSpec(1, [0], ["circle"])]
    with pytest.raises(ConfigError, match=r"^split.classes\[1\]: class 10 does not exist"):
        plan_splits(NAMES, SplitConfig(classes=[[0], [10]]))


def test_classes_per_split_larger_than_the_dataset() -> None:
    msg = "split.classes_per_split: 20 is larger than the 10 classes of the dataset; use at most 10"
    with pytest.raises(ConfigError, match=f"^{re.escape(msg)}$"):
        plan_splits(NAMES, SplitConfig(classes_per_split=20))


# ----------------------------------------------------------------------------- the stage


def test_split_stage_outputs(synthetic_ingested: Path, synthetic_splits: Path) -> None:
    plan = load_plan(synthetic_splits)
    assert plan.ids == [0, 1] and [s.classes for s in plan.splits] == [
        [0, 1, 2, 3, 4],
        [5, 6, 7, 8, 9],
    ]
    assert plan.data_hash == load_manifest(synthetic_ingested).content_hash
    assert plan.class_names == NAMES and plan.protocol == "msssim-3scale-k7"
    assert plan.split(1).counts == dict.fromkeys(range(5, 10), 20)
    assert sorted(plan.reference_msssim) == list(range(10))
    assert plan.reference_max == max(plan.reference_msssim.values())
    assert all(0.0 < v < 0.9 for v in plan.reference_msssim.values())

    raw = json.loads((synthetic_splits / "splits.json").read_text())
    assert raw["splits"][1]["data_dir"] == "split_1" and raw["splits"][1]["total"] == 100
    assert json.loads((synthetic_splits / "config.json").read_text())["stage"] == "split"

    data = read_images(plan.split_dir(1))
    assert data.images.shape == (100, 3, 32, 32) and data.class_names == NAMES
    assert data.labels.tolist() == [c for c in range(5, 10) for _ in range(20)]  # dataset-level
    # Same pixels as in the ingested data.
    full = read_images(synthetic_ingested, classes=[5, 6, 7, 8, 9])
    assert (full.images == data.images).all()


def test_reference_is_the_shared_msssim_of_real_pairs(
    synthetic_ingested: Path, synthetic_splits: Path, small_cfg: Config
) -> None:
    plan = load_plan(synthetic_splits)
    data = read_images(synthetic_ingested)
    for c in (0, 9):
        want = mean_pairwise_msssim(
            data.images[data.labels == c],
            small_cfg.split.reference_pairs,
            class_generator(small_cfg.split.seed, c),
        )
        assert plan.reference_msssim[c] == pytest.approx(want, abs=1e-6)


def test_split_is_deterministic(
    synthetic_ingested: Path, tmp_path: Path, small_cfg: Config
) -> None:
    make_splits(synthetic_ingested, tmp_path / "a", small_cfg, progress=False)
    make_splits(synthetic_ingested, tmp_path / "b", small_cfg, progress=False)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    a.pop("config.json"), b.pop("config.json")  # records the git commit, may differ
    assert a == b and "splits.json" in a and "split_0/shard-00000.parquet" in a


def test_explicit_groups_leave_other_classes_out(
    synthetic_ingested: Path, tmp_path: Path, make_cfg: Callable[..., Config]
) -> None:
    cfg = make_cfg("split.classes=[[8, 2], [4]]", "split.ids=[1, 0]")
    plan = make_splits(synthetic_ingested, tmp_path / "s", cfg, progress=False)
    assert [s.classes for s in plan.splits] == [[2, 8], [4]]
    assert sorted(plan.reference_msssim) == [2, 4, 8]
    assert set(read_images(plan.split_dir(0)).labels.tolist()) == {2, 8}
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "config.json",
        "split_0",
        "split_1",
        "splits.json",
    ]


def test_split_ids_must_match_the_plan(
    synthetic_ingested: Path, tmp_path: Path, make_cfg: Callable[..., Config]
) -> None:
    cfg = make_cfg("split.classes_per_split=3")
    msg = "split.ids: [0, 1] does not match the 4 splits of the plan; set split.ids: [0, 1, 2, 3]"
    with pytest.raises(ConfigError, match=f"^{re.escape(msg)}$"):
        make_splits(synthetic_ingested, tmp_path / "s", cfg, progress=False)
    assert not (tmp_path / "s").exists()


def test_missing_ingest_and_tampered_manifest(
    synthetic_ingested: Path, tmp_path: Path, small_cfg: Config
) -> None:
    with pytest.raises(DataError, match="run `acgan ingest`"):
        make_splits(tmp_path / "nothing", tmp_path / "s", small_cfg, progress=False)
    copy = tmp_path / "ingested"
    shutil.copytree(synthetic_ingested, copy)
    raw = json.loads((copy / "manifest.json").read_text())
    raw["content_hash"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(DataError, match="do not match manifest.json's content hash"):
        make_splits(copy, tmp_path / "s", small_cfg, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ingested"]


def test_failed_split_leaves_previous_plan_untouched(
    synthetic_ingested: Path, tmp_path: Path, small_cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "splits"
    make_splits(synthetic_ingested, out, small_cfg, progress=False)
    before = _tree(out)

    def crash(*_: object) -> float:
        raise RuntimeError("simulated crash while measuring")

    monkeypatch.setattr(splits_mod, "_reference", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        make_splits(synthetic_ingested, out, small_cfg, progress=False)
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["splits"]


def test_load_plan_errors(tmp_path: Path, synthetic_splits: Path) -> None:
    with pytest.raises(DataError, match="run `acgan split` first"):
        load_plan(tmp_path)
    (tmp_path / "splits.json").write_text("{not json")
    with pytest.raises(DataError, match="not a valid split plan.*re-run `acgan split`"):
        load_plan(tmp_path)
    (tmp_path / "splits.json").write_text('{"splits": []}')
    with pytest.raises(DataError, match="not a valid split plan"):
        load_plan(tmp_path)
    with pytest.raises(DataError, match=r"split 7: not in .*valid ids: 0, 1"):
        load_plan(synthetic_splits).split(7)
