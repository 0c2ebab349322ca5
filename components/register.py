"""Register: the evaluated ensemble as a new version of the MLflow registered model (run only
when the evaluation gate passed); promotion to ``@champion`` is the registry's decision."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.common import component


@component()
def register(
    config: str,
    parent_run_id: str,
    data: Input[Dataset],
    ensemble: Input[Model],
    monitor_report: Input[Artifact],
    eval_report: Input[Artifact],
    registration: Output[Artifact],
) -> str:
    """Returns the new version's ``models:/NAME/VERSION`` ("" when registration is off)."""
    from pathlib import Path

    from acgan.kfp_runtime import TASK_SOURCE, load_config
    from acgan.lineage import make_tracker
    from acgan.registry.register import register as run_register

    cfg = load_config(config)
    result = run_register(
        cfg,
        Path(ensemble.path),  # its ensemble.json lists the members relative to itself
        Path(data.path),
        Path(registration.path),
        make_tracker(cfg.tracking, *TASK_SOURCE),
        monitor_dir=Path(monitor_report.path),
        eval_dir=Path(eval_report.path),
        parent_run_id=parent_run_id,
    )
    registration.metadata.update(
        {
            "model_name": result.model_name,
            "version": result.version,
            "model_uri": result.model_uri or "",
            "champion": result.champion,
            "decision": result.decision,
            "reason": result.reason,
        }
    )
    return result.model_uri or ""
