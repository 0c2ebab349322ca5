"""The whole Kubeflow DAG on this machine (``kfp.local.SubprocessRunner(use_venv=False)``) on
the synthetic dataset with a tiny budget, and the glue the components share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pipeline_checks import check_evaluation, check_mlflow, check_registered

ROOT = Path(__file__).resolve().parents[1]

from acgan import kfp_runtime as rt  # noqa: E402
from pipelines.local import LocalRun, run_local, task_threads  # noqa: E402
from pipelines.submit import SubmitError  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
# kfp.local says, for every task, that GPU/resource settings and our images do not apply to
# a local subprocess: expected here, not news.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Task .* have no effect in the current local runner"),
    pytest.mark.filterwarnings("ignore:You may be attemping to run a task that uses custom"),
]

# Two splits of five synthetic classes, a couple of steps each: real files, not good samples.
# The gate is open (every check off) so that registration runs after so short a training.
TINY = {
    "steps": 2,
    "batch_size": 4,
    "classes_per_split": 5,
    "overrides": [
        "data.synthetic_per_class=12",
        "data.shard_rows=64",
        "split.reference_pairs=4",
        "train.log_every=1",
        "train.sample_every=2",
        "train.checkpoint_every=2",
        "monitor.every=100",
        "monitor.pairs=2",
        "eval.samples_per_class=4",
        "eval.msssim_pairs=2",
        "eval.memorisation_samples=2",
        "eval.judge_epochs=1",
        "eval.grid_classes=2",
        # the gate open (every check off) so that registration runs after so short a training
        "eval.min_skill=null",
        "eval.max_fid_ratio=null",
        "eval.min_diverse_fraction=0",
        "eval.require_all_classes=false",
        "registry.model_name=acgan-kfp-local",
    ],
}


def _outputs(task_dir: Path) -> dict[str, Any]:
    return json.loads((task_dir / "executor_output.json").read_text())


def _artifact_metadata(task_dir: Path, name: str) -> dict[str, Any]:
    return _outputs(task_dir)["artifacts"][name]["artifacts"][0]["metadata"]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> LocalRun:
    root = tmp_path_factory.mktemp("kfp_local")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # the task processes inherit it: MLflow's ./mlruns lands here
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("OMP_NUM_THREADS", raising=False)
        return run_local(root / "run", TINY, parallelism=2)


@pytest.mark.slow
def test_one_generator_per_split(local_run: LocalRun) -> None:
    from acgan.models.ensemble import load_member

    models = local_run.models()
    assert len(models) == 2
    members = [load_member(m) for m in models]
    assert sorted(m.split_id for m in members) == [0, 1]
    assert all(m.step == 2 for m in members)
    # two training tasks at once share the cores instead of each taking all of them
    threads = {json.loads((m / "train.json").read_text())["threads"] for m in models}
    assert threads == {task_threads(2)}
    for m in models:
        assert (m / "samples.png").read_bytes().startswith(PNG)
        page = (m.parent / "samples").read_text()
        assert "data:image/png;base64," in page  # the KFP UI's view of the samples


@pytest.mark.slow
def test_monitor_and_evaluation_figures(local_run: LocalRun) -> None:
    from acgan.models.ensemble import Ensemble, read_manifest

    monitor = local_run.task("monitor")
    plots = sorted((monitor / "monitor_dir" / "plots").glob("split_*.png"))
    assert [p.name for p in plots] == ["split_0.png", "split_1.png"]
    assert all(p.read_bytes().startswith(PNG) for p in plots)
    assert "data:image/png;base64," in (monitor / "report").read_text()
    # the ensemble artifact is self-contained: its manifest resolves inside it
    ens_dir = monitor / "ensemble"
    ensemble = Ensemble.load(read_manifest(ens_dir / "ensemble.json"))
    assert ensemble.classes == list(range(10))
    assert _artifact_metadata(monitor, "metrics")["ensemble_members"] == 2.0

    evaluate = local_run.task("evaluate")
    manifest = json.loads((local_run.task("ingest") / "data" / "manifest.json").read_text())
    metrics = check_evaluation(evaluate / "eval_dir", manifest["class_names"])
    figures = list((evaluate / "eval_dir" / "plots").glob("*.png"))
    assert figures and all(p.read_bytes().startswith(PNG) for p in figures)
    assert "<html" in (evaluate / "report").read_text().lower()
    assert _artifact_metadata(evaluate, "metrics")["judge_accuracy"] == metrics["judge_accuracy"]
    confusion = _artifact_metadata(local_run.task("judge"), "confusion")["confusionMatrix"]
    assert len(confusion["rows"]) == 10


@pytest.mark.slow
def test_gate_passed_and_a_version_was_registered(local_run: LocalRun) -> None:
    from mlflow.tracking import MlflowClient

    assert local_run.gate()["passed"] is True
    record = local_run.registration()
    assert record is not None and record["registered"] is True
    client = MlflowClient(tracking_uri=local_run.tracking_uri)
    versions = client.search_model_versions("name = 'acgan-kfp-local'")
    assert len(versions) == 1
    uri = _outputs(local_run.task("register"))["parameterValues"]["Output"]
    assert uri == f"models:/acgan-kfp-local/{versions[0].version}"
    # one MLflow parent run, created by ingest and passed down: every other run is its child
    parent = _outputs(local_run.task("ingest"))["parameterValues"]["parent_run_id"]
    assert versions[0].tags["acgan.pipeline_run_id"] == parent
    run = client.get_run(parent)  # ended by the last task, with the headline and the version
    assert run.info.status == "FINISHED" and "judge_accuracy" in run.data.metrics
    assert run.data.tags["acgan.model_version"] == str(versions[0].version)
    eval_dir = local_run.task("evaluate") / "eval_dir"
    check_mlflow(client, eval_dir, json.loads((eval_dir / "metrics.json").read_text()), parent)
    check_registered(client, "acgan-kfp-local", versions[0].version, parent)
    assert run.data.tags["mlflow.source.name"] == "acgan pipeline (Kubeflow)"
    exp = client.get_experiment_by_name("acgan")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.info.run_id != parent]
    assert {r.data.tags.get("mlflow.parentRunId") for r in children} == {parent}
    assert {r.data.tags.get("acgan.split") for r in children} >= {"0", "1"}  # the trainers
    stages = {r.data.tags.get("acgan.stage") for r in children}
    assert {"judge", "monitor", "evaluate", "register"} <= stages


def test_bad_parameters_stop_before_any_task(tmp_path: Path) -> None:
    with pytest.raises(SubmitError, match="--param classes_per_split: 11 is larger than the 10"):
        run_local(tmp_path, {"classes_per_split": 11})
    with pytest.raises(SubmitError, match="--param stepz: the pipeline has no such parameter"):
        run_local(tmp_path, {"stepz": 1})
    assert not (tmp_path / "outputs").exists()


# --- the glue the components import (acgan.kfp_runtime) and manifest paths ---


def test_manifest_paths_resolve_relative_to_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from acgan.models.ensemble import read_manifest, write_manifest

    monkeypatch.chdir(tmp_path)  # as dvc runs the stages: relative paths
    (tmp_path / "models" / "split_3").mkdir(parents=True)
    manifest = write_manifest(
        Path("reports/monitor/ensemble.json"),
        [{"split_id": 3, "model_dir": "models/split_3", "status": "healthy"}],
    )
    raw = json.loads(manifest.read_text())
    assert raw["members"][0]["model_dir"] == "../../models/split_3"
    assert read_manifest(manifest) == [Path("models/split_3")]
    # from any other directory, and after the tree moved as a whole
    monkeypatch.chdir(tmp_path / "models")
    assert read_manifest(tmp_path / manifest) == [tmp_path / "models/split_3"]
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    tmp_path.rename(moved)
    assert read_manifest(moved / manifest) == [moved / "models/split_3"]
    # a manifest written before the rule: its paths are relative to the working directory
    old = moved / "old.json"
    old.write_text(json.dumps({"members": [{"split_id": 0, "model_dir": "models/split_0"}]}))
    assert read_manifest(old) == [Path("models/split_0")]


def test_pack_ensemble_is_self_contained(tmp_path: Path) -> None:
    from acgan.models.ensemble import read_manifest, write_manifest

    trained = tmp_path / "somewhere" / "split_3"
    trained.mkdir(parents=True)
    (trained / "generator.pt").write_bytes(b"weights")
    manifest = write_manifest(
        tmp_path / "monitor" / "ensemble.json",
        [{"split_id": 3, "model_dir": str(trained), "status": "healthy"}],
        [{"split_id": 4, "reason": "collapsed", "model_dir": str(tmp_path / "x")}],
    )
    packed = tmp_path / "packed"
    members = rt.pack_ensemble(manifest, packed)
    assert [(m["split_id"], m["status"]) for m in members] == [(3, "healthy")]
    assert (packed / "split_3" / "generator.pt").read_bytes() == b"weights"
    raw = json.loads((packed / "ensemble.json").read_text())
    assert raw["members"][0]["model_dir"] == "split_3"  # inside the artifact
    assert raw["excluded"] == [{"split_id": 4, "reason": "collapsed"}]
    elsewhere = tmp_path / "staged"  # wherever KFP stages the artifact for the next task
    packed.rename(elsewhere)
    assert read_manifest(elsewhere / "ensemble.json") == [elsewhere / "split_3"]
    trained.rename(tmp_path / "gone")
    with pytest.raises(Exception, match="member directory .*split_3 not found"):
        rt.pack_ensemble(manifest, tmp_path / "p2")
