"""The register stage: log the ensemble as a pyfunc model, register it, move the aliases.

Order matters for "no half-registered version": the model's files are uploaded first (a
failure there leaves no version at all), then the version is created *with* all its lineage
tags in one call (so a version never lacks them), then the aliases move, and a last tag
(``acgan.registration_complete``) marks it finished. A failure after the version exists
deletes the version this call created; a process killed in between leaves a version with its
files but without that tag, which the next ``acgan register`` of the same ensemble finishes.
Every registry call is retried with exponential backoff (``registry.retries``,
``registry.retry_backoff_s``), then fails with one line. Registering the same trained
ensemble again (same generator files, by SHA-256) reuses its version: no second version; its
figure tags are refreshed and the champion rule is applied again. Concurrent registrations
(two ``acgan register`` at once, same or different ensembles) are ordered by version number:
see :mod:`acgan.registry.turns`.

The champion rule: ``@champion`` moves to the new version only when the gate passes *and* the
version beats the current champion on ``registry.primary_metric`` (strictly: a tie keeps the
old champion). The decision and both figures are recorded as tags of the new version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from acgan.config import Config
from acgan.errors import AcganError, RegistryError, mask_credentials, strip_credentials
from acgan.io import atomic_write_bytes, atomic_write_json, one_line
from acgan.lineage import Stage, git_commit, stage
from acgan.models.ensemble import Ensemble
from acgan.monitor import status
from acgan.registry import model_log, turns
from acgan.registry.inputs import Inputs, read_inputs
from acgan.registry.model_log import CANDIDATE, CHAMPION, HASH_TAG, METRIC_TAG
from acgan.registry.pyfunc import members_record
from acgan.registry.rules import registry_retry
from acgan.registry.turns import DONE_TAG
from acgan.retry import Retry
from acgan.tracking import NullTracker, Run, Tracker, png_bytes

log = logging.getLogger(__name__)
REGISTRATION_JSON = "registration.json"
SAMPLES_PNG = "samples.png"
TAG_LIMIT = 5000  # MLflow's maximum tag value length


@dataclass(frozen=True)
class RegisterResult:
    model_name: str
    version: int | None  # None when registration is switched off
    model_uri: str | None  # models:/NAME/VERSION
    champion: bool  # this version holds @champion after the call
    decision: str  # promoted | kept | skipped
    reason: str
    created: bool  # False: an earlier registration of the same ensemble was reused
    run_id: str | None
    out_file: Path


def _tag(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= TAG_LIMIT else text[: TAG_LIMIT - 20] + " ... (truncated)"


def ensemble_hash(members: list[dict[str, Any]]) -> str:
    """Identity of a trained ensemble: its splits and the bytes of their generator files."""
    blob = json.dumps(sorted((m["split_id"], m["sha256"]) for m in members)).encode()
    return hashlib.sha256(blob).hexdigest()


def version_tags(
    cfg: Config, inp: Inputs, members: list[dict[str, Any]], digest: str, parent: Run
) -> dict[str, str]:
    steps = {sid: rec.get("step") for sid, rec in sorted(inp.train.items())}
    tags = {
        HASH_TAG: digest,
        "acgan.data_hash": inp.data_hash,
        "acgan.dataset": inp.dataset,
        "acgan.git_commit": git_commit() or "unknown",
        "acgan.pipeline_run_id": parent.run_id,
        "acgan.split_plan": _tag({m["split_id"]: m["class_names"] for m in members}),
        "acgan.split_health": _tag({sid: s for sid, s in sorted(inp.health.items())}),
        "acgan.excluded_splits": _tag(inp.excluded),
        "acgan.budget": (
            f"{len(members)} splits x {cfg.train.steps} steps x {cfg.train.batch_size} "
            f"images/step (trained steps per split: {json.dumps(steps)})"
        ),
        "acgan.gate": "passed" if inp.gate_passed else "failed",
        "acgan.gate_reasons": _tag(inp.gate_reasons),
        "acgan.gate_source": inp.gate_source,
        "acgan.figures_source": inp.figures_source,
        "acgan.primary_metric": cfg.registry.primary_metric,
    }
    tags.update({f"{METRIC_TAG}{k}": f"{v:.6g}" for k, v in sorted(inp.figures.items())})
    return tags


def generate_command(name: str, version: int, tracking_uri: str) -> str:
    """A command that loads this exact version when pasted into a shell: a local store's
    path made absolute (it would otherwise depend on the directory the user is in), and no
    credentials (the user's own come from MLFLOW_TRACKING_USERNAME/PASSWORD)."""
    uri = strip_credentials(tracking_uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return (
        f"MLFLOW_TRACKING_URI={shlex.quote(uri)} acgan generate --model "
        f"{shlex.quote(f'models:/{name}/{version}')} --classes 0,1 --n 16 --out generated"
    )


def description(
    cfg: Config, inp: Inputs, ens: Ensemble, name: str, version: int | None, tracking_uri: str
) -> str:
    fig = inp.figures.get(cfg.registry.primary_metric)
    fig_text = f"{fig:.4g}" if fig is not None else "n/a"
    health = ", ".join(f"{sid} {status.label(s)}" for sid, s in sorted(inp.health.items()))
    text = (
        f"AC-GAN ensemble: {len(ens.members)} split generators routing {len(ens.classes)} "
        f"classes of '{inp.dataset}' at {ens.resolution}px x {ens.channels}ch. "
        f"Data {inp.data_hash[:12]}; gate {'passed' if inp.gate_passed else 'failed'}; "
        f"{cfg.registry.primary_metric} {fig_text}; splits: {health or 'no monitor verdict'}. "
        "Input: DataFrame(class_label, n, seed); output: one base64 PNG per image with its "
        "label (params format=array: uint8 images (N,H,W,C) + labels)."
    )
    if version is not None:
        text += f" Generate images: {generate_command(name, version, tracking_uri)}"
    return text


def _write(st: Stage, record: dict[str, Any], grid: Any) -> Path:
    """Both files (and config.json) or none (a killed process leaves the previous directory,
    and its temp directory is removed by the next run)."""
    with st.output() as tmp:
        atomic_write_bytes(tmp / SAMPLES_PNG, png_bytes(grid))
        atomic_write_json(tmp / REGISTRATION_JSON, record)
    return st.out_dir / REGISTRATION_JSON


def register(
    cfg: Config,
    ensemble_manifest: Path,
    ingested_dir: Path,
    out_dir: Path,
    tracker: Tracker,
    *,
    monitor_dir: Path | None = None,
    eval_dir: Path | None = None,
    parent_run_id: str | None = None,
) -> RegisterResult:
    """Register the ensemble of ``ensemble_manifest``; writes ``out_dir/registration.json``."""
    out_dir = Path(out_dir)
    name = cfg.model_name
    inp = read_inputs(ensemble_manifest, ingested_dir, monitor_dir, eval_dir)
    ens = Ensemble.load(inp.member_dirs)  # every generator file must load before anything else
    members = members_record(ens.members)
    digest = ensemble_hash(members)
    grid = model_log.sample_grid(ens)
    base = {
        "model_name": name,
        "ensemble_hash": digest,
        "data_hash": inp.data_hash,
        "figures": inp.figures,
        "gate": {"passed": inp.gate_passed, "reasons": inp.gate_reasons, "source": inp.gate_source},
        "split_health": inp.health,
        "members": members,
    }
    off = (
        "registry.enabled is false"
        if not cfg.registry.enabled
        else "tracking.enabled is false (the registry needs MLflow)"
        if isinstance(tracker, NullTracker)
        else None
    )
    if off is not None:
        record = {**base, "registered": False, "decision": "skipped", "reason": off}
        with stage("register", cfg, out_dir, data_hash=inp.data_hash) as st:
            path = _write(st, record, grid)
        return RegisterResult(name, None, None, False, "skipped", off, False, None, path)
    if "'" in name or "`" in name:
        raise RegistryError(f"registry.model_name {name!r}: quotes are not allowed; rename it")

    retry = registry_retry(
        cfg.registry.retries, cfg.registry.retry_backoff_s, tracker.uri, cfg.tracking.deadline_s
    )
    # One register run per trained ensemble: its version's source run shows its own files and
    # samples, and registering the same ensemble again picks the same run up.
    with stage(
        "register",
        cfg,
        out_dir,
        data_hash=inp.data_hash,
        tracker=tracker,
        parent_run_id=parent_run_id,
        run_name=f"register-{digest[:8]}",
        tags={HASH_TAG: digest},
        params={"registry.model_name": name},
    ) as st:
        return _register(cfg, st, tracker, inp, ens, members, digest, grid, base, retry)


def _register(
    cfg: Config,
    st: Stage,
    tracker: Tracker,
    inp: Inputs,
    ens: Ensemble,
    members: list[dict[str, Any]],
    digest: str,
    grid: Any,
    base: dict[str, Any],
    retry: Retry,
) -> RegisterResult:
    """Create (or find) the version, its aliases and records, in the stage's run."""
    name, run, parent, client = cfg.model_name, st.run, st.pipeline_run, tracker.client
    tags = version_tags(cfg, inp, members, digest, parent)
    mv, created = model_log.find_or_create_version(
        retry,
        client,
        name,
        digest,
        lambda: model_log.log_ensemble(
            retry, tracker, run.run_id, ens, members, grid, cfg.registry.serve_max_images
        ),
        tags=tags,
        description=description(cfg, inp, ens, name, None, tracker.uri),
        run_id=run.run_id,
    )
    version = int(mv.version)
    try:
        if created:  # a concurrent registration of the same ensemble may have won
            mv, created = turns.keep_oldest(retry, client, name, digest, mv)
            version = int(mv.version)
        # older versions still being registered go first (the champion rule in version order)
        mv = turns.wait_for_turn(retry, client, name, mv, created, cfg.registry.turn_timeout_s)
        if not created:  # same generators, maybe newer evidence (an evaluation since): refresh
            model_log.refresh_tags(retry, client, name, mv, tags)
        # A new version gets @candidate; so does an old one whose registration a killed
        # process left unfinished (it lacks the tag set as the very last step).
        unfinished = created or mv.tags.get(DONE_TAG) != "true"
        if unfinished:
            retry(
                f"set alias {CANDIDATE}",
                lambda: client.set_registered_model_alias(name, CANDIDATE, version),
            )
        # The version <-> logged model link both ways, and a description whose command names
        # this version (its number is only known now).
        model_log.link_logged_model(retry, client, mv, name, version)
        text = description(cfg, inp, ens, name, version, tracker.uri)
        if mv.description != text:
            retry(
                f"describe v{version}",
                lambda: client.update_model_version(name, version, description=text),
            )
        decision = model_log.apply_champion_rule(
            retry, client, name, version, cfg.registry, inp.gate_passed, inp.gate_reasons
        )
        if unfinished:
            retry(
                f"tag v{version} {DONE_TAG}",
                lambda: client.set_model_version_tag(name, version, DONE_TAG, "true"),
            )
    except BaseException as exc:
        if created:  # leave no version behind that this call could not finish
            model_log.delete_version(retry, client, name, version)
        if isinstance(exc, RegistryError | KeyboardInterrupt):
            raise
        raise RegistryError(
            f"registering {name} v{version} failed ({one_line(exc)}); "
            "the version was removed, re-run `acgan register`"
        ) from exc
    champion = decision.champion
    result = RegisterResult(
        name,
        version,
        f"models:/{name}/{version}",
        champion,
        "promoted" if decision.promote else "kept",
        decision.reason,
        created,
        run.run_id,
        st.out_dir / REGISTRATION_JSON,
    )
    try:
        aliases = sorted(
            retry("read aliases", lambda: client.get_model_version(name, version)).aliases
        )
    except AcganError:  # the version is complete; the record just says less
        aliases = [CHAMPION] if champion else []
    links = {
        "runs": tracker.runs_url(),
        "pipeline_run": tracker.run_url(parent.run_id),
        "registered_model": tracker.model_url(name),
        "version": tracker.model_url(name, version),
    }
    record = {
        **base,
        **asdict(result),
        "registered": True,
        "aliases": aliases,
        "tracking_uri": mask_credentials(tracker.uri),
        "pipeline_run_id": parent.run_id,
        "generate": generate_command(name, version, tracker.uri),
        "links": links,
    }
    path = _write(st, record, grid)
    try:  # bookkeeping on the runs: the registration itself is done whatever happens here
        run.log_dict(json.loads(path.read_text()), f"register/{REGISTRATION_JSON}")
        gate = "passed" if inp.gate_passed else "failed"
        outcome = {
            "acgan.model_version": version,
            "acgan.model_uri": result.model_uri,
            "acgan.aliases": ",".join(aliases) or "none",
            "acgan.decision": result.decision,
        }
        run.set_tags(outcome)
        # The last stage of the pipeline: its parent run ends with the registry's answer.
        st.finish_pipeline(
            inp.figures, {**outcome, "acgan.registered_model": name, "acgan.gate": gate}
        )
        st.end()
    except AcganError as exc:
        log.warning("registered %s v%s, but the run's bookkeeping failed: %s", name, version, exc)
    return result
