"""The ensemble as an MLflow pyfunc model, logged as *models from code*: nothing is pickled.

What a logged model holds (under the logged model's artifacts):

- ``model_code.py``: this package's two-line code file, which MLflow runs at load time to
  get an :class:`EnsembleModel` (``mlflow.models.set_model``); the class itself is imported
  from the installed ``acgan`` package, never unpickled;
- ``artifacts/<n>/generator.pt``: each split's generator checkpoint (plain dict, loaded with
  ``weights_only=True``);
- ``artifacts/members.json``: which split each file is, its classes and its SHA-256, so a
  tampered or truncated file is caught and reported by split before anything is generated.

Input: a DataFrame with ``class_label`` (index or class name), ``n`` and optional ``seed``
(default 0: the same seed gives the same images, on CPU and GPU alike). The whole request is
checked before anything is generated: an unknown class, a bad ``n`` or more images in total
than the model's ``max_images`` (``registry.serve_max_images`` when it was registered) fail
as ``INVALID_PARAMETER_VALUE``, which ``mlflow models serve`` answers with HTTP 400.

Output, by the ``format`` param: ``png`` (the default, what a web client of ``POST
/invocations`` wants) is a DataFrame with one row per image: ``class_label`` (dataset class
index), ``class_name``, ``seed``, ``index`` (0..n-1 within its request row) and
``png_base64``; ``array`` is a dict with ``images`` (uint8, N x H x W x C) and ``labels``
(int64 class indices, N). The same seed gives the same PNG bytes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from acgan.devices import resolve_device
from acgan.errors import AcganError, CheckpointError, RegistryError
from acgan.io import file_sha256, one_line
from acgan.models.ensemble import Ensemble, Member, load_member
from acgan.tracking import png_bytes

MODEL_CODE = Path(__file__).with_name("model_code.py")
MEMBERS_ARTIFACT = "members"
# Images one predict call may ask for when the model's config does not say (memory guard:
# checked before generating; 1024 images at 128 px are ~50 MB of pixels).
DEFAULT_MAX_IMAGES = 1024
FORMATS = ("png", "array")
PNG_COLUMNS = {  # the png format's columns and their MLflow types
    "class_label": "long",
    "class_name": "string",
    "seed": "long",
    "index": "long",
    "png_base64": "string",
}


def artifact_key(split_id: int) -> str:
    return f"split_{split_id}"


def members_record(members: Sequence[Member]) -> list[dict[str, Any]]:
    """What ``members.json`` says about each split (its file is the artifact of that key)."""
    return [
        {
            "split_id": m.split_id,
            "artifact": artifact_key(m.split_id),
            "classes": m.classes,
            "class_names": m.class_names,
            "step": m.step,
            "sha256": file_sha256(m.path),
        }
        for m in members
    ]


def load_verified(members_json: Path, artifacts: dict[str, str], device: torch.device) -> Ensemble:
    """Check every split's file against its recorded SHA-256, then load it; a bad file is
    reported by split (and never half-loaded into an ensemble that returns garbage)."""
    try:
        records = json.loads(Path(members_json).read_text())
    except (OSError, ValueError) as exc:
        raise RegistryError(
            f"{members_json}: the model's member list is unreadable ({one_line(exc)}); "
            "re-register the ensemble with `acgan register`"
        ) from exc
    members = []
    for rec in records:
        sid = rec["split_id"]
        path = Path(artifacts.get(rec["artifact"], ""))
        if not path.is_file():
            raise RegistryError(
                f"split {sid}: generator file {rec['artifact']} is missing from the model; "
                "re-register the ensemble with `acgan register`"
            )
        actual = file_sha256(path)
        if actual != rec["sha256"]:
            raise RegistryError(
                f"split {sid}: generator file {path.name} ({rec['artifact']}) does not match "
                f"its registered SHA-256 ({actual[:12]} != {rec['sha256'][:12]}): tampered or "
                "truncated; re-register the ensemble with `acgan register`"
            )
        try:
            members.append(load_member(path, device))
        except CheckpointError as exc:
            raise RegistryError(f"split {sid}: generator file failed to load: {exc}") from exc
    return Ensemble(members)


def _whole(value: Any, what: str, lowest: int) -> int:
    """A request field that must be a whole number in ``[lowest, 2**63)`` (JSON may send 2.0;
    a seed must fit torch's generator)."""
    whole = (isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)) or (
        isinstance(value, float | np.floating) and np.isfinite(value) and value == int(value)
    )
    number = int(value) if whole else None
    if number is None or not lowest <= number < 2**63:
        raise AcganError(f"model input: {what}={value!r}; pass a whole number >= {lowest}")
    return number


