"""Data commands: ``acgan ingest`` and ``acgan split``."""

from __future__ import annotations

from pathlib import Path

import click

from acgan.cli.common import dir_option, with_config
from acgan.config import Config


@click.command()
@with_config
@dir_option(
    "--out", default="data/ingested", help="Directory for the Parquet shards and manifest.json."
)
def ingest(cfg: Config, out: str) -> None:
    """Read the configured source into Parquet shards of PNG bytes + manifest.json.

    \b
    Examples:
      acgan ingest                                   # built-in synthetic shapes
      acgan ingest --set data.source=cifar10 --set data.download=true
      acgan ingest --set data.source=imagefolder --set data.root=~/imagenet/train
    """
    from acgan.data.ingest import ingest as run_ingest

    m = run_ingest(cfg.data, Path(out))
    click.echo(
        f"ingested {m.total} images of {len(m.class_names)} classes "
        f"({m.resolution}px, {m.mode}) -> {out} [hash {m.content_hash[:12]}]"
    )
    if m.skipped_bad_images:
        shown = ", ".join(m.skipped_files[:5]) + (", ..." if len(m.skipped_files) > 5 else "")
        click.echo(f"skipped {m.skipped_bad_images} unreadable image(s): {shown}")
    if m.ignored_dirs:
        click.echo(
            f"ignored hidden folder(s) {', '.join(m.ignored_dirs)} under data.root "
            "(names starting with '.' are not classes; rename one to use it)"
        )


@click.command()
@with_config
@dir_option("--data", default="data/ingested", help="Output of `acgan ingest`.")
@dir_option(
    "--out", default="data/splits", help="Directory for splits.json and each split's shards."
)
def split(cfg: Config, data: str, out: str) -> None:
    """Group the classes into splits (one AC-GAN each) and measure real-image MS-SSIM.

    \b
    Examples:
      acgan split                                    # contiguous groups of classes_per_split
      acgan split --set split.classes_per_split=10   # the paper's grouping
    """
    from acgan.data.splits import make_splits

    plan = make_splits(Path(data), Path(out), cfg)
    for s in plan.splits:
        click.echo(f"split {s.id}: classes {', '.join(s.class_names)}")
    click.echo(f"{len(plan.splits)} splits -> {out}/splits.json")


COMMANDS = (ingest, split)
