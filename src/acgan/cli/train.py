"""Training commands: ``acgan train`` and ``acgan monitor`` (the collapse monitor)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from acgan.cli.common import dir_option, parent_run_option, with_config
from acgan.config import Config


@click.command()
@with_config
@click.option(
    "--split",
    "split_ids",
    required=True,
    multiple=True,
    type=click.IntRange(min=0),
    help="Split id from splits.json; repeat it to train several splits in this process.",
)
@dir_option("--splits", default="data/splits", help="Output of `acgan split`.")
@dir_option(
    "--out", default=None, help="Output directory of a single split  [default: <models>/split_<ID>]"
)
@dir_option("--models", default="models", help="Root of the split outputs: <models>/split_<ID>.")
@dir_option(
    "--checkpoints",
    default="checkpoints",
    help="Checkpoint root; a restarted run resumes from here.",
)
@parent_run_option()
@click.option(
    "--attempt",
    default=0,
    type=click.IntRange(min=0),
    help="Retrain attempt (a new seed per attempt).",
)
def train(
    cfg: Config,
    split_ids: tuple[int, ...],
    splits: str,
    out: str | None,
    models: str,
    checkpoints: str,
    parent_run_id: str | None,
    attempt: int,
) -> None:
    """Train splits' AC-GANs; resumes from the latest checkpoints after a crash.

    Several --split ids train one after another, or train.pack of them at a time as one
    batched model on one device (each split keeps its own weights, seed, checkpoints, run).

    \b
    Examples:
      acgan train --split 0
      acgan train --split 1 --set train.steps=2000 --set train.device=cuda
      acgan train --split 0 --split 1 --split 2 --set train.pack=3 --models models/pack_0
    """
    if out is not None and len(split_ids) > 1:
        raise click.UsageError("--out names one split's directory; use --models for several")
    from acgan.lineage import make_tracker
    from acgan.train import train_split_with_monitor, train_splits

    kw: dict[str, Any] = {"parent_run_id": parent_run_id, "attempt": attempt}
    tracker = make_tracker(cfg.tracking, "acgan train")
    common = (Path(splits), Path(out or models), Path(checkpoints), tracker)
    if out is not None:
        results = [train_split_with_monitor(cfg, split_ids[0], *common, **kw)]
    else:
        results = train_splits(cfg, split_ids, *common, **kw)
    for res in results:
        resumed = f" (resumed from step {res.resumed_from})" if res.resumed_from else ""
        click.echo(
            f"split {res.split_id}: {res.step} steps{resumed}, D class accuracy on real "
            f"{res.metrics.get('d_acc_real', float('nan')):.2f} -> {res.out_dir} "
            f"[MLflow run {res.run_id}]"
        )


@click.command()
@with_config
@dir_option(
    "--splits",
    default="data/splits",
    help="Output of `acgan split` (the real-image MS-SSIM references).",
)
@dir_option("--models", default="models", help="Root of the training outputs (models/split_<ID>).")
@dir_option(
    "--out",
    default="reports/monitor",
    help="Directory for monitor.json, ensemble.json, plots/ and report.html.",
)
@dir_option(
    "--checkpoints",
    default="checkpoints",
    help="Unused: collapsed splits are retrained by `acgan train`; accepted so existing "
    "commands still run.",
)
@parent_run_option()
def monitor(
    cfg: Config,
    splits: str,
    models: str,
    out: str,
    checkpoints: str,
    parent_run_id: str | None,
) -> None:
    """Judge every split for mode collapse; write the report and the ensemble manifest.

    \b
    Examples:
      acgan monitor
      acgan monitor --set monitor.threshold=0.3            # explicit MS-SSIM threshold
    """
    del checkpoints  # accepted, unused (see its help)
    from acgan.lineage import make_tracker
    from acgan.monitor.stage import run_monitor

    res = run_monitor(
        cfg,
        Path(splits),
        Path(models),
        Path(out),
        make_tracker(cfg.tracking, "acgan monitor"),
        parent_run_id=parent_run_id,
    )
    for sid, rec in res.splits.items():
        bad = ", ".join(rec["collapsed_classes"])
        click.echo(f"split {sid}: {rec['status']}" + (f" (collapsed: {bad})" if bad else ""))
    for e in res.excluded:
        click.echo(f"excluded split {e['split_id']}: {e['reason']}")
    click.echo(
        f"ensemble of {len(res.members)} split(s) -> "
        f"{res.manifest}; report {res.out_dir / 'report.html'} [MLflow run {res.run_id}]"
    )


COMMANDS = (train, monitor)
