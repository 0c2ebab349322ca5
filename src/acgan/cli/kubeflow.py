"""Kubeflow commands: ``acgan compile`` (the one way to compile the pipeline) and
``acgan submit``. Both import kfp and the ``pipelines`` package only when they run."""

from __future__ import annotations

import json
from types import ModuleType

import click

from acgan.cli.common import echo_json
from acgan.errors import AcganError


def _pipelines(name: str) -> ModuleType:
    """``pipelines.<name>``: installed with the project beside ``acgan`` (pyproject.toml)."""
    import importlib

    try:
        return importlib.import_module(f"pipelines.{name}")
    except ModuleNotFoundError as exc:
        if exc.name not in ("pipelines", f"pipelines.{name}"):
            raise
        raise AcganError(
            "acgan compile/submit need the pipelines package, which installs with the project "
            "from its repository (pip install -e . in a clone); this installation has no "
            "pipelines/"
        ) from exc


def _parameters_epilog() -> str:
    from acgan.kfp_runtime import PARAMETERS  # here: the other commands need none of it

    rows = [
        f"  {p.name:18} {p.type.__name__:5} {json.dumps(p.default):12} {p.help}" for p in PARAMETERS
    ]
    return "\b\nPipeline parameters (--param NAME=VALUE; the compiled defaults):\n" + "\n".join(
        rows
    )


@click.command("compile")
@click.option(
    "--out",
    default=None,
    type=click.Path(dir_okay=False),
    help="Output YAML  [default: pipelines/acgan.yaml in the checkout]",
)
@click.option(
    "--parallelism",
    default=8,
    type=click.IntRange(min=0),
    help="Training pods at a time (0: unbounded); fixed at compile time.",
)
def compile_pipeline(out: str | None, parallelism: int) -> None:
    """Compile the Kubeflow pipeline to KFP IR YAML (what `acgan submit` sends).

    \b
    Examples:
      acgan compile                                  # refresh pipelines/acgan.yaml
      acgan compile --parallelism 100 --out acgan-100.yaml
    """
    pipeline = _pipelines("acgan")
    path = pipeline.compile_pipeline(out or pipeline.DEFAULT_YAML, parallelism)
    click.echo(f"compiled -> {path} (parallelism {parallelism or 'unbounded'})")


class _SubmitCommand(click.Command):
    """``acgan submit``: its help lists the pipeline's parameters, read when help is shown."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.epilog = _parameters_epilog()
        super().format_epilog(ctx, formatter)


@click.command(cls=_SubmitCommand)
@click.option("--endpoint", required=True, help="KFP API URL, e.g. http://localhost:8080")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="Pipeline parameter (repeatable); checked before anything is sent.",
)
@click.option(
    "-f",
    "--file",
    "package",
    default=None,
    type=click.Path(dir_okay=False),
    help="Compiled pipeline  [default: pipelines/acgan.yaml in the checkout]",
)
@click.option("-e", "--experiment", default="acgan", help="KFP experiment.")
@click.option("--run-name", default=None, help="KFP run name  [default: KFP's]")
@click.option("--namespace", default=None, help="Kubeflow profile (multi-user clusters).")
@click.option("--dry-run", is_flag=True, help="Only check the parameters; contact nothing.")
def submit(
    endpoint: str,
    params: tuple[str, ...],
    package: str | None,
    experiment: str,
    run_name: str | None,
    namespace: str | None,
    dry_run: bool,
) -> None:
    """Run the pipeline on a Kubeflow cluster, checking every parameter offline first.

    Unknown names, wrong types and values the config rejects stop here with one line, and
    nothing is submitted. Same as `kfp --endpoint URL run create -e acgan -f
    pipelines/acgan.yaml NAME=VALUE ...` (`kfp run submit`: its deprecated alias).

    \b
    Examples:
      acgan submit --endpoint http://localhost:8080 --param steps=2000
      acgan submit --endpoint $KFP --param source=cifar10 --param classes_per_split=10 \\
          --param overrides='["data.download=true"]'
    """
    sub = _pipelines("submit")
    package = package or str(sub.DEFAULT_PACKAGE)
    parsed = sub.parse_params(params)
    if dry_run:
        echo_json(sub.validate(parsed, package))
        click.echo(f"parameters OK for {package}; nothing submitted (--dry-run)")
        return
    res = sub.submit(endpoint, parsed, package, experiment, run_name, namespace)
    click.echo(f"submitted run {res.run_id} -> {res.url}")


COMMANDS = (compile_pipeline, submit)
