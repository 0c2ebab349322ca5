"""Evaluation commands: ``acgan judge`` (the judge classifier) and ``acgan evaluate``."""

from __future__ import annotations

from pathlib import Path

import click

from acgan.cli.common import dir_option, parent_run_option, with_config
from acgan.config import Config


@click.command()
@with_config
@dir_option(
    "--data",
    default="data/ingested",
    help="Output of `acgan ingest` (the judge learns the real images).",
)
@dir_option("--out", default="judge", help="Directory for judge.pt, judge.json, training.png.")
@parent_run_option()
def judge(cfg: Config, data: str, out: str, parent_run_id: str | None) -> None:
    """Train the evaluation's judge classifier on the real data (cached by data hash).

    \b
    Examples:
      acgan judge                                    # small CNN, eval.judge_epochs epochs
      acgan judge --set eval.inception_weights=~/inception_v3_google.pth   # never downloads
    """
    from acgan.evaluation.judge import train_judge
    from acgan.lineage import make_tracker

    tracker = make_tracker(cfg.tracking, "acgan judge")
    res = train_judge(cfg, Path(data), Path(out), tracker, parent_run_id=parent_run_id)
    how = "cached, same data and settings" if res.cached else f"MLflow run {res.run_id}"
    click.echo(f"{res.kind} judge: held-out real accuracy {res.real_accuracy:.3f} -> {out} [{how}]")


@click.command("evaluate")
@with_config
@dir_option("--data", default="data/ingested", help="Output of `acgan ingest`.")
@dir_option("--splits", default="data/splits", help="Output of `acgan split`.")
@click.option(
    "--ensemble",
    default="reports/monitor/ensemble.json",
    type=click.Path(),
    help="Ensemble manifest written by `acgan monitor`.",
)
@dir_option("--judge", "judge_dir", default="judge", help="Output of `acgan judge`.")
@dir_option(
    "--out",
    default="reports/eval",
    help="Directory for metrics.json, gate.json, report.html, plots/.",
)
@parent_run_option()
def evaluate_cmd(
    cfg: Config,
    data: str,
    splits: str,
    ensemble: str,
    judge_dir: str,
    out: str,
    parent_run_id: str | None,
) -> None:
    """Judge the ensemble: accuracy, MS-SSIM diversity, IS, FID, resolution, memorisation.

    \b
    Examples:
      acgan evaluate
      acgan evaluate --set eval.samples_per_class=1000 --set eval.max_fid=50
    """
    from acgan.evaluation.stage import evaluate
    from acgan.lineage import make_tracker

    res = evaluate(
        cfg,
        Path(data),
        Path(splits),
        Path(ensemble),
        Path(judge_dir),
        Path(out),
        make_tracker(cfg.tracking, "acgan evaluate"),
        parent_run_id=parent_run_id,
    )
    m = res.metrics
    click.echo(
        f"judge accuracy {m['judge_accuracy']:.3f} (real {m['real_judge_accuracy']:.3f}), "
        f"FID {m['fid']:.2f}, IS {m['inception_score']:.2f}, "
        f"diverse {m['diverse_fraction']:.0%}; gate "
        + ("passed" if res.gate["passed"] else "FAILED: " + "; ".join(res.gate["reasons"]))
    )
    click.echo(f"report {res.report} [MLflow run {res.run_id}]")


COMMANDS = (judge, evaluate_cmd)
