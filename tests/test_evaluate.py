"""Evaluation: each figure's sanity (real vs real, noise, a collapsed generator), the gate,
the exact nearest-neighbour search, and the stage end to end (files, CLI, MLflow, errors)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from acgan.cli import cli, main
from acgan.config import Config, load
from acgan.data.ingest import ingest
from acgan.data.shards import read_images
from acgan.data.splits import make_splits
from acgan.errors import CheckpointError, DataError
from acgan.evaluation.gate import gate_decision
from acgan.evaluation.judge import train_judge
from acgan.evaluation.report import HEADLINE
from acgan.evaluation.stage import evaluate
from acgan.metrics import fid_is, suite
from acgan.metrics.judge import Judge, holdout_mask, load_judge
from acgan.metrics.memorisation import nearest_l1
from acgan.models.ensemble import write_manifest
from acgan.monitor import status

# 60 images per class and 6 epochs: a judge well above chance (about 0.68) in a few seconds.
JUDGE_DATA = ("data.synthetic_per_class=60", "data.shard_rows=256", "tracking.enabled=false")


@dataclass(frozen=True)
class Judged:
    judge: Judge
    images: torch.Tensor  # the real images (uint8), their labels, the judge's hold-out rows
    labels: torch.Tensor
    hold: torch.Tensor
    info: dict


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory) -> Judged:
    root = tmp_path_factory.mktemp("judged")
    cfg = load(None, [*JUDGE_DATA, "eval.judge_epochs=6"])
    ingest(cfg.data, root / "data", progress=False)
    res = train_judge(cfg, root / "data", root / "judge", progress=False)
    info = json.loads((root / "judge" / "judge.json").read_text())
    assert info["real_accuracy"] == res.real_accuracy
    data = read_images(root / "data")
    hold = holdout_mask(data.labels, info["holdout_fraction"], info["seed"])
    return Judged(load_judge(root / "judge"), data.images, data.labels, hold, info)


def _eval_data(j: Judged, fake: torch.Tensor | None = None, per_class: int = 30) -> suite.EvalData:
    """The first ``per_class`` real images of each class as the real set (half the data keeps
    the test quick) and ``fake`` (default: those same real images) as the samples."""
    rank = torch.zeros_like(j.labels)
    for c in range(10):
        rows = (j.labels == c).nonzero().flatten()
        rank[rows] = torch.arange(len(rows))
    keep = rank < per_class
    images, labels = j.images[keep], j.labels[keep]
    return suite.EvalData(
        judge=j.judge,
        classes=list(range(10)),
        class_names=dict(enumerate(j.judge.class_names)),
        real_images=images,
        real_labels=labels,
        holdout=j.hold[keep],
        fake_images=images if fake is None else fake[keep],
        fake_labels=labels,
        split_of={c: c // 5 for c in range(10)},
        msssim_pairs=20,
        memorisation_samples=10,
    )


def test_judge_trains_well_above_chance(judged: Judged) -> None:
    info = judged.info
    assert info["real_accuracy"] >= 0.4  # ten classes: chance is 0.1
    assert info["holdout_images"] == 60 and info["kind"] == "cnn"
    assert info["history"][-1]["holdout_accuracy"] == pytest.approx(info["real_accuracy"])


def test_real_data_as_samples_scores_like_real_data(judged: Judged) -> None:
    figs, protocols = suite.compute(_eval_data(judged))
    o = figs.overall
    assert o["judge_accuracy"] >= 0.5 and o["real_judge_accuracy"] >= 0.4
    assert o["fid"] < 1e-3 and o["intra_fid_mean"] < 1e-2  # identical sets
    assert o["diverse_fraction"] == 1.0  # the paper's figure on real data
    assert o["msssim_mean"] == pytest.approx(o["msssim_real_mean"])
    assert o["inception_score"] > 1.5 and o["inception_score"] == o["inception_score_real"]
    # Training images as samples: each is its own nearest neighbour, distance 0.
    assert o["nn_l1_min"] == 0.0 and o["nn_l1_ratio"] < 0.01
    res = figs.tables["resolution"]
    assert [r["resolution"] for r in res] == [32, 16, 8, 4]
    assert res[0]["sample_accuracy"] > res[-1]["sample_accuracy"]  # blur loses the class
    assert set(protocols) == set(suite.METRICS)
    assert "msssim-3scale-k7" in protocols["diversity_msssim"]


def test_noise_and_collapse_are_caught(judged: Judged) -> None:
    images, labels = judged.images, judged.labels
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, images.shape, generator=g, dtype=torch.uint8)
    noisy = suite.compute(_eval_data(judged, noise))[0].overall
    feats = judged.judge.embed(images).features
    halves = fid_is.frechet_distance(feats[::2], feats[1::2])  # real vs real, 300 each
    assert noisy["judge_accuracy"] <= 0.3  # chance is 0.1
    assert noisy["inception_score"] < noisy["inception_score_real"]
    assert noisy["fid"] > 10 * halves
    assert noisy["nn_l1_mean"] > 40

    # A collapsed generator: every sample of a class is (almost) the same image.
    first = torch.stack([images[labels == c][0] for c in range(10)])
    jitter = torch.randint(0, 2, images.shape, generator=g, dtype=torch.uint8)
    d = _eval_data(judged, first[labels] // 2 * 2 + jitter)
    figs = suite.METRICS["diversity_msssim"].fn(d)
    assert figs.overall["diverse_fraction"] == 0.0 and figs.overall["msssim_mean"] > 0.9


def test_inception_score_bounds() -> None:
    assert fid_is.inception_score(torch.zeros(50, 10))[0] == pytest.approx(1.0)  # constant
    confident = torch.eye(10).repeat(5, 1) * 50  # sure of each class, classes balanced
    mean, _ = fid_is.inception_score(confident, splits=1)
    assert mean == pytest.approx(10.0, rel=1e-3)
    x = torch.randn(40, 10, generator=torch.Generator().manual_seed(0))
    assert fid_is.inception_score(x, seed=3) == fid_is.inception_score(x.clone(), seed=3)


def test_fid_real_vs_real_is_zero_and_noise_is_large() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 8, generator=g)
    assert fid_is.frechet_distance(a, a) < 1e-6
    b = torch.randn(500, 8, generator=g)
    assert fid_is.frechet_distance(a, b) < 0.5  # same distribution, sampling noise only
    assert fid_is.frechet_distance(a, b + 3.0) > 8 * 9 * 0.9  # mean shifted by 3 in 8 dims


def test_nearest_l1_is_exact() -> None:
    g = torch.Generator().manual_seed(1)
    bank = torch.randint(0, 256, (300, 3, 8, 8), generator=g, dtype=torch.uint8)
    near = (bank[:40].int() + torch.randint(-3, 4, (40, 3, 8, 8), generator=g)).clamp(0, 255)
    queries = torch.cat(
        [near.to(torch.uint8), torch.randint(0, 256, (20, 3, 8, 8), generator=g, dtype=torch.uint8)]
    )
    dist, idx = nearest_l1(queries, bank)
    full = torch.cdist(queries.flatten(1).float(), bank.flatten(1).float(), p=1)
    assert torch.equal(dist * 192, full.min(1).values)
    assert torch.equal(idx[:40], torch.arange(40))
    exclude = torch.arange(60)  # a query may not match its own row
    d2, i2 = nearest_l1(bank[:60], bank, exclude=exclude)
    full2 = torch.cdist(bank[:60].flatten(1).float(), bank.flatten(1).float(), p=1)
    full2[torch.arange(60), exclude] = float("inf")
    assert torch.equal(d2 * 192, full2.min(1).values) and not (i2 == exclude).any()


def test_gate_pass_and_fail_with_reasons(make_cfg: Callable[..., Config]) -> None:
    figures = {"judge_accuracy": 0.5, "judge_skill": 0.9, "fid_ratio": 3.0,
               "diverse_fraction": 0.8, "fid": 20.0, "classes_missing": []}  # fmt: skip
    ok = gate_decision(figures, make_cfg("eval.min_accuracy=0.4", "eval.max_fid=25").eval)
    assert ok["passed"] and ok["reasons"] == [] and ok["thresholds"]["max_fid"] == 25
    bad = gate_decision(
        figures,
        make_cfg("eval.min_accuracy=0.6", "eval.max_fid=10", "eval.min_diverse_fraction=0.9").eval,
    )
    assert not bad["passed"] and len(bad["reasons"]) == 3
    assert any("eval.min_accuracy" in r and "0.5" in r for r in bad["reasons"])
    assert any("fid 20 is above the maximum 10 (eval.max_fid)" in r for r in bad["reasons"])
    assert bad["figures"]["fid"] == 20.0
    # one "what to do next" per failed check, naming the figure it is about
    assert [a.split(":")[0] for a in bad["advice"]] == ["diverse_fraction", "judge_accuracy", "fid"]
    assert ok["advice"] == []
    nan = gate_decision({**figures, "judge_skill": float("nan")}, make_cfg().eval)
    assert not nan["passed"] and "not a number" in nan["reasons"][0]
    # The defaults are relative: to chance and the judge's real accuracy, to the real FID
    # floor, to the real data's diversity; and every class of the dataset must be served.
    noise = {**figures, "judge_skill": 0.02, "fid_ratio": 40.0, "diverse_fraction": 0.0}
    failed = gate_decision(noise, make_cfg().eval)
    keys = ("eval.min_skill", "eval.max_fid_ratio", "eval.min_diverse_fraction")
    assert not failed["passed"] and all(any(k in r for r in failed["reasons"]) for k in keys)
    missing = gate_decision({**figures, "classes_missing": ["star", "ring"]}, make_cfg().eval)
    assert not missing["passed"] and "star, ring" in missing["reasons"][0]
    assert missing["advice"][0].startswith("classes_missing: ")
    assert gate_decision(
        {**figures, "classes_missing": ["star"]}, make_cfg("eval.require_all_classes=false").eval
    )["passed"]


# ------------------------------------------------------------------------ the stage end to end


@pytest.fixture(scope="module")
def staged(tiny_trained, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The monitor's ensemble manifest (both tiny splits), a judge and a params file holding
    the tiny pipeline's configuration (its MLflow parent run is keyed by it)."""
    root = tmp_path_factory.mktemp("staged")
    members = [
        {"split_id": i, "model_dir": str(d), "status": "healthy"}
        for i, d in enumerate(tiny_trained.model_dirs)
    ]
    manifest = write_manifest(root / "ensemble.json", members)
    train_judge(tiny_trained.cfg, tiny_trained.ingested, root / "judge", progress=False)
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_trained.cfg.to_dict()))
    return {"manifest": manifest, "judge": root / "judge", "params": params}