def check_request(
    ensemble: Ensemble, frame: pd.DataFrame, max_images: int
) -> list[tuple[int, int, int]]:
    """``(class, n, seed)`` per row, every row checked before anything is generated (an
    oversized request is refused without allocating a single image)."""
    missing = {"class_label", "n"} - set(frame.columns)
    if missing:
        raise AcganError(
            f"model input: missing column(s) {', '.join(sorted(missing))}; "
            "pass a DataFrame with class_label, n and optional seed"
        )
    rows = []
    for row in frame.to_dict("records"):
        seed = row.get("seed")
        missing_seed = seed is None or (pd.api.types.is_scalar(seed) and pd.isna(seed))
        rows.append(
            (
                ensemble.resolve(row["class_label"]),
                _whole(row["n"], "n", 1),
                0 if missing_seed else _whole(seed, "seed", 0),
            )
        )
    total = sum(n for _, n, _ in rows)
    if total > max_images:
        raise AcganError(
            f"model input: {total} images requested (n summed over the rows); this model serves "
            f"at most {max_images} per request (model_config max_images, from "
            "registry.serve_max_images); ask for fewer or split the request"
        )
    return rows


def predict_frame(
    ensemble: Ensemble, frame: pd.DataFrame, max_images: int = DEFAULT_MAX_IMAGES
) -> dict[str, np.ndarray]:
    """Rows of (class_label, n, seed) -> uint8 images (N, H, W, C) and their class labels."""
    images, labels = [], []
    for c, n, seed in check_request(ensemble, frame, max_images):
        imgs = ensemble.generate(c, n, seed=seed)
        images.append(imgs.permute(0, 2, 3, 1).cpu().numpy())
        labels.append(np.full(n, c, dtype=np.int64))
    h = w = ensemble.resolution
    return {
        "images": np.concatenate(images)
        if images
        else np.zeros((0, h, w, ensemble.channels), np.uint8),
        "labels": np.concatenate(labels) if labels else np.zeros(0, np.int64),
    }


def predict_png(
    ensemble: Ensemble, frame: pd.DataFrame, max_images: int = DEFAULT_MAX_IMAGES
) -> pd.DataFrame:
    """Rows of (class_label, n, seed) -> one row per image with its base64 PNG (lossless:
    the PNG decodes to exactly the ``array`` format's pixels)."""
    records = []
    for c, n, seed in check_request(ensemble, frame, max_images):
        imgs = ensemble.generate(c, n, seed=seed).permute(0, 2, 3, 1).cpu().numpy()
        for i, img in enumerate(imgs):
            png = png_bytes(img[..., 0] if img.shape[-1] == 1 else img)
            records.append(
                {
                    "class_label": c,
                    "class_name": ensemble.class_names[c],
                    "seed": seed,
                    "index": i,
                    "png_base64": base64.b64encode(png).decode("ascii"),
                }
            )
    return pd.DataFrame(records, columns=list(PNG_COLUMNS))


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """The pyfunc face of :class:`acgan.models.ensemble.Ensemble`."""

    ensemble: Ensemble
    max_images: int = DEFAULT_MAX_IMAGES

    def load_context(self, context: Any) -> None:
        config = context.model_config or {}
        device = resolve_device(str(config.get("device", "auto")))
        self.max_images = int(config.get("max_images", DEFAULT_MAX_IMAGES))
        self.ensemble = load_verified(
            Path(context.artifacts[MEMBERS_ARTIFACT]), dict(context.artifacts), device
        )

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame | dict[str, np.ndarray]:
        from mlflow.exceptions import MlflowException

        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        fmt = (params or {}).get("format") or "png"
        try:
            if fmt not in FORMATS:
                raise AcganError(f"params format={fmt!r}; pass one of {', '.join(FORMATS)}")
            if fmt == "array":
                return predict_frame(self.ensemble, model_input, self.max_images)
            return predict_png(self.ensemble, model_input, self.max_images)
        except AcganError as exc:
            # The scoring server answers an MlflowException with its code's HTTP status
            # (INVALID_PARAMETER_VALUE: 400) and message; anything else becomes a generic 400.
            raise MlflowException.invalid_parameter_value(str(exc)) from exc


def signature(ensemble: Ensemble) -> Any:
    """Inputs (class_label, n, seed), the ``format`` param, and the default (png) output."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema(
            [
                ColSpec(AnyType(), "class_label"),  # a class index or a class name
                ColSpec("long", "n"),
                ColSpec("long", "seed", required=False),
            ]
        ),
        outputs=Schema([ColSpec(kind, name) for name, kind in PNG_COLUMNS.items()]),
        params=ParamSchema([ParamSpec("format", "string", "png")]),
    )


def input_example(ensemble: Ensemble) -> pd.DataFrame:
    """Two rows: the first class by index and the last by name (both input forms)."""
    first, last = ensemble.classes[0], ensemble.classes[-1]
    return pd.DataFrame(
        {"class_label": [first, ensemble.class_names[last]], "n": [2, 2], "seed": [0, 0]}
    )
