"""Split: group the classes (one AC-GAN each), measure the real-image MS-SSIM reference, and
return the split plan that the pipeline's ``ParallelFor`` fans out over."""

from kfp.dsl import Dataset, Input, Metrics, Output

from components.common import component


@component()
def split(
    config: str,
    parent_run_id: str,
    data: Input[Dataset],
    splits: Output[Dataset],
    reference: Output[Metrics],
) -> list[dict]:
    from pathlib import Path

    from acgan.data.splits import make_splits
    from acgan.kfp_runtime import load_config, log_figures

    cfg = load_config(config)
    plan = make_splits(Path(data.path), Path(splits.path), cfg)
    names = plan.class_names
    log_figures(reference, {f"real_msssim_{names[c]}": v for c, v in plan.reference_msssim.items()})
    splits.metadata.update({"splits": len(plan.splits), "data_hash": plan.data_hash})
    # One item per split. The config and the parent run id ride along in each item: every
    # training task gets them as plain parameters (kfp.local replaces upstream task outputs
    # that enter a loop with the loop item, so they cannot come in as separate inputs).
    return [
        {
            "split_id": s.id,
            "classes": ", ".join(s.class_names),
            "parent_run_id": parent_run_id,
            "config": config,
        }
        for s in plan.splits
    ]
