"""What every ``acgan`` subcommand shares: ``--params``/``--set``, directory options, JSON
output. Imports nothing heavy: ``acgan --help`` stays fast."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any

import click

from acgan import config as config_mod


def _load_config(params: tuple[str, ...], overrides: tuple[str, ...]) -> config_mod.Config:
    cfg = config_mod.load(params, overrides, missing_ok=(params == ("params.yaml",)))
    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if env_uri and env_uri != cfg.tracking.uri:  # the documented override, applied once, here
        cfg = config_mod.replace(cfg, tracking={"uri": env_uri})
    return cfg


def check_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse a path below a file before any work starts (it fails only when the stage comes
    to write, after all its work, with ``NotADirectoryError`` otherwise)."""
    from acgan.io import blocked_by_file

    if value is not None:
        blocker = blocked_by_file(value)
        if blocker is not None:
            raise click.BadParameter(
                f"{value}: {blocker} is a file, not a directory; choose another path",
                ctx=ctx,
                param=param,
            )
    return value


def dir_option(*names: str, default: str | None, help: str) -> Callable[..., Any]:
    """A directory option (``--out``, ``--data``, ...) with its default shown in ``--help``."""
    return click.option(
        *names,
        default=default,
        type=click.Path(file_okay=False),
        callback=check_path,
        help=help,
    )


def parent_run_option() -> Callable[..., Any]:
    return click.option("--parent-run-id", default=None, help="MLflow parent run (KFP passes it).")


def with_config(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Adds repeatable ``--params FILE`` and ``--set section.key=value``; passes ``cfg``."""

    @click.option(
        "--params",
        "params",
        multiple=True,
        default=("params.yaml",),
        show_default=True,
        type=click.Path(dir_okay=False),
        help="YAML file of config overrides (repeatable: later files win; a `recipe: NAME` "
        "key layers a preset beneath them).",
    )
    @click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override one key, e.g. --set train.steps=50 (repeatable).",
    )
    @functools.wraps(fn)
    def wrapper(params: tuple[str, ...], overrides: tuple[str, ...], **kwargs: Any) -> Any:
        return fn(cfg=_load_config(params, overrides), **kwargs)

    return wrapper


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))
