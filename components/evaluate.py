"""Evaluation: the judge classifier (trained on real data while the splits train) and the
ensemble's evaluation, whose gate decides whether the ensemble is registered."""

from typing import NamedTuple

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components._runtime import (
    absolute_manifest,
    inline_images,
    load_config,
    log_figures,
    make_tracker,
)
from components.common import component


@component(load_config, make_tracker, log_figures, gpu=True)
def judge(
    config: str,
    parent_run_id: str,
    data: Input[Dataset],
    judge: Output[Model],
    metrics: Output[Metrics],
):
    import json
    from pathlib import Path

    from acgan.evaluate import train_judge

    cfg = load_config(config)
    train_judge(
        cfg,
        Path(data.path),
        Path(judge.path),
        make_tracker(cfg),
        parent_run_id=parent_run_id,
    )
    record = Path(judge.path) / "judge.json"
    if record.is_file():
        log_figures(metrics, json.loads(record.read_text()), prefix="judge_")


@component(
    load_config,
    make_tracker,
    log_figures,
    inline_images,
    absolute_manifest,
    gpu=True,
)
def evaluate(
    config: str,
    parent_run_id: str,
    data: Input[Dataset],
    splits: Input[Dataset],
    ensemble: Input[Model],
    judge: Input[Model],
    eval_dir: Output[Artifact],
    report: Output[HTML],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
) -> NamedTuple("EvaluateOutputs", [("passed", bool)]):
    import json
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    from acgan.evaluate import evaluate as run_evaluate

    cfg = load_config(config)
    out = Path(eval_dir.path)
    run_evaluate(
        cfg,
        Path(data.path),
        Path(splits.path),
        Path(absolute_manifest(ensemble.path, tempfile.mkdtemp())),
        Path(judge.path),
        out,
        make_tracker(cfg),
        parent_run_id=parent_run_id,
    )
    figures = json.loads((out / "metrics.json").read_text())
    log_figures(metrics, figures)
    gate = json.loads((out / "gate.json").read_text())
    metrics.log_metric("gate_passed", float(bool(gate["passed"])))
    Path(report.path).write_text(inline_images((out / "report.html").read_text(), str(out)))
    return namedtuple("EvaluateOutputs", ["passed"])(bool(gate["passed"]))
