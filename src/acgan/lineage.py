"""Where an artifact came from: data hash + configuration + git commit, and its MLflow run;
and the one scaffold every stage runs in (:func:`stage`).

Every stage writes its resolved configuration beside its outputs (``config.json``) with these
fields, and logs them to the pipeline's MLflow run, so any artifact can be traced back.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acgan import __version__
from acgan.config import Config, TrackingConfig
from acgan.io import atomic_dir, atomic_write_json, one_line
from acgan.tracking import STAGE_TAG, NullRun, NullTracker, Run, Tracker

log = logging.getLogger(__name__)

# Sections that define the trained ensemble: one MLflow parent run per distinct combination.
ENSEMBLE_SECTIONS = ("data", "split", "model", "train", "monitor")
# Keys that change how a run is executed or logged, not what it learns.
EXECUTION_KEYS = (
    "train.device",
    "train.log_every",
    "train.sample_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.pack",
)


def pipeline_key(cfg: Config, data_hash: str) -> str:
    """Identity of one pipeline run: what the ensemble is trained from and how."""
    return f"{data_hash[:12]}-{cfg.fingerprint(*ENSEMBLE_SECTIONS, exclude=EXECUTION_KEYS)}"


def stage_record(
    cfg: Config | Mapping[str, Any], stage: str, data_hash: str | None, **extra: Any
) -> dict[str, Any]:
    """A stage's ``config.json``: ``cfg`` is the whole configuration, or the sections the stage
    reads (ingest knows only ``data``)."""
    return {
        "stage": stage,
        "acgan_version": __version__,
        "git_commit": git_commit(),
        "data_hash": data_hash,
        "config": cfg.record() if isinstance(cfg, Config) else dict(cfg),
        **extra,
    }


def write_stage_config(
    out_dir: Path, cfg: Config | Mapping[str, Any], stage: str, data_hash: str | None, **extra: Any
) -> dict[str, Any]:
    record = stage_record(cfg, stage, data_hash, **extra)
    atomic_write_json(Path(out_dir) / "config.json", record)
    return record


def finish_pipeline_run(
    parent: Run, metrics: Mapping[str, float] | None = None, tags: Mapping[str, Any] | None = None
) -> None:
    """The pipeline's result on its parent run, which ends FINISHED: the last stage that runs
    calls this (evaluate; register after it when it runs). A later stage reopens the run."""
    if metrics:
        have = parent.metrics()  # a second stage's same figures add no duplicate points
        parent.log_metrics({k: v for k, v in metrics.items() if have.get(k) != v})
    if tags:
        parent.set_tags(tags)
    parent.end("FINISHED")


def open_pipeline_run(
    tracker: Tracker, cfg: Config, data_hash: str, parent_run_id: str | None = None
) -> Run:
    """The parent run: the given id (KFP passes it down), else found-or-created by key."""
    key = pipeline_key(cfg, data_hash)
    return tracker.pipeline_run(
        key,
        name=f"acgan-{cfg.data.source}-{key[-8:]}",
        run_id=parent_run_id,
        params=cfg.flat(),
        tags={
            "acgan.data_hash": data_hash,
            "acgan.git_commit": git_commit() or "unknown",
            "acgan.version": __version__,
            "acgan.dataset": cfg.data.source,
        },
    )


def end_run(run: Run, status: str) -> None:
    """End ``run`` with a failure ``status`` if the server still answers: a failing stage's
    own error is the one the user must see, never masked by the tracking server's."""
    try:
        run.end(status)
    except Exception as exc:
        log.warning("could not mark run %s %s: %s", run.run_id, status, one_line(exc))


