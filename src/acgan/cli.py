"""``acgan``: one subcommand per pipeline stage, plus generate / submit / compile / config.

The CLI is the only place that reads the command line and the environment. Each subcommand
loads the configuration, builds the tracker, calls one core function and prints where the
results are. Errors a user can act on (:class:`acgan.errors.AcganError`) become one line on
stderr and exit status 2.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from acgan import __version__
from acgan import config as config_mod
from acgan.errors import AcganError, mask_credentials

EPILOG_WIDTH = 100


def _load_config(params: tuple[str, ...], overrides: tuple[str, ...]) -> config_mod.Config:
    cfg = config_mod.load(params, overrides, missing_ok=(params == ("params.yaml",)))
    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if env_uri and env_uri != cfg.tracking.uri:  # the documented override, applied once, here
        cfg = config_mod.replace(cfg, tracking={"uri": env_uri})
    return cfg


def _check_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse a path below a file before any work starts (it fails only when the stage comes
    to write, after all its work, with ``NotADirectoryError`` otherwise)."""
    from acgan.io import blocked_by_file  # imported here: the CLI loads lazily

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
        callback=_check_path,
        help=help,
    )


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


def make_tracker(cfg: config_mod.Config) -> Any:
    """The tracker of this command; its runs name it (and the git commit) as their source."""
    from acgan.lineage import source_tags
    from acgan.tracking import make_tracker as _make

    ctx = click.get_current_context(silent=True)
    command = f"acgan {ctx.info_name}" if ctx is not None else "acgan"
    t = cfg.tracking
    tags = source_tags(command) if t.enabled else None
    return _make(t.enabled, t.uri, t.experiment, tags, t.deadline_s)


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


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


