"""``acgan generate``: load an ensemble (registry, run, or local files) and write PNGs.

Where the model comes from:

- ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/ensemble`` or any other
  MLflow model URI: loaded through ``mlflow.pyfunc`` from the tracking server given;
- a local directory holding an ``MLmodel`` (a downloaded pyfunc model);
- an ensemble manifest (``reports/monitor/ensemble.json``), a split directory
  (``models/split_0``) or a directory with ``ensemble.json``: loaded without MLflow.

The images of a seed are the ones the pyfunc's ``predict`` returns for that seed: the noise is
drawn once for all ``n`` and then consumed in batches, so batching never changes a picture.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acgan.checkpoint import atomic_dir, atomic_write_bytes, one_line
from acgan.errors import AcganError, RegistryError
from acgan.models.ensemble import ENSEMBLE_JSON, GENERATOR_FILE, Ensemble, read_manifest
from acgan.models.sampling import labelled_grid, latents
from acgan.progress import progress_bar
from acgan.tracking import png_bytes

GRID_COLUMNS = 8
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# models:/NAME@ALIAS or models:/NAME/VERSION (models:/m-<id>, a logged model, is neither)
_REGISTERED = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))$")
LOCAL_MANIFEST = Path("reports/monitor/ensemble.json")  # what `acgan monitor` writes


@dataclass(frozen=True)
class GenerateResult:
    out_dir: Path
    counts: dict[str, int]  # class directory name -> images written
    grid: Path | None
    source: str  # what was loaded, e.g. "models:/acgan-synthetic@champion"


@contextmanager
def _tracking(uri: str | None) -> Iterator[None]:
    """Point MLflow at ``uri`` while a model loads, then restore what was set before."""
    import mlflow

    before = mlflow.get_tracking_uri()
    if uri:
        mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def _load_pyfunc(model: str, tracking_uri: str | None, device: str) -> Ensemble:
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    from acgan.registry.pyfunc import EnsembleModel

    where = tracking_uri or "the default tracking URI"
    with _tracking(tracking_uri):
        try:
            loaded = mlflow.pyfunc.load_model(model, model_config={"device": device})
        except AcganError:
            raise  # a bad generator file, already named by split
        except (MlflowException, OSError, ValueError) as exc:
            raise RegistryError(
                f"{model}: could not load from {where} ({one_line(exc)[:200]}); check the "
                "model name / alias / version in the MLflow UI and tracking.uri"
            ) from exc
    inner = loaded.unwrap_python_model()
    if not isinstance(inner, EnsembleModel):
        raise RegistryError(
            f"{model}: not an acgan ensemble ({type(inner).__name__}); "
            "register one with `acgan register`"
        )
    return inner.ensemble


def _local_hint(local: Path) -> str:
    if local.is_file():
        return f"or generate from the local ensemble without a registry: --model {local}"
    return "or pass --model a local ensemble.json (`acgan monitor` writes one)"


def _registry_facts(client: Any, name: str) -> tuple[Any | None, str]:
    """The registered model (None if missing) and a sentence on what the registry holds."""
    from mlflow.exceptions import MlflowException

    try:
        rm = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        names = sorted(m.name for m in client.search_registered_models(max_results=50))
        return None, f"registered models there: {', '.join(names) or 'none'}"
    aliases = ", ".join(f"@{a} = v{v}" for a, v in sorted(rm.aliases.items())) or "none"
    versions = []
    if "'" not in name:  # a quote cannot be put into the filter string
        found = client.search_model_versions(f"name='{name}'")
        versions = sorted(int(v.version) for v in found)
    listed = ", ".join(str(v) for v in versions) or "none"
    return rm, f"its aliases: {aliases}; its versions: {listed}"


def choose_model(
    model: str | None, name: str, tracking_uri: str | None, local: Path = LOCAL_MANIFEST
) -> tuple[str, str | None]:
    """``(model to load, a note for the user)``. Without ``model``: ``models:/NAME@champion``,
    or ``@candidate`` when no version has passed the gate yet (saying so). A registry URI that
    names something missing fails naming what exists; other models are loaded as given."""
    if model is not None and not _REGISTERED.match(model):
        return model, None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    where = tracking_uri or "the default tracking URI"
    wanted = model or f"models:/{name}@champion"
    m = _REGISTERED.match(wanted)
    assert m is not None  # checked above, or built from the name
    name = m["name"]
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        rm, facts = _registry_facts(client, name)
        if rm is None:
            raise RegistryError(
                f"{wanted}: no registered model '{name}' at {where} ({facts}); register one "
                f"with `acgan register`, {_local_hint(local)}"
            )
        if m["alias"] is not None and m["alias"] not in rm.aliases:
            if model is None and "candidate" in rm.aliases:
                v = rm.aliases["candidate"]
                return f"models:/{name}@candidate", (
                    f"no version of {name} has passed the evaluation gate yet (no @champion; "
                    f"see reports/eval/gate.json): using @candidate, version {v}"
                )
            raise RegistryError(
                f"{wanted}: {name} has no alias @{m['alias']} at {where} ({facts}); pass one "
                f"of them, e.g. --model models:/{name}/VERSION, {_local_hint(local)}"
            )
        if m["version"] is not None:
            try:
                client.get_model_version(name, m["version"])
            except MlflowException as exc:
                raise RegistryError(
                    f"{wanted}: {name} has no version {m['version']} at {where} ({facts}); "
                    f"{_local_hint(local)}"
                ) from exc
    except MlflowException as exc:
        raise RegistryError(
            f"{wanted}: the registry at {where} did not answer ({one_line(exc)[:200]}); check "
            f"tracking.uri / MLFLOW_TRACKING_URI, {_local_hint(local)}"
        ) from exc
    return wanted, None


def load_ensemble(model: str, *, tracking_uri: str | None = None, device: str = "auto") -> Ensemble:
    """An :class:`Ensemble` from a model URI, a pyfunc directory or local training outputs."""
    from acgan.registry.pyfunc import resolve_device

    local = Path(model)
    if "://" not in model and ":/" not in model:
        if local.is_file() and local.suffix == ".json":
            return Ensemble.load(read_manifest(local), resolve_device(device))
        if local.is_dir() and (local / "MLmodel").is_file():
            return _load_pyfunc(str(local), tracking_uri, device)
        if local.is_dir() and (local / ENSEMBLE_JSON).is_file():
            return Ensemble.load(read_manifest(local), resolve_device(device))
        if local.is_dir() and (local / GENERATOR_FILE).is_file():
            return Ensemble.load([local], resolve_device(device))
        raise AcganError(
            f"--model {model}: not a model URI (models:/NAME@champion, runs:/ID/ensemble) nor "
            "a pyfunc directory, ensemble.json or split directory; pass one of those"
        )
    return _load_pyfunc(model, tracking_uri, device)


def _dir_names(ens: Ensemble, classes: Sequence[int]) -> dict[int, str]:
    """A file-system-safe, unique directory name per class (its class name when possible)."""
    names: dict[int, str] = {}
    for c in classes:
        base = _UNSAFE.sub("_", ens.class_names[c]).strip("._") or f"class_{c}"
        names[c] = base if base not in names.values() else f"{base}_{c}"
    return names


def _to_hwc(images: torch.Tensor) -> np.ndarray:
    arr = images.permute(0, 2, 3, 1).numpy()
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def generate_images(
    model: str,
    out_dir: Path,
    *,
    classes: Sequence[str | int] | None = None,
    n: int = 64,
    seed: int = 0,
    grid: Path | None = None,
    tracking_uri: str | None = None,
    device: str = "auto",
    batch_size: int = 256,
    progress: bool = True,
) -> GenerateResult:
    """Write ``out_dir/<class name>/<index>.png`` (n per class) and optionally one grid PNG."""
    if n < 1:
        raise AcganError(f"--n {n}: ask for at least 1 image per class")
    ens = load_ensemble(model, tracking_uri=tracking_uri, device=device)
    wanted = list(dict.fromkeys(ens.resolve(c) for c in classes)) if classes else ens.classes
    dirs = _dir_names(ens, wanted)
    width = max(4, len(str(n - 1)))
    z = latents(n, ens.latent_dim, seed, ens.device)  # one draw: batching never changes it
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    firsts: list[torch.Tensor] = []
    counts: dict[str, int] = {}
    bar = progress_bar(total=n * len(wanted), desc="generate", unit="img", disable=not progress)
    try:
        for c in wanted:
            # Each class directory is replaced whole: no stale files from a larger earlier n.
            with atomic_dir(out_dir / dirs[c]) as tmp:
                for start in range(0, n, batch_size):
                    chunk = z[start : start + batch_size]
                    imgs = ens.generate(c, len(chunk), z=chunk)
                    if start == 0:
                        firsts.append(imgs[:GRID_COLUMNS])
                    for i, img in enumerate(_to_hwc(imgs), start):
                        (tmp / f"{i:0{width}d}.png").write_bytes(png_bytes(img))
                    bar.update(len(chunk))
            counts[dirs[c]] = n
    finally:
        bar.close()
    if grid is not None:
        names = [ens.class_names[c] for c in wanted]
        picture = labelled_grid(torch.cat(firsts), len(firsts[0]), names)
        atomic_write_bytes(Path(grid), png_bytes(picture))
    return GenerateResult(out_dir, counts, Path(grid) if grid else None, model)
