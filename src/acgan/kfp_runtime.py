"""What the Kubeflow components do besides calling a stage, kept in the package (no kfp import).

The components (``components/``) are lightweight KFP components whose source runs in our
images, which hold this package: each imports what it needs from here inside its body. Here
live the pipeline's parameter table (the pipeline function, ``acgan submit`` and the ingest
task derive their parameters from it), the configuration the tasks pass down, and the glue
between KFP's artifact directories and the stage functions.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acgan.config import Config, from_dict, load
from acgan.errors import AcganError, ConfigError

# Where the runs of a pipeline task come from (MLflow's source name and type), for
# ``acgan.lineage.make_tracker(cfg.tracking, *TASK_SOURCE)``.
TASK_SOURCE = ("acgan pipeline (Kubeflow)", "JOB")
# The PVC mounted in the pods that keep state across retries (checkpoints; data for
# imagefolder).
VOLUME_MOUNT = "/mnt/acgan"


@dataclass(frozen=True)
class Parameter:
    """One parameter of the compiled pipeline as users give it (``--param NAME=VALUE``)."""

    name: str
    type: type  # str | int | list | dict: what KFP declares (STRING, NUMBER_INTEGER, ...)
    default: Any
    help: str
    key: str | None = None  # the configuration key it sets (None: not one key)
    platform: bool = False  # a setting of the pods (volume, secrets, nodes), not the config


# The pipeline's parameters, in the order of its signature. The configuration knobs go to the
# ingest task, which builds the one Config every later task receives; the platform settings
# stay in the DAG (pipelines/acgan.py).
PARAMETERS: tuple[Parameter, ...] = (
    Parameter(
        "source",
        str,
        "synthetic",
        "dataset: synthetic | mnist | fashion_mnist | cifar10 | cifar100 | imagefolder",
        "data.source",
    ),
    Parameter("data_root", str, f"{VOLUME_MOUNT}/data", "dataset directory", "data.root"),
    Parameter("resolution", int, 32, "image side in pixels: 32 | 64 | 128", "data.resolution"),
    Parameter(
        "classes_per_split",
        int,
        5,
        "classes per split (one AC-GAN each)",
        "split.classes_per_split",
    ),
    Parameter("steps", int, 400, "training steps per split", "train.steps"),
    Parameter("batch_size", int, 64, "training batch size", "train.batch_size"),
    Parameter("seed", int, 0, "training seed", "train.seed"),
    Parameter(
        "tracking_uri",
        str,
        "",
        "MLflow server URL; empty: MLFLOW_TRACKING_URI from the acgan-mlflow secret",
        "tracking.uri",
    ),
    Parameter("experiment", str, "acgan", "MLflow experiment", "tracking.experiment"),
    Parameter(
        "model_name",
        str,
        "",
        "registered model name; empty: acgan-<source>",
        "registry.model_name",
    ),
    Parameter(
        "overrides",
        list,
        [],
        'any other config key, as "section.key=value" items (applied last)',
    ),
    Parameter(
        "checkpoint_root",
        str,
        f"{VOLUME_MOUNT}/checkpoints",
        "checkpoints on the volume (a retried pod resumes from there)",
        platform=True,
    ),
    Parameter("volume_pvc", str, "acgan-data", "PVC mounted at " + VOLUME_MOUNT, platform=True),
    Parameter("mlflow_secret", str, "acgan-mlflow", "secret with MLFLOW_* keys", platform=True),
    Parameter("s3_secret", str, "acgan-s3", "secret with AWS_* keys", platform=True),
    Parameter(
        "gpu_node_selector",
        dict,
        {"nvidia.com/gpu.present": "true"},
        "node labels of the GPU tasks' nodes",
        platform=True,
    ),
    Parameter(
        "gpu_tolerations",
        list,
        [],
        "tolerations of the GPU tasks, besides the standard nvidia.com/gpu one",
        platform=True,
    ),
)
CONFIG_PARAMETERS = tuple(p.name for p in PARAMETERS if not p.platform)


def config_keys() -> dict[str, str]:
    """Pipeline parameter -> the configuration key it sets (the user-facing knobs)."""
    return {p.name: p.key for p in PARAMETERS if p.key is not None}


def build_config(params: Mapping[str, Any], environ: Mapping[str, str]) -> Config:
    """Pipeline parameters -> one validated :class:`acgan.config.Config`.

    Each user-facing knob sets one key; ``overrides`` (``section.key=value``, applied last)
    reaches every other key. An empty ``tracking_uri`` falls back to ``MLFLOW_TRACKING_URI`` in
    ``environ`` (the MLflow secret may carry it), then to the config default; an empty
    ``model_name`` means ``acgan-<source>``. ``acgan submit`` runs this offline, before it
    contacts the server, and the ingest task runs it again in the cluster, where a local
    MLflow store (sqlite, files) is refused.
    """
    values = dict(params)
    values["tracking_uri"] = values.get("tracking_uri") or environ.get("MLFLOW_TRACKING_URI")
    sets = [
        f"{key}={json.dumps(values[name])}"  # JSON is YAML: strings stay quoted strings
        for name, key in config_keys().items()
        if values.get(name) not in (None, "")
    ]
    cfg = load(None, [*sets, *(values.get("overrides") or [])])
    uri = cfg.tracking.uri
    # ACGAN_POD_NAME is set on the cluster only (the pipeline's platform spec; kfp.local and
    # `acgan submit` do not have it).
    if (
        cfg.tracking.enabled
        and environ.get("ACGAN_POD_NAME")
        and ("://" not in uri or uri.startswith(("sqlite:", "file:")))
    ):
        # In a pod a local store is lost with the pod, and each task would get its own.
        raise ConfigError(
            f"tracking.uri: {uri} is local to this pod; give the pods the MLflow server's URL "
            "(MLFLOW_TRACKING_URI in the acgan-mlflow secret, or the tracking_uri parameter)"
        )
    return cfg


def load_config(config_json: str) -> Config:
    """The resolved configuration the ingest task passed down (JSON, so ints stay ints)."""
    return from_dict(json.loads(config_json), "pipeline config")


def log_figures(metrics: Any, figures: Mapping[str, Any]) -> None:
    """The finite numbers of ``figures`` -> a KFP ``Metrics`` artifact (the UI's metrics tab;
    anything with ``log_metric(name, value)``); other values are skipped."""
    for name, value in sorted(figures.items()):
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(float(value)):
            metrics.log_metric(name, float(value))


def models_root(model_dirs: Sequence[str | Path], root: str | Path) -> Path:
    """Lay the trainers' output directories (wherever KFP staged each ``Model`` artifact) out
    as ``root/split_<id>``: the ``models/split_<id>`` layout of a DVC run that the monitor
    reads. Symlinks, no copy."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for model_dir in model_dirs:
        split_id = int(json.loads((Path(model_dir) / "train.json").read_text())["split_id"])
        (root / f"split_{split_id}").symlink_to(Path(model_dir).absolute())
    return root


def pack_ensemble(manifest: str | Path, out_dir: str | Path) -> list[dict[str, Any]]:
    """Copy the members of the ensemble ``manifest`` lists into ``out_dir/split_<id>`` and
    write ``out_dir/ensemble.json`` beside them: one self-contained ``Model`` artifact that the
    evaluate and register tasks read wherever KFP stages it."""
    from acgan.models.ensemble import read_manifest, write_manifest

    manifest, out_dir = Path(manifest), Path(out_dir)
    dirs = read_manifest(manifest)  # resolved against the manifest's own directory
    raw = json.loads((manifest / "ensemble.json" if manifest.is_dir() else manifest).read_text())
    members = []
    for member, found in zip(raw["members"], dirs, strict=True):
        if not found.is_dir():
            raise AcganError(f"{manifest}: member directory {found} not found; re-run monitor")
        name = f"split_{int(member['split_id'])}"
        shutil.copytree(found, out_dir / name, symlinks=False)
        members.append({**member, "model_dir": str(out_dir / name)})
    excluded = [{k: v for k, v in e.items() if k != "model_dir"} for e in raw["excluded"]]
    write_manifest(out_dir, members, excluded)
    return members
