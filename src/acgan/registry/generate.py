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

import contextlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acgan.errors import AcganError, RegistryError, mask_credentials
from acgan.io import atomic_dir, atomic_write_bytes, blocked_by_file, one_line
from acgan.models.ensemble import ENSEMBLE_JSON, GENERATOR_FILE, Ensemble
from acgan.models.sampling import labelled_grid, latents
from acgan.progress import progress_bar
from acgan.retry import DEFAULT_DEADLINE_S, PERMANENT, Retry
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


class _LoadRetry(Retry):
    """Loading a model through MLflow: retried within the deadline like every MLflow call."""

    error = RegistryError

    def message(self, what: str, tries: int, seconds: float, exc: BaseException) -> str:
        return (
            f"{what}: could not load from {self.where} ({one_line(exc)}; {tries} attempt(s) "
            f"in {seconds:.1f} s); check the model name / alias / version in the MLflow UI "
            "and tracking.uri"
        )


def _load_pyfunc(
    model: str, tracking_uri: str | None, device: str, deadline_s: float = DEFAULT_DEADLINE_S
) -> Ensemble:
    import mlflow.pyfunc

    from acgan.registry.pyfunc import EnsembleModel

    retry = _LoadRetry(tracking_uri or "the default tracking URI", deadline_s)
    with _tracking(tracking_uri):
        # a bad generator file is an AcganError, named by split, and is not retried
        loaded = retry(
            model, lambda: mlflow.pyfunc.load_model(model, model_config={"device": device})
        )
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
    model: str | None,
    name: str,
    tracking_uri: str | None,
    local: Path = LOCAL_MANIFEST,
    deadline_s: float = DEFAULT_DEADLINE_S,
) -> tuple[str, str | None]:
    """``(model to load, a note for the user)``. Without ``model``: ``models:/NAME@champion``,
    or ``@candidate`` when no version has passed the gate yet (saying so). A registry URI that
    names something missing fails naming what exists; other models are loaded as given. The
    registry's answers are retried within ``deadline_s`` (:class:`Retry`)."""
    if model is not None and not _REGISTERED.match(model):
        return model, None
    wanted = model or f"models:/{name}@champion"
    m = _REGISTERED.match(wanted)
    assert m is not None  # checked above, or built from the name
    retry = Retry(
        tracking_uri or "the default tracking URI",
        deadline_s,
        hint=f"check tracking.uri / MLFLOW_TRACKING_URI, {_local_hint(local)}",
        error=RegistryError,
    )
    return retry(f"look up {wanted}", lambda: _choose(m, model is None, tracking_uri, local))


def _choose(
    m: re.Match[str], default: bool, tracking_uri: str | None, local: Path
) -> tuple[str, str | None]:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    where = mask_credentials(tracking_uri or "the default tracking URI")
    wanted, name = m.group(0), m["name"]
    client = MlflowClient(tracking_uri=tracking_uri)
    rm, facts = _registry_facts(client, name)
    if rm is None:
        raise RegistryError(
            f"{wanted}: no registered model '{name}' at {where} ({facts}); register one "
            f"with `acgan register`, {_local_hint(local)}"
        )
    if m["alias"] is not None and m["alias"] not in rm.aliases:
        if default and "candidate" in rm.aliases:
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
            if exc.error_code not in PERMANENT:
                raise  # the server did not answer: retried
            raise RegistryError(
                f"{wanted}: {name} has no version {m['version']} at {where} ({facts}); "
                f"{_local_hint(local)}"
            ) from exc
    return wanted, None


