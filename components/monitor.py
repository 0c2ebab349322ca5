"""Monitor: judge every split's collapse history (the trainer already retrained a split left
collapsed, monitor.retrain_collapsed), set aside collapsed splits as configured, and pack the
surviving generators into one self-contained ensemble ``Model`` artifact (its
``ensemble.json`` lists them relative to itself)."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.common import component


@component()  # reads histories and packs generators: no GPU (the trainer retrains)
def monitor(
    config: str,
    parent_run_id: str,
    splits: Input[Dataset],
    models: Input[list[Model]],
    monitor_dir: Output[Artifact],
    ensemble: Output[Model],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    import shutil
    import tempfile
    from pathlib import Path

    from acgan.kfp_runtime import TASK_SOURCE, load_config, log_figures, models_root, pack_ensemble
    from acgan.lineage import make_tracker
    from acgan.monitor.detector import COLLAPSED
    from acgan.monitor.stage import run_monitor

    cfg = load_config(config)
    # The trainers' outputs sit wherever KFP staged each artifact; the monitor reads the
    # models/split_<id> layout of a DVC run, so lay them out that way (symlinks).
    root = models_root([m.path for m in models], tempfile.mkdtemp(prefix="acgan-models-"))
    out = Path(monitor_dir.path)
    result = run_monitor(
        cfg,
        Path(splits.path),
        root,
        out,
        make_tracker(cfg.tracking, *TASK_SOURCE),
        parent_run_id=parent_run_id,
    )
    members = pack_ensemble(result.manifest, ensemble.path)
    ensemble.metadata["splits"] = [int(m["split_id"]) for m in members]
    statuses = [rec["status"] for rec in result.splits.values()]
    figures = {
        "ensemble_members": len(result.members),
        "splits_excluded": len(result.excluded),
        "splits_retrained": sum(m["status"] == "retrained" for m in result.members),
        "splits_collapsed": statuses.count(COLLAPSED),
    }
    log_figures(metrics, figures)
    shutil.copyfile(out / "report.html", report.path)  # one file: its plots are inline
