"""The only module of the core that talks to MLflow: an adapter with a no-op twin.

Runs are addressed explicitly by id through ``MlflowClient`` (no global "active run"), so a
trainer, a DVC stage and a KFP task can all log into the same parent run. A pipeline run is
found-or-created by a key (a hash of the data and the configuration): every ``dvc repro`` stage
of one pipeline run logs under one parent, and each split's trainer under one child of it —
the child is reused when a killed trainer resumes. On Kubeflow the parent id is created once by
the first task and passed down, so the cluster run and a local run look the same in MLflow.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from acgan.errors import mask_credentials, strip_credentials
from acgan.retry import DEFAULT_DEADLINE_S, Retry

log = logging.getLogger(__name__)

PIPELINE_KEY_TAG = "acgan.pipeline_key"
SPLIT_TAG = "acgan.split"
STAGE_TAG = "acgan.stage"
PARENT_TAG = "mlflow.parentRunId"
# MLflow 3's UI opens an experiment on its GenAI (traces) view unless the experiment says it
# holds model training runs.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
# Where `mlflow ui` / `mlflow server` listen by default: the UI of a local (sqlite, file) store.
LOCAL_UI = "http://127.0.0.1:5000"
# MLflow 3.17's UI keeps its GenAI / model-training switch per browser (GenAI by default) and
# takes it from this query parameter: every link we print opens the model-training pages.
TRAINING_VIEW = "?workflowType=machine_learning"


def _literal(value: str) -> str:
    """A value for an MLflow filter string. Only ids, hashes and keys of our own go there
    (user text such as class names is looked up by its hash, :func:`_run_key`): MLflow's
    filter syntax has no escape that covers both quote characters."""
    if not _SAFE_LITERAL.fullmatch(value):
        raise ValueError(f"not a safe MLflow filter value: {value!r}")
    return f"'{value}'"


_SAFE_LITERAL = re.compile(r"[A-Za-z0-9._:\-]+")
RUN_KEY_TAG = "acgan.run_key"


def _run_key(parent_id: str, tags: Mapping[str, Any]) -> str:
    """Identity of a child run: its parent and its tags, hashed (the tags may hold any text)."""
    blob = json.dumps([parent_id, sorted((str(k), str(v)) for k, v in tags.items())])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class Run:
    """A handle on one MLflow run; every method is a no-op on :class:`NullRun`."""

    def __init__(
        self,
        client: Any,
        run_id: str,
        parent_id: str | None = None,
        retry: Retry | None = None,
    ) -> None:
        self._client, self.run_id, self.parent_id = client, run_id, parent_id
        self._retry = retry or Retry("the tracking server")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step or 0)
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ]
        for i in range(0, len(batch), 1000):  # the REST API caps a batch at 1000 metrics
            self._retry(
                "log_metrics",
                lambda b=batch[i : i + 1000]: self._client.log_batch(self.run_id, metrics=b),
            )

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        existing = self._retry("read params", lambda: self._client.get_run(self.run_id)).data.params
        items = [p for p in items if p.key not in existing]  # params are write-once
        for i in range(0, len(items), 100):
            self._retry(
                "log_params",
                lambda b=items[i : i + 100]: self._client.log_batch(self.run_id, params=b),
            )

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        if batch:
            self._retry("set_tags", lambda: self._client.log_batch(self.run_id, tags=batch))

    def log_image(self, image: Any, artifact_file: str) -> None:
        """A PIL image or HxWxC uint8 array, stored as PNG at ``artifact_file``."""
        self._retry(
            f"log_image {artifact_file}",
            lambda: self._client.log_image(self.run_id, np.asarray(image), artifact_file),
        )

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        p = Path(path)
        fn = self._client.log_artifacts if p.is_dir() else self._client.log_artifact
        self._retry(f"log_artifact {p.name}", lambda: fn(self.run_id, str(p), artifact_path))

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self._retry(
            f"log_dict {artifact_file}",
            lambda: self._client.log_dict(self.run_id, obj, artifact_file),
        )

    def log_text(self, text: str, artifact_file: str) -> None:
        self._retry(
            f"log_text {artifact_file}",
            lambda: self._client.log_text(self.run_id, text, artifact_file),
        )

    def metrics(self) -> dict[str, float]:
        """The latest value of each metric of the run."""
        return dict(self._retry("get run", lambda: self._client.get_run(self.run_id)).data.metrics)

    def end(self, status: str = "FINISHED") -> None:
        """End the run. A stage that fails (or is killed) ends its pipeline run the same way:
        no later stage will run to finish it, and RUNNING forever would be a lie."""
        self._retry("end run", lambda: self._client.set_terminated(self.run_id, status))
        if status != "FINISHED" and self.parent_id:
            parent = self.parent_id
            self._retry("end pipeline run", lambda: self._client.set_terminated(parent, status))


class NullRun(Run):
    """Accepts every call and records nothing (tracking disabled, or unit tests)."""

    def __init__(self, run_id: str = "none") -> None:  # noqa: D107 - no client
        self.run_id, self.parent_id = run_id, None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_image(self, image: Any, artifact_file: str) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_dict(self, obj: Any, artifact_file: str) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def metrics(self) -> dict[str, float]:
        return {}

    def end(self, status: str = "FINISHED") -> None: ...


class Tracker:
    """Opens pipeline (parent) runs and per-split / per-stage (child) runs in one experiment."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        tags: Mapping[str, str] | None = None,
        deadline_s: float = DEFAULT_DEADLINE_S,
    ) -> None:
        """``tags`` go on every run this tracker creates (the source: command, git commit);
        every call is retried within ``deadline_s`` (:class:`Retry`)."""
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri, self.experiment, self.tags = uri, experiment, dict(tags or {})
        self.deadline_s = deadline_s
        self._retry = Retry(uri, deadline_s)
        mlflow.set_tracking_uri(uri)  # also what mlflow.pyfunc loads use
        self._client = MlflowClient(tracking_uri=uri)
        self.experiment_id = self._retry(f"open experiment '{experiment}'", self._experiment_id)

    @property
    def client(self) -> Any:
        return self._client

    def _experiment_id(self) -> str:
        exp = self._client.get_experiment_by_name(self.experiment)
        if exp is not None:
            if exp.tags.get(EXPERIMENT_KIND_TAG) is None:
                self._client.set_experiment_tag(
                    exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING
                )
            return exp.experiment_id
        try:
            return self._client.create_experiment(
                self.experiment, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING}
            )
        except Exception:  # another process created it in between
            exp = self._client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def _create_run(self, name: str, tags: Mapping[str, str]) -> str:
        all_tags = {**self.tags, **tags}
        created = self._retry(
            "create run",
            lambda: self._client.create_run(self.experiment_id, run_name=name, tags=all_tags),
        )
        return str(created.info.run_id)

    def _reopen(self, run_id: str) -> None:
        """A stage is about to log into ``run_id``: it is running again (a retried or resumed
        stage after a failure, an edited stage re-run after the pipeline had finished)."""
        info = self._retry("get run", lambda: self._client.get_run(run_id)).info
        if info.status != "RUNNING":
            self._retry("reopen run", lambda: self._client.update_run(run_id, "RUNNING"))

    @property
    def ui(self) -> str:
        """The MLflow UI's address: the server itself, or `mlflow ui` for a local store."""
        if self.uri.startswith(("http://", "https://")):
            return strip_credentials(self.uri).rstrip("/")  # a link, printed and recorded
        return LOCAL_UI

    @property
    def ui_hint(self) -> str:
        """How to open :attr:`ui` (a local store has no server until `mlflow ui` starts)."""
        if self.uri.startswith(("http://", "https://")):
            return ""
        return f"start it with: mlflow ui --backend-store-uri {mask_credentials(self.uri)}"

    def runs_url(self) -> str | None:
        """The experiment's runs, in the model-training view (not the GenAI one)."""
        return f"{self.ui}/#/experiments/{self.experiment_id}/runs{TRAINING_VIEW}"

    def run_url(self, run_id: str) -> str | None:
        return f"{self.ui}/#/experiments/{self.experiment_id}/runs/{run_id}{TRAINING_VIEW}"

    def model_url(self, name: str, version: int | str | None = None) -> str | None:
        from urllib.parse import quote

        page = f"{self.ui}/#/models/{quote(name, safe='')}"
        page += f"/versions/{version}" if version is not None else ""
        return page + TRAINING_VIEW

    def _find(self, filter_string: str) -> Any | None:
        runs = self._retry(
            "search runs",
            lambda: self._client.search_runs(
                [self.experiment_id],
                filter_string=filter_string,
                max_results=1,
                order_by=["attributes.start_time DESC"],
            ),
        )
        return runs[0] if runs else None

    def _run(self, run_id: str, parent_id: str | None = None) -> Run:
        return Run(self._client, run_id, parent_id, self._retry)

    def pipeline_run(
        self,
        key: str,
        name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ) -> Run:
        """The parent run of one pipeline run: ``run_id`` if given, else found by ``key``."""
        if run_id:
            self._reopen(run_id)
            return self._run(run_id)
        found = self._find(f"tags.`{PIPELINE_KEY_TAG}` = {_literal(key)}")
        if found is not None:
            run = self._run(found.info.run_id)
            self._reopen(run.run_id)
        else:
            run = self._run(self._create_run(name, {PIPELINE_KEY_TAG: key}))
        if params:
            run.log_params(params)
        if tags:
            run.set_tags(tags)
        return run

    def child_run(
        self,
        parent: Run,
        name: str,
        tags: Mapping[str, Any],
        params: Mapping[str, Any] | None = None,
        reuse: bool = True,
    ) -> Run:
        """A nested run under ``parent``; with ``reuse`` an earlier one with the same tags is
        picked up again (a resumed trainer keeps logging into its run)."""
        key = _run_key(parent.run_id, tags)
        found = self._find_key(parent, key) if reuse else None
        if found is not None:
            run = self._run(found.info.run_id, parent.run_id)
            self._retry("reopen run", lambda: self._client.update_run(run.run_id, "RUNNING"))
        else:
            all_tags = {
                PARENT_TAG: parent.run_id,
                RUN_KEY_TAG: key,
                **{k: str(v) for k, v in tags.items()},
            }
            run = self._run(self._create_run(name, all_tags), parent.run_id)
        if params:
            run.log_params(params)
        return run

    def _find_key(self, parent: Run, key: str) -> Any | None:
        return self._find(
            f"tags.`{PARENT_TAG}` = {_literal(parent.run_id)} "
            f"and tags.`{RUN_KEY_TAG}` = {_literal(key)}"
        )

    def run(self, run_id: str) -> Run:
        return self._run(run_id)

    def find_child(self, parent: Run, tags: Mapping[str, Any]) -> Run | None:
        found = self._find_key(parent, _run_key(parent.run_id, tags))
        return self._run(found.info.run_id, parent.run_id) if found else None


