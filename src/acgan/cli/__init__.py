"""``acgan``: one subcommand per pipeline stage, plus generate / submit / compile / config.

The CLI is the only place that reads the command line and the environment. Each subcommand
loads the configuration, builds the tracker, calls one core function and prints where the
results are. Errors a user can act on (:class:`acgan.errors.AcganError`) become one line on
stderr and exit status 2.

The subcommands live by stage group (:mod:`.data`, :mod:`.train`, :mod:`.evaluation`,
:mod:`.registry`, :mod:`.kubeflow`); each imports its stage's libraries (torch, MLflow,
matplotlib, kfp, ...) inside its body, so that ``acgan --help`` and every command pay only
for what they use.
"""

from __future__ import annotations

import logging
import sys

import click

from acgan import __version__
from acgan import config as config_mod
from acgan.cli import data, evaluation, kubeflow, registry, train
from acgan.cli.common import echo_json, with_config
from acgan.errors import AcganError, mask_credentials

EPILOG_WIDTH = 100


class _MaskingFormatter(logging.Formatter):
    """Log lines with the credentials of any URI in them masked (MLflow quotes its URLs)."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_credentials(super().format(record))


@click.group(
    context_settings={
        "help_option_names": ["-h", "--help"],
        "show_default": True,
        "max_content_width": EPILOG_WIDTH,
    }
)
@click.version_option(__version__, prog_name="acgan")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """Class-split AC-GAN ensembles (Odena et al. 2017), one stage per subcommand.

    \b
    The pipeline:  ingest -> split -> train@<split> -> monitor -> evaluate -> register
    Run it all:    dvc repro            (or: python -m pipelines.acgan --local)
    Every stage reads ./params.yaml (overrides only; `acgan config` shows every key).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_MaskingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


@cli.command("config")
@with_config
@click.option("--list", "list_keys", is_flag=True, help="List every key with its default.")
def show_config(cfg: config_mod.Config, list_keys: bool) -> None:
    """Print the resolved configuration (params.yaml + --set), or every key with --list."""
    if list_keys:
        for key, tp, default, doc in config_mod.describe():
            click.echo(f"{key:32} {tp:18} {default!s:22} {doc}")
    else:
        echo_json(cfg.record())


for _group in (data, train, evaluation, registry, kubeflow):
    for _command in _group.COMMANDS:
        cli.add_command(_command)


def _error(message: str) -> None:
    """The one stderr line of a failed command (credentials in quoted URIs masked)."""
    click.echo(f"acgan: error: {mask_credentials(' '.join(message.split()))}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors -> one line + exit 2."""
    _run(sys.argv[1:] if argv is None else list(argv))


def _run(argv: list[str]) -> None:
    try:
        cli.main(args=argv, prog_name="acgan", standalone_mode=False)
    except AcganError as exc:
        _error(str(exc))
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("acgan: aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:  # a bad option: one line too, with where to get help
        where = exc.ctx.command_path if exc.ctx is not None else "acgan"
        _error(f"{exc.format_message()} (see `{where} --help`)")
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        _error(exc.format_message())
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


__all__ = ["cli", "main"]
