"""Monitor: judge every split's collapse history, retrain or drop collapsed splits as
configured, and pack the surviving generators into one self-contained ensemble ``Model``
artifact (its ``ensemble.json`` lists them by relative path)."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components._runtime import (
    inline_images,
    load_config,
    log_figures,
    make_tracker,
    models_root,
    pack_ensemble,
)
from components.common import component


@component(
    load_config,
    make_tracker,
    log_figures,
    inline_images,
    models_root,
    pack_ensemble,
    gpu=True,  # a collapsed split may be retrained here (monitor.retrain_collapsed)
)
def monitor(
    config: str,
    parent_run_id: str,
    checkpoint_root: str,
    splits: Input[Dataset],
    models: Input[list[Model]],
    monitor_dir: Output[Artifact],
    ensemble: Output[Model],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    import tempfile
    from pathlib import Path

    from acgan.monitor import run_monitor
    from acgan.monitor.detector import COLLAPSED

    cfg = load_config(config)
    # The trainers' outputs sit wherever KFP staged each artifact; the monitor reads the
    # models/split_<id> layout of a DVC run, so lay them out that way (symlinks).
    root = models_root(models, tempfile.mkdtemp(prefix="acgan-models-"))
    out = Path(monitor_dir.path)
    result = run_monitor(
        cfg,
        Path(splits.path),
        Path(root),
        out,
        make_tracker(cfg),
        parent_run_id=parent_run_id,
        checkpoint_root=Path(checkpoint_root),
    )
    members = pack_ensemble(str(result.manifest), [root, str(out)], ensemble.path)
    ensemble.metadata["splits"] = [int(m["split_id"]) for m in members]
    statuses = [rec["status"] for rec in result.splits.values()]
    figures = {
        "ensemble_members": len(result.members),
        "splits_excluded": len(result.excluded),
        "splits_retrained": sum(m["status"] == "retrained" for m in result.members),
        "splits_collapsed": statuses.count(COLLAPSED),
    }
    log_figures(metrics, figures)
    html = inline_images((out / "report.html").read_text(), str(out))
    Path(report.path).write_text(html)