class NullTracker(Tracker):
    """The no-op twin: same interface, no MLflow import, nothing recorded."""

    def __init__(self) -> None:  # noqa: D107
        self.uri, self.experiment, self.experiment_id, self.tags = "", "", "0", {}
        self.deadline_s = DEFAULT_DEADLINE_S
        self._retry = Retry("no tracking server")

    @property
    def client(self) -> Any:
        return None

    def pipeline_run(
        self,
        key: str,
        name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ) -> Run:
        return NullRun(run_id or f"null-{key}")

    def child_run(
        self,
        parent: Run,
        name: str,
        tags: Mapping[str, Any],
        params: Mapping[str, Any] | None = None,
        reuse: bool = True,
    ) -> Run:
        return NullRun(f"{parent.run_id}/{name}")

    def run(self, run_id: str) -> Run:
        return NullRun(run_id)

    @property
    def ui_hint(self) -> str:
        return ""

    def runs_url(self) -> str | None:
        return None

    def run_url(self, run_id: str) -> str | None:
        return None

    def model_url(self, name: str, version: int | str | None = None) -> str | None:
        return None

    def find_child(self, parent: Run, tags: Mapping[str, Any]) -> Run | None:
        return None


def png_bytes(image: Any) -> bytes:
    """Encode a PIL image or HxWxC uint8 array as PNG (for artifacts written to disk too)."""
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