@dataclass
class Stage:
    """One stage at work: its MLflow run (a child of the pipeline's parent run) and its output
    directory. Made by :func:`stage`; see there."""

    name: str
    cfg: Config | Mapping[str, Any]
    out_dir: Path
    data_hash: str | None
    tracker: Tracker | None
    run: Run
    parent: Run | None
    record: dict[str, Any] = field(default_factory=dict)  # more config.json fields, set late
    _pipeline: tuple[Mapping[str, float] | None, Mapping[str, Any] | None] | None = None
    _ended: bool = field(default=False, repr=False)

    @property
    def pipeline_run(self) -> Run:
        """The pipeline's parent run (a tracked stage has one)."""
        if self.parent is None:
            raise TypeError(f"stage {self.name} has no tracker, so no pipeline run")
        return self.parent

    @contextlib.contextmanager
    def output(self, **extra: Any) -> Iterator[Path]:
        """The stage's output directory, written atomically: yields a temp directory beside
        :attr:`out_dir` that replaces it when the block succeeds (a failure leaves the old
        output as it was). ``config.json`` (lineage, the run id, ``extra`` and :attr:`record`,
        which the block may still fill) is written last."""
        with atomic_dir(self.out_dir) as tmp:
            yield tmp
            if self.tracker is not None:
                extra.setdefault("run_id", self.run.run_id)
            write_stage_config(tmp, self.cfg, self.name, self.data_hash, **extra, **self.record)

    def finish_pipeline(
        self, metrics: Mapping[str, float] | None = None, tags: Mapping[str, Any] | None = None
    ) -> None:
        """Also end the pipeline's parent run FINISHED, with these figures and tags, when this
        stage ends: the last stage that runs does this (evaluate; register after it)."""
        self._pipeline = (metrics, tags)

    def end(self) -> None:
        """End the run FINISHED now (and the parent, after :meth:`finish_pipeline`); the
        scaffold does this when the block succeeds, a stage calls it to handle a failure of
        its own bookkeeping (register: the registration itself is already done)."""
        if self._ended:
            return
        self._ended = True
        self.run.end("FINISHED")
        if self._pipeline is not None and self.parent is not None:
            finish_pipeline_run(self.parent, *self._pipeline)


@contextlib.contextmanager
def stage(
    name: str,
    cfg: Config | Mapping[str, Any],
    out_dir: str | Path,
    *,
    data_hash: str | None,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
) -> Iterator[Stage]:
    """The one scaffold of every stage (ingest, split, train, judge, monitor, evaluate,
    register): with a ``tracker``, the pipeline's parent run (found by data hash + config, or
    ``parent_run_id`` on Kubeflow) and this stage's child run under it (tagged with the stage,
    ``params`` logged: by default the whole flat config); :meth:`Stage.output` for the atomic
    output directory with its ``config.json``; and the run ended the same way everywhere:
    FINISHED when the block succeeds, FAILED on an exception, KILLED on Ctrl-C / SIGTERM (a
    failed or killed stage ends its pipeline run too, see :meth:`acgan.tracking.Run.end`).

    Without a tracker (ingest and split record no run) the stage has a :class:`NullRun`.
    """
    parent: Run | None = None
    run: Run = NullRun()
    if tracker is not None:
        if not isinstance(cfg, Config) or data_hash is None:
            raise TypeError("a tracked stage needs the whole Config and the data hash")
        parent = open_pipeline_run(tracker, cfg, data_hash, parent_run_id)
        run = tracker.child_run(
            parent,
            run_name or name,
            tags={STAGE_TAG: name, **(tags or {})},
            params=cfg.flat() if params is None else params,
        )
    st = Stage(name, cfg, Path(out_dir), data_hash, tracker, run, parent)
    try:
        yield st
    except BaseException as exc:
        if not st._ended:  # a run the stage has ended stays as it said
            end_run(run, "FAILED" if isinstance(exc, Exception) else "KILLED")
        raise
    st.end()


# -- where runs come from: the git commit, the command, the one tracker factory -----------


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The commit of the working tree (``+dirty`` when it has changes), or None outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha


def source_tags(command: str, kind: str = "LOCAL") -> dict[str, str]:
    """MLflow's own source tags for every run a command creates: the UI shows them as the
    run's "Source" (the command), its git commit and who ran it."""
    tags = {"mlflow.source.name": command, "mlflow.source.type": kind}
    # the UI's "Created by" (a container's uid may have no passwd entry: then no user)
    with contextlib.suppress(KeyError, OSError):
        tags["mlflow.user"] = getpass.getuser()
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def make_tracker(
    settings: TrackingConfig, source: str | None = None, kind: str = "LOCAL"
) -> Tracker:
    """The one tracker factory (CLI commands, KFP tasks, tests): an MLflow tracker for the
    config's ``tracking`` section, or the no-op twin when tracking is disabled. Every run it
    creates names ``source`` (e.g. ``acgan train``; ``kind``: MLflow's source type) and the
    git commit as where it came from."""
    if not settings.enabled:
        return NullTracker()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    tags = source_tags(source, kind) if source else None
    return Tracker(settings.uri, settings.experiment, tags, settings.deadline_s)
