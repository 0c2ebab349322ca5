"""The MLflow side of registration: log the pyfunc, find-or-create the version, aliases.

Each function does one registry operation through the :class:`~acgan.retry.Retry`
so that a flaky server or artifact store is retried and then reported in one line.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from acgan import __version__
from acgan.config import RegistryConfig
from acgan.models.ensemble import Ensemble
from acgan.models.sampling import labelled_grid, latents
from acgan.registry.pyfunc import (
    DEFAULT_MAX_IMAGES,
    MEMBERS_ARTIFACT,
    MODEL_CODE,
    artifact_key,
    input_example,
    signature,
)
from acgan.registry.rules import Decision, decide
from acgan.retry import Retry
from acgan.tracking import Tracker

log = logging.getLogger(__name__)

CANDIDATE, CHAMPION = "candidate", "champion"
HASH_TAG = "acgan.ensemble_hash"
METRIC_TAG = "acgan.metric."
MODEL_ARTIFACT = "ensemble"  # name of the logged model inside the register run
GRID_PER_CLASS = 8
GRID_CLASSES = 50


def sample_grid(ens: Ensemble, per_class: int = GRID_PER_CLASS, seed: int = 0) -> np.ndarray:
    """One row per class (the first ``GRID_CLASSES``: a 1000-class grid would be a poster),
    the same noise in every column, so a column shows one latent code across classes."""
    import torch

    z = latents(per_class, ens.latent_dim, seed, ens.device)
    shown = ens.classes[:GRID_CLASSES]
    rows = [ens.generate(c, per_class, z=z) for c in shown]
    return labelled_grid(torch.cat(rows), per_class, [ens.class_names[c] for c in shown])


def requirements() -> list[str]:
    """What loading the model needs (the `acgan` package brings the model code)."""
    import mlflow
    import torch
    import torchvision

    def bare(v: str) -> str:
        return v.split("+")[0]  # drop local tags such as +cpu / +cu124

    return [
        f"acgan=={__version__}",
        f"torch=={bare(torch.__version__)}",
        f"torchvision=={bare(torchvision.__version__)}",
        f"mlflow=={mlflow.__version__}",
        "numpy",
        "pandas",
    ]


def log_ensemble(
    retry: Retry,
    tracker: Tracker,
    run_id: str,
    ens: Ensemble,
    members: list[dict[str, Any]],
    grid: np.ndarray,
    max_images: int = DEFAULT_MAX_IMAGES,
) -> Any:
    """Upload the sample grid and the pyfunc model (code file + generator files) to the run;
    ``max_images`` caps the images one predict call (one HTTP request) may ask for."""
    import mlflow

    retry(
        "upload the sample grid",
        lambda: tracker.client.log_image(run_id, grid, "samples/ensemble.png"),
    )
    with tempfile.TemporaryDirectory(prefix="acgan-register-") as tmp:
        members_json = Path(tmp) / "members.json"
        members_json.write_text(json.dumps(members, indent=2))
        artifacts = {MEMBERS_ARTIFACT: str(members_json)}
        artifacts.update({artifact_key(m.split_id): str(m.path) for m in ens.members})
        sig, example, reqs = signature(ens), input_example(ens), requirements()

        def upload() -> Any:
            mlflow.set_tracking_uri(tracker.uri)
            with mlflow.start_run(run_id=run_id):
                return mlflow.pyfunc.log_model(
                    name=MODEL_ARTIFACT,
                    python_model=str(MODEL_CODE),
                    artifacts=artifacts,
                    model_config={"device": "auto", "max_images": max_images},
                    signature=sig,
                    input_example=example,
                    pip_requirements=reqs,
                )

        return retry("upload the model files", upload)


def find_version(retry: Retry, client: Any, name: str, digest: str) -> Any | None:
    """The READY version that already registers this ensemble, if any."""
    found = retry(
        "search model versions",
        lambda: client.search_model_versions(f"name='{name}' and tags.`{HASH_TAG}` = '{digest}'"),
    )
    ready = [v for v in found if v.status == "READY"]
    for v in found:
        if v.status == "FAILED_REGISTRATION":  # never usable: clear it so a retry can succeed
            delete_version(retry, client, name, int(v.version))
    if not ready:
        return None
    first = min(ready, key=lambda v: int(v.version))
    # search results carry no aliases; the caller needs them (a version left unaliased)
    return retry(
        f"read {name} v{first.version}", lambda: client.get_model_version(name, first.version)
    )


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        try:
            client.create_registered_model(
                name,
                tags={"acgan.kind": "class-split AC-GAN ensemble"},
                description=(
                    "Class-split AC-GAN ensembles (Odena et al. 2017): one generator per split, "
                    "each class routed to its split. @champion: the best version that passed "
                    "the gate; @candidate: the newest version."
                ),
            )
        except MlflowException as again:  # another process created it in between
            if again.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


def find_or_create_version(
    retry: Retry,
    client: Any,
    name: str,
    digest: str,
    log_model: Callable[[], Any],
    *,
    tags: dict[str, str],
    description: str,
    run_id: str,
) -> tuple[Any, bool]:
    """``(version, created)``: the existing version of this ensemble, or a new one whose files
    were uploaded before it was created (with all its tags, in one call)."""
    existing = find_version(retry, client, name, digest)
    if existing is not None:
        log.info("%s v%s already registers this ensemble; reusing it", name, existing.version)
        return existing, False
    info = log_model()

    def create() -> Any:
        # An earlier attempt may have created it although its reply was lost: look first.
        again = find_version(retry, client, name, digest)
        if again is not None:
            return again
        _ensure_registered_model(client, name)
        return client.create_model_version(
            name,
            source=info.model_uri,
            run_id=run_id,
            tags=tags,
            description=description,
            model_id=info.model_id,
        )

    return retry(f"create a version of {name}", create), True


def refresh_tags(retry: Retry, client: Any, name: str, mv: Any, tags: dict[str, str]) -> None:
    """Bring a reused version's lineage and figure tags up to date (the git commit and
    pipeline run it was first registered from stay as they were)."""
    keep = {"acgan.git_commit", "acgan.pipeline_run_id"}
    for key, value in tags.items():
        if key not in keep and mv.tags.get(key) != value:
            retry(
                f"tag v{mv.version} {key}",
                lambda k=key, v=value: client.set_model_version_tag(name, mv.version, k, v),
            )
    for key in mv.tags:  # figures the current reports no longer have (training's, say)
        if key.startswith(METRIC_TAG) and key not in tags:
            retry(
                f"untag v{mv.version} {key}",
                lambda k=key: client.delete_model_version_tag(name, mv.version, k),
            )


VERSIONS_TAG = "mlflow.modelVersions"  # where MLflow's UI looks up a logged model's versions


def link_logged_model(retry: Retry, client: Any, mv: Any, name: str, version: int) -> None:
    """List the version on its logged model, as ``mlflow.register_model`` does after creating
    one (``create_model_version`` alone leaves the model page saying "Not registered")."""
    # the sqlite store keeps no model_id on a version; its source is the logged model's URI
    source = str(getattr(mv, "source", "") or "")
    model_id = getattr(mv, "model_id", None) or (
        source.removeprefix("models:/") if source.startswith("models:/m-") else None
    )
    if not model_id or "/" in model_id:
        return  # registered from a run's files, not a logged model: nothing to link
    model = retry(f"read logged model {model_id}", lambda: client.get_logged_model(model_id))
    try:
        listed = json.loads(model.tags.get(VERSIONS_TAG) or "[]")
    except ValueError:
        listed = []
    listed = [e for e in listed if isinstance(e, dict)] if isinstance(listed, list) else []
    if any((e.get("name"), str(e.get("version"))) == (name, str(version)) for e in listed):
        return
    value = json.dumps([*listed, {"name": name, "version": str(version)}])
    retry(
        f"link logged model {model_id} to v{version}",
        lambda: client.set_logged_model_tags(model_id, {VERSIONS_TAG: value}),
    )


def delete_version(retry: Retry, client: Any, name: str, version: int) -> None:
    try:
        retry(f"delete {name} v{version}", lambda: client.delete_model_version(name, version))
    except Exception as exc:  # the original failure matters more; say what is left behind
        log.error("could not remove %s v%s after a failure: %s", name, version, exc)


def _figure(tags: dict[str, str], metric: str) -> float | None:
    value = tags.get(f"{METRIC_TAG}{metric}")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def apply_champion_rule(
    retry: Retry,
    client: Any,
    name: str,
    version: int,
    rcfg: RegistryConfig,
    gate_passed: bool,
    gate_reasons: list[str],
) -> Decision:
    """Decide whether ``version`` becomes the champion; record why; move the alias."""
    metric = rcfg.primary_metric
    current = retry("read aliases", lambda: client.get_registered_model(name)).aliases.get(CHAMPION)
    current = int(current) if current is not None else None
    mine = retry("read the new version", lambda: client.get_model_version(name, version))
    old_figure = None
    if current is not None and current != version:
        old = retry(f"read champion v{current}", lambda: client.get_model_version(name, current))
        old_figure = _figure(old.tags, metric)
    figure = _figure(mine.tags, metric)
    d = decide(
        gate_passed=gate_passed,
        gate_reasons=gate_reasons,
        metric=metric,
        greater_is_better=rcfg.greater_is_better,
        version=version,
        figure=figure,
        champion_version=current,
        champion_figure=old_figure,
    )
    if d.already:  # a repeated registration: the first decision's tags stand
        return d
    record = {
        "acgan.decision": "promoted" if d.promote else "kept",
        "acgan.decision_reason": d.reason[:5000],
        "acgan.candidate_figure": "none" if figure is None else f"{figure:.6g}",
        "acgan.champion_figure": "none" if old_figure is None else f"{old_figure:.6g}",
        "acgan.previous_champion": "none" if current is None else str(current),
    }
    for key, value in record.items():
        retry(
            f"tag v{version} {key}",
            lambda k=key, v=value: client.set_model_version_tag(name, version, k, v),
        )
    if d.promote:
        retry(
            f"move @{CHAMPION} to v{version}",
            lambda: client.set_registered_model_alias(name, CHAMPION, version),
        )
    log.info("%s v%s: %s (%s)", name, version, record["acgan.decision"], d.reason)
    return d
