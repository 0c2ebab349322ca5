"""Run the whole pipeline on this machine with ``kfp.local`` (one subprocess per task).

The same components and the same DAG as on the cluster, run by KFP's local orchestrator with
this interpreter (``SubprocessRunner(use_venv=False)``: the ``acgan`` package is installed
here, as it is in the images). Kubernetes settings (GPUs, secrets, volumes, node selectors)
do not apply locally; KFP warns and ignores them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acgan.errors import AcganError

# Task directories under a run directory (KFP names them after the tasks; the training
# tasks sit in one directory per loop iteration).
TRAIN_GLOB = "*-iteration-*/train"


class LocalRunError(AcganError):
    """A task of the local pipeline run failed (its log is above)."""


@dataclass(frozen=True)
class LocalRun:
    run_dir: Path  # <root>/outputs/acgan-<timestamp>: one directory per task
    tracking_uri: str
    arguments: dict[str, Any]

    def task(self, name: str) -> Path:
        return self.run_dir / name

    def models(self) -> list[Path]:
        """Each training task's ``model`` artifact (a split's generator directory)."""
        return sorted(p / "model" for p in self.run_dir.glob(TRAIN_GLOB))

    def gate(self) -> dict[str, Any]:
        return json.loads((self.task("evaluate") / "eval_dir" / "gate.json").read_text())

    def registration(self) -> dict[str, Any] | None:
        path = self.task("register") / "registration" / "registration.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def summary(self) -> str:
        lines = [f"kfp.local run -> {self.run_dir}"]
        lines += [f"  generator   {m}" for m in self.models()]
        for task, artifact in (("monitor", "report"), ("evaluate", "report")):
            if (self.task(task) / artifact).is_file():
                lines.append(f"  {task:<11} {self.task(task) / artifact} (HTML)")
        with contextlib.suppress(OSError):
            lines.append(f"  gate        {'passed' if self.gate().get('passed') else 'failed'}")
        reg = self.registration()
        if reg is not None:
            lines.append(f"  registered  {reg}")
        lines.append(f"  MLflow      mlflow ui --backend-store-uri {self.tracking_uri}")
        return "\n".join(lines)


def local_arguments(root: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Cluster defaults that make no sense here (a service URL, the volume's paths) replaced
    by files under ``root``; explicit ``params`` win."""
    root = root.resolve()
    return {
        "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "checkpoint_root": str(root / "checkpoints"),
        "data_root": str(root / "data"),
        **params,
    }


def task_threads(parallelism: int, cores: int | None = None) -> int:
    """Threads per task when up to ``parallelism`` training tasks share this machine's cores
    (0: unbounded, so one thread each)."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // parallelism) if parallelism else 1


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for the tasks kfp.local starts, restoring them after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_local(
    root: str | Path, params: dict[str, Any], parallelism: int = 0, package: Path | None = None
) -> LocalRun:
    """Validate ``params`` (as ``acgan submit`` does), then run the DAG under ``root``."""
    import kfp.local

    from pipelines.acgan import build_pipeline, compile_pipeline
    from pipelines.submit import validate

    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    arguments = local_arguments(root, params)
    # Validate against the pipeline as it compiles now (not a possibly stale committed file).
    package = package or compile_pipeline(root / "acgan.yaml", parallelism)
    typed = validate(arguments, package)
    outputs = root / "outputs"
    # kfp.local runs up to `parallelism` training tasks at once, each a process that would use
    # every core: on a 2-core machine two such trainers ran 3x slower together than one after
    # another. Each task gets its share of the cores instead (unless the user set it).
    threads = os.environ.get("OMP_NUM_THREADS") or str(task_threads(parallelism))
    kfp.local.init(
        runner=kfp.local.SubprocessRunner(use_venv=False),
        pipeline_root=str(outputs),
        raise_on_error=True,
    )
    before = set(outputs.glob("*")) if outputs.is_dir() else set()
    try:
        with _environ(OMP_NUM_THREADS=threads):
            build_pipeline(parallelism)(**typed)
    except RuntimeError as exc:
        raise LocalRunError(
            f"kfp.local: the pipeline failed ({str(exc).splitlines()[0][:200]}); "
            "the failing task's log is above"
        ) from exc
    new = sorted(set(outputs.glob("*")) - before, key=lambda p: p.stat().st_mtime)
    if not new:
        raise LocalRunError(f"{outputs}: kfp.local wrote no run directory")
    return LocalRun(new[-1], str(typed["tracking_uri"]), typed)