def _args(tiny_trained, staged: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "evaluate", "--params", str(staged["params"]),
        "--data", str(tiny_trained.ingested), "--splits", str(tiny_trained.splits),
        "--ensemble", str(staged["manifest"]), "--judge", str(staged["judge"]),
        "--out", str(out), "--set", "eval.grid_classes=3", *extra,
    ]  # fmt: skip


def test_evaluate_cli_end_to_end_with_mlflow(
    tiny_trained, staged: dict[str, Path], tmp_path: Path
) -> None:
    out, db = tmp_path / "eval", tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    args = _args(tiny_trained, staged, out, "--set", "tracking.enabled=true",
                 "--set", f"tracking.uri={uri}")  # fmt: skip
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "judge accuracy" in res.output and str(out / "report.html") in res.output
    # metrics.json: the headline only (what `dvc metrics show` prints); figures.json: all
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {*HEADLINE, "gate_passed"}
    assert all(isinstance(v, float) for v in metrics.values())
    figures = json.loads((out / "figures.json").read_text())
    assert len(figures["per_class"]) == 10 and "intra_fid" in figures["per_class"]["circle"]
    assert set(figures["resolution"]) == {"32", "16", "8", "4"}
    gate = json.loads((out / "gate.json").read_text())
    assert set(gate) == {"passed", "reasons", "advice", "figures", "thresholds"}
    for name in (
        "samples.png",
        "interpolation.png",
        "class_swap.png",
        "memorisation.png",
        "accuracy.png",
        "msssim.png",
        "resolution.png",
        "nn_distance.png",
        "per_class.json",
        "resolution.json",
        "nn_distance.json",
    ):
        assert (out / "plots" / name).is_file(), name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 8 and "src='plots" not in html
    # every split's monitor status, in the shared vocabulary (the manifest says "healthy")
    assert html.count(status.badge("healthy")) >= 2
    assert "fid_judge" in json.loads((out / "config.json").read_text())["protocols"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(tiny_trained.cfg.tracking.experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`acgan.stage` = 'evaluate'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert f"#/experiments/{exp.experiment_id}/runs/{run.info.run_id}" in html  # a link
    assert run.data.metrics["judge_accuracy"] == pytest.approx(metrics["judge_accuracy"])
    # evaluate ends the pipeline's parent run with the headline figures and the gate
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics == pytest.approx(metrics)
    assert parent.data.tags["acgan.gate"] == run.data.tags["acgan.gate"]
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "per_class/circle/judge_accuracy" in run.data.metrics
    assert run.data.tags["mlflow.parentRunId"] and run.data.tags["acgan.gate"] in (
        "passed",
        "failed",
    )
    logged = {f.path for f in client.list_artifacts(run.info.run_id, "evaluate")}
    assert {"evaluate/report.html", "evaluate/metrics.json", "evaluate/plots"} <= logged
    pngs = {f.path for f in client.list_artifacts(run.info.run_id, "evaluate/plots")}
    assert "evaluate/plots/samples.png" in pngs


def test_missing_inputs_are_one_line_errors(
    tiny_trained, staged: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "eval"
    cases = [
        (["--ensemble", str(tmp_path / "none.json")], "ensemble manifest not found; run "
         "`acgan monitor`"),
        (["--judge", str(tmp_path / "nojudge")], "judge not found; run `acgan judge"),
        (["--set", "eval.samples_per_class=0"], "eval.samples_per_class: must be >= 2"),
    ]  # fmt: skip
    for extra, expected in cases:
        with pytest.raises(SystemExit) as exit_:
            main([*_args(tiny_trained, staged, out), *extra])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("acgan: error: ") and expected in err and err.count("\n") == 1
    assert not out.exists()


def test_mismatched_inputs_name_what_to_do(
    make_cfg: Callable[..., Config], tiny_trained, staged: dict[str, Path], tmp_path: Path
) -> None:
    cfg = tiny_trained.cfg
    # Data with two of the ten classes: the ensemble serves classes it does not have.
    two = make_cfg("data.classes=[circle, square]", "split.classes_per_split=2", "split.ids=[0]")
    ingest(two.data, tmp_path / "two", progress=False)
    make_splits(tmp_path / "two", tmp_path / "two_splits", two, progress=False)
    with pytest.raises(DataError, match=r"serves class 2 \('triangle'\) which .* does not have"):
        evaluate(cfg, tmp_path / "two", tmp_path / "two_splits", staged["manifest"],
                 staged["judge"], tmp_path / "eval", progress=False)  # fmt: skip
    # Splits of other data than --data.
    with pytest.raises(DataError, match="split from other data"):
        evaluate(cfg, tiny_trained.ingested, tmp_path / "two_splits", staged["manifest"],
                 staged["judge"], tmp_path / "eval", progress=False)  # fmt: skip
    # A judge trained on other data.
    judge = tmp_path / "judge"
    shutil.copytree(staged["judge"], judge)
    info = json.loads((judge / "judge.json").read_text())
    (judge / "judge.json").write_text(json.dumps({**info, "data_hash": "0" * 64}))
    with pytest.raises(CheckpointError, match="the judge was trained on other data"):
        evaluate(cfg, tiny_trained.ingested, tiny_trained.splits, staged["manifest"], judge,
                 tmp_path / "eval", progress=False)  # fmt: skip
    assert not (tmp_path / "eval").exists()
