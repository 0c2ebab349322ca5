"""Registry commands: ``acgan register`` and ``acgan generate``."""

from __future__ import annotations

from pathlib import Path

import click

from acgan.cli.common import check_path, dir_option, parent_run_option, with_config
from acgan.config import Config


@click.command()
@with_config
@click.option(
    "--ensemble",
    default="reports/monitor/ensemble.json",
    type=click.Path(),
    help="Ensemble manifest (which split directories form the ensemble).",
)
@dir_option(
    "--data",
    default="data/ingested",
    help="Output of `acgan ingest` (its content hash tags the version).",
)
@dir_option(
    "--monitor", default="reports/monitor", help="Monitor report (per-split health); optional."
)
@dir_option(
    "--eval",
    "eval_dir",
    default="reports/eval",
    help="metrics.json + gate.json of `acgan evaluate`; optional.",
)
@dir_option(
    "--out", default="reports/register", help="Directory for registration.json and samples.png."
)
@parent_run_option()
def register(
    cfg: Config,
    ensemble: str,
    data: str,
    monitor: str,
    eval_dir: str,
    out: str,
    parent_run_id: str | None,
) -> None:
    """Register the ensemble as registry.model_name; @champion moves only if it passes the
    gate and beats the champion on registry.primary_metric.

    \b
    Examples:
      acgan register
      MLFLOW_TRACKING_URI=http://mlflow:5000 acgan register --set registry.model_name=my-gan
    """
    from acgan.lineage import make_tracker
    from acgan.registry.register import register as run_register

    res = run_register(
        cfg,
        Path(ensemble),
        Path(data),
        Path(out),
        make_tracker(cfg.tracking, "acgan register"),
        monitor_dir=Path(monitor),
        eval_dir=Path(eval_dir),
        parent_run_id=parent_run_id,
    )
    if res.version is None:
        click.echo(f"registration skipped: {res.reason} -> {res.out_file}")
        return
    alias = "@champion" if res.champion else "@candidate"
    click.echo(f"{res.model_uri} {alias} ({res.decision}: {res.reason}) -> {res.out_file}")


@click.command()
@with_config
@click.option(
    "--model",
    default=None,
    help="models:/NAME@champion (default: registry.model_name's @champion, else its"
    " @candidate), models:/NAME/3, runs:/ID/ensemble, a pyfunc dir or"
    " reports/monitor/ensemble.json.",
)
@click.option(
    "--classes", default=None, help="Comma-separated class indices or names [default: all]."
)
@click.option("--n", default=64, type=click.IntRange(1, 100_000), help="Images per class.")
@dir_option("--out", default="generated", help="Writes OUT/<class name>/<index>.png.")
@click.option("--seed", default=0, type=click.IntRange(min=0), help="Same seed, same images.")
@click.option(
    "--grid",
    default=None,
    type=click.Path(dir_okay=False),
    callback=check_path,
    help="Also write one grid PNG (a row per class).",
)
@click.option("--device", default="auto", help="auto | cpu | cuda | cuda:N")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Write into class folders that already hold files, replacing only the images it "
    "writes (without it such a folder is refused; nothing else is ever deleted).",
)
def generate(
    cfg: Config,
    model: str | None,
    classes: str | None,
    n: int,
    out: str,
    seed: int,
    grid: str | None,
    device: str,
    overwrite: bool,
) -> None:
    """Generate images of chosen classes from a registered (or local) ensemble.

    \b
    Examples:
      acgan generate --classes 3,7 --n 64 --out samples --grid samples/grid.png
      acgan generate --model models:/acgan-cifar10/2 --classes cat,dog --seed 1
      acgan generate --model reports/monitor/ensemble.json --n 8   # no registry needed
    """
    from acgan.registry.generate import choose_model, generate_images

    chosen, note = choose_model(
        model, cfg.model_name, cfg.tracking.uri, deadline_s=cfg.tracking.deadline_s
    )
    if note:
        click.echo(f"acgan: {note}", err=True)
    res = generate_images(
        chosen,
        Path(out),
        classes=[c.strip() for c in classes.split(",") if c.strip()] if classes else None,
        n=n,
        seed=seed,
        grid=Path(grid) if grid else None,
        tracking_uri=cfg.tracking.uri,
        device=device,
        overwrite=overwrite,
        deadline_s=cfg.tracking.deadline_s,
    )
    click.echo(
        f"{sum(res.counts.values())} images of {len(res.counts)} classes from "
        f"{res.source} -> {res.out_dir}" + (f" (grid {res.grid})" if res.grid else "")
    )


COMMANDS = (register, generate)
