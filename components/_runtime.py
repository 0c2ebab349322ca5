"""Helpers shared by the components, embedded into each one's source.

KFP lightweight components run their function's source in the image, where only the ``acgan``
package is installed: these helpers travel inside every component that lists them in
``additional_funcs`` (see :data:`components.common.HELPERS`). So each one is self-contained:
its imports are inside, it uses no module globals, and its signature names only builtins.
"""

from typing import Any


def load_config(config_json: str) -> Any:
    """The resolved configuration the ingest task passed down (JSON, so ints stay ints)."""
    import json

    from acgan.config import from_dict

    return from_dict(json.loads(config_json), "pipeline config")


def config_keys() -> dict:
    """Pipeline parameter -> the configuration key it sets (the user-facing knobs)."""
    return {
        "source": "data.source",
        "data_root": "data.root",
        "resolution": "data.resolution",
        "classes_per_split": "split.classes_per_split",
        "steps": "train.steps",
        "batch_size": "train.batch_size",
        "seed": "train.seed",
        "tracking_uri": "tracking.uri",
        "experiment": "tracking.experiment",
        "model_name": "registry.model_name",
    }


def build_config(params: dict, environ: dict) -> Any:
    """Pipeline parameters -> one validated :class:`acgan.config.Config`.

    Each user-facing knob sets one key; ``overrides`` (``section.key=value``, applied last)
    reaches every other key. An empty ``tracking_uri`` falls back to ``MLFLOW_TRACKING_URI`` in
    ``environ`` (the MLflow secret may carry it), then to the config default; an empty
    ``model_name`` means ``acgan-<source>``. ``acgan submit`` runs this offline, before it
    contacts the server, and the ingest task runs it again in the cluster, where a local
    MLflow store (sqlite, files) is refused.
    """
    import json

    from acgan.config import load

    keys = config_keys()
    values = dict(params)
    values["tracking_uri"] = values.get("tracking_uri") or environ.get("MLFLOW_TRACKING_URI")
    sets = [
        f"{key}={json.dumps(values[name])}"  # JSON is YAML: strings stay quoted strings
        for name, key in keys.items()
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
        from acgan.errors import ConfigError

        raise ConfigError(
            f"tracking.uri: {uri} is local to this pod; give the pods the MLflow server's URL "
            "(MLFLOW_TRACKING_URI in the acgan-mlflow secret, or the tracking_uri parameter)"
        )
    return cfg


def make_tracker(cfg: Any) -> Any:
    from acgan.lineage import source_tags
    from acgan.tracking import make_tracker as _make

    t = cfg.tracking
    tags = source_tags("acgan pipeline (Kubeflow)", "JOB") if t.enabled else None
    return _make(t.enabled, t.uri, t.experiment, tags, t.deadline_s)


def log_figures(metrics: Any, figures: dict, prefix: str = "") -> None:
    """Scalar figures -> a KFP ``Metrics`` artifact (the UI's metrics tab); others skipped."""
    import math

    for name, value in sorted(figures.items()):
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(float(value)):
            metrics.log_metric(f"{prefix}{name}", float(value))


def inline_images(html: str, base_dir: str) -> str:
    """Embed the PNGs a report links to (``src="plots/x.png"``) as data URIs: the KFP UI shows
    an HTML artifact as one file, without the files that sit beside it on disk."""
    import base64
    import os
    import re

    def embed(match: Any) -> str:
        path = os.path.join(base_dir, match.group(2))
        if not os.path.isfile(path):
            return match.group(0)
        with open(path, "rb") as f:
            data = base64.b64encode(f.read()).decode()
        return f'{match.group(1)}"data:image/png;base64,{data}"'

    return re.sub(r"""(src=)["']([^"':]+\.png)["']""", embed, html)


def image_page(title: str, images: list) -> str:
    """A one-file HTML page of ``(caption, png_path)`` pictures (for the KFP UI)."""
    import base64
    import html

    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    parts.append(f"<h2>{html.escape(title)}</h2>")
    for caption, path in images:
        with open(path, "rb") as f:
            data = base64.b64encode(f.read()).decode()
        parts.append(
            f"<figure><img style='image-rendering:pixelated;max-width:100%' "
            f"src='data:image/png;base64,{data}'><figcaption>{html.escape(caption)}"
            "</figcaption></figure>"
        )
    return "\n".join(parts)


def models_root(models: list, root: str) -> str:
    """Lay the per-split ``Model`` artifacts (each a trainer's output directory, wherever KFP
    put it) out as ``root/split_<id>``: the layout ``acgan.monitor`` reads. Symlinks, no copy."""
    import json
    import os

    os.makedirs(root, exist_ok=True)
    for model in models:
        with open(os.path.join(model.path, "train.json")) as f:
            split_id = int(json.load(f)["split_id"])
        os.symlink(os.path.abspath(model.path), os.path.join(root, f"split_{split_id}"))
    return root


def pack_ensemble(manifest: str, search: list, out_dir: str) -> list:
    """Copy the ensemble's member directories named in ``manifest`` (found as given, or under
    one of the ``search`` directories) into ``out_dir/split_<id>`` and write
    ``out_dir/ensemble.json`` with relative paths: one self-contained ``Model`` artifact that
    the evaluate and register tasks read wherever KFP stages it."""
    import json
    import os
    import shutil

    from acgan.errors import AcganError
    from acgan.models.ensemble import write_manifest

    with open(manifest) as f:
        raw = json.load(f)
    members = []
    for member in raw["members"]:
        given = str(member["model_dir"])
        candidates = [given] + [os.path.join(base, given) for base in search]
        found = next((c for c in candidates if os.path.isdir(c)), None)
        if found is None:
            raise AcganError(f"{manifest}: member directory {given} not found; re-run monitor")
        name = f"split_{int(member['split_id'])}"
        shutil.copytree(found, os.path.join(out_dir, name), symlinks=False)
        members.append({**member, "model_dir": name})
    write_manifest(out_dir, members, raw.get("excluded", []))
    return members


def absolute_manifest(ensemble_dir: str, tmp_dir: str) -> str:
    """The packed ensemble's manifest rewritten with absolute member paths (in ``tmp_dir``),
    for stage functions that resolve relative paths against the working directory."""
    import json
    import os

    from acgan.models.ensemble import write_manifest

    with open(os.path.join(ensemble_dir, "ensemble.json")) as f:
        raw = json.load(f)
    members = [
        {**m, "model_dir": os.path.abspath(os.path.join(ensemble_dir, m["model_dir"]))}
        for m in raw["members"]
    ]
    return str(write_manifest(tmp_dir, members, raw.get("excluded", [])))