class _MaskingFormatter(logging.Formatter):
    """Log lines with the credentials of any URI in them masked (MLflow quotes its URLs)."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_credentials(super().format(record))


@cli.command()
@with_config
@dir_option(
    "--out", default="data/ingested", help="Directory for the Parquet shards and manifest.json."
)
def ingest(cfg: config_mod.Config, out: str) -> None:
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


@cli.command()
@with_config
@dir_option("--data", default="data/ingested", help="Output of `acgan ingest`.")
@dir_option(
    "--out", default="data/splits", help="Directory for splits.json and each split's shards."
)
def split(cfg: config_mod.Config, data: str, out: str) -> None:
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


@cli.command()
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
@click.option("--parent-run-id", default=None, help="MLflow parent run (KFP passes it).")
@click.option(
    "--attempt",
    default=0,
    type=click.IntRange(min=0),
    help="Retrain attempt (a new seed per attempt).",
)
def train(
    cfg: config_mod.Config,
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
    from acgan.train import train_split_with_monitor, train_splits

    if out is not None and len(split_ids) > 1:
        raise click.UsageError("--out names one split's directory; use --models for several")
    kw: dict[str, Any] = {"parent_run_id": parent_run_id, "attempt": attempt}
    common = (Path(splits), Path(out or models), Path(checkpoints), make_tracker(cfg))
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


# --- monitor commands (collapse monitor issue) ---


@cli.command()
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
    help="Checkpoint root used when a collapsed split is retrained.",
)
@click.option("--parent-run-id", default=None, help="MLflow parent run (KFP passes it).")
def monitor(
    cfg: config_mod.Config,
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
      acgan monitor --set monitor.retrain_collapsed=true   # retrain collapsed splits once
      acgan monitor --set monitor.threshold=0.3            # explicit MS-SSIM threshold
    """
    from acgan.monitor import run_monitor

    res = run_monitor(
        cfg,
        Path(splits),
        Path(models),
        Path(out),
        make_tracker(cfg),
        parent_run_id=parent_run_id,
        checkpoint_root=Path(checkpoints),
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


# --- evaluation commands (judge, evaluate) ---


@cli.command()
@with_config
@dir_option(
    "--data",
    default="data/ingested",
    help="Output of `acgan ingest` (the judge learns the real images).",
)
@dir_option("--out", default="judge", help="Directory for judge.pt, judge.json, training.png.")
@click.option("--parent-run-id", default=None, help="MLflow parent run (KFP passes it).")
def judge(cfg: config_mod.Config, data: str, out: str, parent_run_id: str | None) -> None:
    """Train the evaluation's judge classifier on the real data (cached by data hash).

    \b
    Examples:
      acgan judge                                    # small CNN, eval.judge_epochs epochs
      acgan judge --set eval.inception_weights=~/inception_v3_google.pth   # never downloads
    """
    from acgan.evaluation.judge import train_judge

    res = train_judge(cfg, Path(data), Path(out), make_tracker(cfg), parent_run_id=parent_run_id)
    how = "cached, same data and settings" if res.cached else f"MLflow run {res.run_id}"
    click.echo(f"{res.kind} judge: held-out real accuracy {res.real_accuracy:.3f} -> {out} [{how}]")


@cli.command("evaluate")
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
@click.option("--parent-run-id", default=None, help="MLflow parent run (KFP passes it).")
def evaluate_cmd(
    cfg: config_mod.Config,
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

    res = evaluate(
        cfg,
        Path(data),
        Path(splits),
        Path(ensemble),
        Path(judge_dir),
        Path(out),
        make_tracker(cfg),
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


# --- registry commands (register, generate) ---


@cli.command()
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
@click.option("--parent-run-id", default=None, help="MLflow parent run (KFP passes it).")
def register(
    cfg: config_mod.Config,
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
    from acgan.registry.register import register as run_register

    res = run_register(
        cfg,
        Path(ensemble),
        Path(data),
        Path(out),
        make_tracker(cfg),
        monitor_dir=Path(monitor),
        eval_dir=Path(eval_dir),
        parent_run_id=parent_run_id,
    )
    if res.version is None:
        click.echo(f"registration skipped: {res.reason} -> {res.out_file}")
        return
    alias = "@champion" if res.champion else "@candidate"
    click.echo(f"{res.model_uri} {alias} ({res.decision}: {res.reason}) -> {res.out_file}")


@cli.command()
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
    callback=_check_path,
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
    cfg: config_mod.Config,
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


# --- kubeflow commands (compile, submit) ---


def _kubeflow() -> Any:
    """``pipelines/`` sits beside ``src/`` in the checkout (the package is installed editable
    from it) and is not part of the core: put it on the path, wherever the CLI runs from."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pipelines" / "acgan.py").is_file():
        raise AcganError(
            "acgan compile/submit need the repository checkout (pipelines/); "
            "run them from a clone installed with `pip install -e .`"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import pipelines.acgan
    import pipelines.submit

    return pipelines


@cli.command("compile")
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
    kf = _kubeflow()
    path = kf.acgan.compile_pipeline(out or kf.acgan.DEFAULT_YAML, parallelism)
    click.echo(f"compiled -> {path} (parallelism {parallelism or 'unbounded'})")


@cli.command()
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
    kf = _kubeflow()
    package = package or str(kf.acgan.DEFAULT_YAML)
    parsed = kf.submit.parse_params(params)
    if dry_run:
        echo_json(kf.submit.validate(parsed, package))
        click.echo(f"parameters OK for {package}; nothing submitted (--dry-run)")
        return
    res = kf.submit.submit(endpoint, parsed, package, experiment, run_name, namespace)
    click.echo(f"submitted run {res.run_id} -> {res.url}")


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


@cli.command()
@click.option(
    "--socket",
    "socket_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Unix socket to listen on; commands run with ACGAN_WARM=<this path> use the server.",
)
@click.option(
    "--idle-timeout",
    default=3600.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Exit after this many seconds without a command.",
)
def warm(socket_path: Path, idle_timeout: float) -> None:
    """Serve `acgan` commands from one process that has imported torch, MLflow & co.

    Every stage of `dvc repro` is a new process that spends ~10 s on imports; with a warm
    server each stage forks from it instead. `make demo` does this for you.

    \b
    Example:
      acgan warm --socket /tmp/acgan.sock &
      ACGAN_WARM=/tmp/acgan.sock dvc repro
    """
    from acgan import warm as warm_mod

    warm_mod.serve(socket_path, idle_timeout, _run)


def _error(message: str) -> None:
    """The one stderr line of a failed command (credentials in quoted URIs masked)."""
    click.echo(f"acgan: error: {mask_credentials(' '.join(message.split()))}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors -> one line + exit 2. With ``$ACGAN_WARM`` naming a
    listening warm server (``acgan warm``), the command runs there (:mod:`acgan.warm`)."""
    from acgan import warm as warm_mod

    args = sys.argv[1:] if argv is None else list(argv)
    code = None if args[:1] == ["warm"] else warm_mod.delegate(args)
    if code is not None:
        sys.exit(code)
    _run(args)


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


if __name__ == "__main__":
    main()
