"""What a finished pipeline's outputs must say, whichever orchestrator ran it (``dvc repro``,
``kfp.local``): the evaluation's files agree with each other, cover every class, and agree with
MLflow; the registered version points at the run that logged it. A broken pipeline (a class
dropped, a headline copied from the wrong figure, a run never logged) fails these."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def check_evaluation(eval_dir: Path, class_names: list[str]) -> dict[str, float]:
    """``eval_dir``'s metrics.json, figures.json, gate.json, plots and config.json agree; every
    class has its figures. Returns metrics.json."""
    metrics, figures = _json(eval_dir / "metrics.json"), _json(eval_dir / "figures.json")
    gate, config = _json(eval_dir / "gate.json"), _json(eval_dir / "config.json")
    # the headline is figures.json's overall figures, and the gate's verdict
    assert metrics["gate_passed"] == float(gate["passed"])
    assert {"judge_accuracy", "judge_skill", "fid", "msssim_mean"} <= set(metrics)
    for key, value in metrics.items():
        if key != "gate_passed":
            assert value == pytest.approx(figures[key]), key
    # every class of the dataset was judged, and the overall accuracy is their mean (the
    # same number of samples per class)
    per_class = figures["per_class"]
    assert sorted(per_class) == sorted(class_names)
    for name, fig in per_class.items():
        assert {"judge_accuracy", "real_judge_accuracy", "msssim"} <= set(fig), name
    for overall, key in (("judge_accuracy", "judge_accuracy"), ("msssim_mean", "msssim")):
        mean = sum(f[key] for f in per_class.values()) / len(per_class)
        assert metrics[overall] == pytest.approx(mean), overall
    assert figures["classes_missing"] == []
    table = _json(eval_dir / "plots" / "per_class.json")  # what `dvc plots show` draws
    assert sorted(row["class"] for row in table) == sorted(per_class)
    for row in table:
        assert row["judge_accuracy"] == pytest.approx(per_class[row["class"]]["judge_accuracy"])
    # the gate's reasons are its verdict, and it judged the figures written beside it
    assert gate["passed"] is (not gate["reasons"]) and len(gate["advice"]) == len(gate["reasons"])
    for key, value in gate["figures"].items():
        assert value == pytest.approx(figures[key]), key
    assert config["stage"] == "evaluate" and config["run_id"]
    assert config["inputs"]["data_hash"] == config["data_hash"]
    return metrics


def check_mlflow(client: Any, eval_dir: Path, metrics: dict[str, float], parent_id: str) -> None:
    """The evaluate run named in config.json is a child of the pipeline run and logged the
    same headline figures as metrics.json (and the parent holds them too)."""
    run = client.get_run(_json(eval_dir / "config.json")["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent_id
    assert run.data.tags["acgan.stage"] == "evaluate"
    parent = client.get_run(parent_id).data.metrics
    for key, value in metrics.items():
        if key != "gate_passed":
            assert run.data.metrics[key] == pytest.approx(value), key
            assert parent[key] == pytest.approx(value), key


def check_registered(client: Any, name: str, version: int | str, parent_id: str) -> Any:
    """The version was logged by a register run of this pipeline run; returns the version."""
    mv = client.get_model_version(name, str(version))
    run = client.get_run(mv.run_id)
    assert run.data.tags["acgan.stage"] == "register"
    assert run.data.tags["mlflow.parentRunId"] == parent_id
    assert run.data.tags["acgan.model_version"] == str(version)
    assert mv.tags["acgan.pipeline_run_id"] == parent_id
    return mv
