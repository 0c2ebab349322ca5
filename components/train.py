"""Train: one split's AC-GAN on one GPU, resuming from the split's newest checkpoint under
``checkpoint_root`` when a retried pod starts again."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.common import component


@component(gpu=True)
def train(
    split_id: int,
    parent_run_id: str,
    config: str,
    checkpoint_root: str,
    splits: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    samples: Output[HTML],
):
    from pathlib import Path

    from acgan.html import figure, page
    from acgan.kfp_runtime import TASK_SOURCE, load_config, log_figures
    from acgan.lineage import make_tracker
    from acgan.train import train_split_with_monitor

    cfg = load_config(config)
    res = train_split_with_monitor(
        cfg,
        split_id,
        Path(splits.path),
        Path(model.path),
        Path(checkpoint_root),
        make_tracker(cfg.tracking, *TASK_SOURCE),
        parent_run_id=parent_run_id,
    )
    log_figures(metrics, res.metrics)
    model.metadata.update(
        {
            "split_id": split_id,
            "step": res.step,
            "resumed_from": res.resumed_from,
            "stopped_early": res.stopped_early,
            "mlflow_run_id": res.run_id,
        }
    )
    title = f"split {split_id}: samples after {res.step} steps"
    caption = "one row per class, the same noise in every column"
    grid = figure(caption, Path(model.path) / "samples.png")
    Path(samples.path).write_text(page(title, f"<h2>{title}</h2>{grid}"))