def load_ensemble(
    model: str,
    *,
    tracking_uri: str | None = None,
    device: str = "auto",
    deadline_s: float = DEFAULT_DEADLINE_S,
) -> Ensemble:
    """An :class:`Ensemble` from a model URI, a pyfunc directory or local training outputs."""
    from acgan.devices import resolve_device

    local = Path(model)
    if "://" not in model and ":/" not in model:
        if local.is_file() and local.suffix == ".json":
            return Ensemble.from_manifest(local, resolve_device(device))
        if local.is_dir() and (local / "MLmodel").is_file():
            return _load_pyfunc(str(local), tracking_uri, device, deadline_s)
        if local.is_dir() and (local / ENSEMBLE_JSON).is_file():
            return Ensemble.from_manifest(local, resolve_device(device))
        if local.is_dir() and (local / GENERATOR_FILE).is_file():
            return Ensemble.load([local], resolve_device(device))
        raise AcganError(
            f"--model {model}: not a model URI (models:/NAME@champion, runs:/ID/ensemble) nor "
            "a pyfunc directory, ensemble.json or split directory; pass one of those"
        )
    return _load_pyfunc(model, tracking_uri, device, deadline_s)


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


def _check_grid(grid: Path) -> None:
    if grid.is_dir():
        raise AcganError(f"--grid {grid}: is a directory; name a .png file")
    if (blocker := blocked_by_file(grid)) is not None:
        raise AcganError(f"--grid {grid}: {blocker} is a file, not a directory")


def _occupied(directory: Path) -> bool:
    """Whether ``directory`` exists as anything but an empty directory."""
    if not directory.is_dir():
        return directory.exists() or directory.is_symlink()
    return any(directory.iterdir())


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
    overwrite: bool = False,
    deadline_s: float = DEFAULT_DEADLINE_S,
) -> GenerateResult:
    """Write ``out_dir/<class name>/<index>.png`` (n per class) and optionally one grid PNG.

    A class folder that already holds files is refused unless ``overwrite``; then only the
    files this call writes are replaced (each atomically) and everything else in it is kept:
    ``out_dir`` may be a user's data root, and nothing of theirs is ever deleted.
    """
    if n < 1:
        raise AcganError(f"--n {n}: ask for at least 1 image per class")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise AcganError(f"--out {out_dir}: is a file; pass a directory")
    if grid is not None:
        _check_grid(Path(grid))
    ens = load_ensemble(model, tracking_uri=tracking_uri, device=device, deadline_s=deadline_s)
    wanted = list(dict.fromkeys(ens.resolve(c) for c in classes)) if classes else ens.classes
    dirs = _dir_names(ens, wanted)
    for c in wanted:  # every refusal before the first image is written
        target = out_dir / dirs[c]
        if target.exists() and not target.is_dir():
            raise AcganError(f"{target}: is a file where class {ens.class_names[c]!r} goes")
        if not overwrite and _occupied(target):
            raise AcganError(
                f"{target}: already holds files; pass --overwrite to replace the images "
                "this writes (other files are kept), or choose another --out"
            )
    width = max(4, len(str(n - 1)))
    z = latents(n, ens.latent_dim, seed, ens.device)  # one draw: batching never changes it
    out_dir.mkdir(parents=True, exist_ok=True)
    firsts: list[torch.Tensor] = []
    counts: dict[str, int] = {}
    bar = progress_bar(total=n * len(wanted), desc="generate", unit="img", disable=not progress)
    try:
        for c in wanted:
            target = out_dir / dirs[c]
            # A new class folder appears whole or not at all; an existing one (--overwrite)
            # gets its images replaced one atomic file at a time, and keeps everything else.
            with contextlib.ExitStack() as stack:
                fresh = not target.exists()
                where = stack.enter_context(atomic_dir(target)) if fresh else target
                for start in range(0, n, batch_size):
                    chunk = z[start : start + batch_size]
                    imgs = ens.generate(c, len(chunk), z=chunk)
                    if start == 0:
                        firsts.append(imgs[:GRID_COLUMNS])
                    for i, img in enumerate(_to_hwc(imgs), start):
                        name = f"{i:0{width}d}.png"
                        if fresh:
                            (where / name).write_bytes(png_bytes(img))
                        else:
                            atomic_write_bytes(where / name, png_bytes(img))
                    bar.update(len(chunk))
            counts[dirs[c]] = n
    finally:
        bar.close()
    if grid is not None:
        names = [ens.class_names[c] for c in wanted]
        picture = labelled_grid(torch.cat(firsts), len(firsts[0]), names)
        atomic_write_bytes(Path(grid), png_bytes(picture))
    return GenerateResult(out_dir, counts, Path(grid) if grid else None, model)
