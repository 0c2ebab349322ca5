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
(default 0: the same seed gives the same images, on CPU and GPU alike). Output: a dict with
``images`` (uint8, N x H x W x C) and ``labels`` (int64 dataset class indices, N).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from acgan.checkpoint import file_sha256, one_line
from acgan.errors import AcganError, CheckpointError, RegistryError
from acgan.models.ensemble import Ensemble, Member, load_member

MODEL_CODE = Path(__file__).with_name("model_code.py")
MEMBERS_ARTIFACT = "members"
MAX_SAMPLES_PER_ROW = 100_000  # one row asks for at most this many images (memory guard)


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AcganError(f"device {name!r}: no CUDA device is visible; use cpu or auto")
    return torch.device(name)


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


def _seed(value: Any) -> int:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return 0
    return int(value)


def predict_frame(ensemble: Ensemble, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Rows of (class_label, n, seed) -> uint8 images (N, H, W, C) and their class labels."""
    missing = {"class_label", "n"} - set(frame.columns)
    if missing:
        raise AcganError(
            f"model input: missing column(s) {', '.join(sorted(missing))}; "
            "pass a DataFrame with class_label, n and optional seed"
        )
    images, labels = [], []
    for row in frame.to_dict("records"):
        c = ensemble.resolve(row["class_label"])
        n = int(row["n"])
        if not 1 <= n <= MAX_SAMPLES_PER_ROW:
            raise AcganError(f"model input: n={n} for class {c}; ask for 1..{MAX_SAMPLES_PER_ROW}")
        imgs = ensemble.generate(c, n, seed=_seed(row.get("seed")))
        images.append(imgs.permute(0, 2, 3, 1).numpy())
        labels.append(np.full(n, c, dtype=np.int64))
    h = w = ensemble.resolution
    return {
        "images": np.concatenate(images)
        if images
        else np.zeros((0, h, w, ensemble.channels), np.uint8),
        "labels": np.concatenate(labels) if labels else np.zeros(0, np.int64),
    }


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """The pyfunc face of :class:`acgan.models.ensemble.Ensemble`."""

    ensemble: Ensemble

    def load_context(self, context: Any) -> None:
        config = context.model_config or {}
        device = resolve_device(str(config.get("device", "auto")))
        self.ensemble = load_verified(
            Path(context.artifacts[MEMBERS_ARTIFACT]), dict(context.artifacts), device
        )

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> dict[str, np.ndarray]:
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        return predict_frame(self.ensemble, model_input)


def signature(ensemble: Ensemble) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema, TensorSpec

    r, ch = ensemble.resolution, ensemble.channels
    return ModelSignature(
        inputs=Schema(
            [
                ColSpec(AnyType(), "class_label"),  # a class index or a class name
                ColSpec("long", "n"),
                ColSpec("long", "seed", required=False),
            ]
        ),
        outputs=Schema(
            [
                TensorSpec(np.dtype("uint8"), (-1, r, r, ch), "images"),
                TensorSpec(np.dtype("int64"), (-1,), "labels"),
            ]
        ),
    )


def input_example(ensemble: Ensemble) -> pd.DataFrame:
    """Two rows: the first class by index and the last by name (both input forms)."""
    first, last = ensemble.classes[0], ensemble.classes[-1]
    return pd.DataFrame(
        {"class_label": [first, ensemble.class_names[last]], "n": [2, 2], "seed": [0, 0]}
    )
