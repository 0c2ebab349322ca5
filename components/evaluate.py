"""Evaluation: the judge classifier (trained on real data while the splits train) and the
ensemble's evaluation, whose gate decides whether the ensemble is registered."""

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.common import component


@component(gpu=True)
def judge(
    config: str,
    parent_run_id: str,
    data: Input[Dataset],
    judge: Output[Model],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
):
    from pathlib import Path

    import torch

    from acgan.data.shards import read_images
    from acgan.evaluation.judge import train_judge
    from acgan.kfp_runtime import TASK_SOURCE, load_config, log_figures
    from acgan.lineage import make_tracker
    from acgan.metrics.judge import holdout_mask, load_judge

    cfg = load_config(config)
    tracker = make_tracker(cfg.tracking, *TASK_SOURCE)
    res = train_judge(cfg, Path(data.path), Path(judge.path), tracker, parent_run_id=parent_run_id)
    figures = {f"accuracy_{name}": v for name, v in res.per_class_accuracy.items()}
    log_figures(metrics, {"real_accuracy": res.real_accuracy, **figures})
    judge.metadata.update({"kind": res.kind, "real_accuracy": res.real_accuracy})
    # The KFP UI's confusion matrix: the judge on the real images it held out (the same rows
    # that real_accuracy is measured on).
    net = load_judge(judge.path)
    real = read_images(Path(data.path))
    hold = holdout_mask(real.labels, cfg.eval.judge_holdout, cfg.eval.judge_seed)
    predicted = net.embed(real.images[hold], cfg.eval.batch_size).logits.argmax(1)
    k = len(net.class_names)
    matrix = torch.zeros(k, k, dtype=torch.long)
    matrix.index_put_((real.labels[hold], predicted), torch.ones_like(predicted), accumulate=True)
    confusion.log_confusion_matrix(list(net.class_names), matrix.tolist())


@component(gpu=True)
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
) -> bool:
    """Returns whether the evaluation gate passed (the pipeline registers only then)."""
    import shutil
    from pathlib import Path

    from acgan.evaluation.stage import evaluate as run_evaluate
    from acgan.kfp_runtime import TASK_SOURCE, load_config, log_figures
    from acgan.lineage import make_tracker

    cfg = load_config(config)
    result = run_evaluate(
        cfg,
        Path(data.path),
        Path(splits.path),
        Path(ensemble.path),  # its ensemble.json lists the members relative to itself
        Path(judge.path),
        Path(eval_dir.path),
        make_tracker(cfg.tracking, *TASK_SOURCE),
        parent_run_id=parent_run_id,
    )
    passed = bool(result.gate["passed"])
    log_figures(metrics, {**result.metrics, "gate_passed": float(passed)})
    eval_dir.metadata.update({"gate": result.gate})
    shutil.copyfile(result.report, report.path)  # one file: its pictures are inline
    return passed
