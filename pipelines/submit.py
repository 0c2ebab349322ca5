"""Submit the compiled pipeline to a Kubeflow Pipelines endpoint, after checking it offline.

Everything that can be wrong with a submission is checked before the server is contacted:
each ``key=value`` must name an input of the compiled pipeline and parse as its type, and the
values must make a valid ``acgan`` configuration (resolution, ranges, overrides; a
``classes_per_split`` larger than the source's number of classes when that number is known
here). Any of these -> one :class:`SubmitError` line naming the parameter; nothing is sent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from acgan.errors import AcganError
from acgan.io import one_line
from acgan.kfp_runtime import PARAMETERS, build_config, config_keys

DEFAULT_PACKAGE = Path(__file__).with_name("acgan.yaml")

# KFP IR parameter types -> what a value must parse as.
_TYPE_NAMES = {
    "STRING": "a string",
    "NUMBER_INTEGER": "an integer",
    "NUMBER_DOUBLE": "a number",
    "BOOLEAN": "true or false",
    "LIST": "a JSON list",
    "STRUCT": "a JSON object",
}
# Classes per source where that is known without the data (imagefolder: only at ingest).
_TORCHVISION_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100}


class SubmitError(AcganError):
    """A pipeline parameter, the compiled package or the endpoint is unusable."""


@dataclass(frozen=True)
class Submitted:
    run_id: str
    url: str
    arguments: dict[str, Any]


def parse_params(items: Sequence[str]) -> dict[str, str]:
    """``["steps=50", ...]`` -> ``{"steps": "50"}`` (values still text; see :func:`validate`)."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise SubmitError(f"--param {item!r}: expected NAME=VALUE, e.g. --param steps=2000")
        if name in out:
            raise SubmitError(f"--param {name}: given twice; give each parameter once")
        out[name] = value
    return out


def pipeline_inputs(package: str | Path = DEFAULT_PACKAGE) -> dict[str, dict[str, Any]]:
    """The compiled pipeline's parameters: ``{name: {"parameterType": ..., "defaultValue":
    ...}}`` from ``root.inputDefinitions`` of the IR YAML's first document."""
    path = Path(package)
    try:
        spec = next(yaml.safe_load_all(path.read_text()))
        params = spec["root"]["inputDefinitions"]["parameters"]
    except (OSError, yaml.YAMLError, StopIteration, KeyError, TypeError) as exc:
        raise SubmitError(
            f"{path}: not a compiled pipeline ({one_line(exc)}); run `acgan compile`"
        ) from exc
    return {str(k): dict(v) for k, v in params.items()}


def _coerce(name: str, raw: Any, kind: str) -> Any:
    """One parameter's text (or an already typed value) -> the type the pipeline declares."""
    want = _TYPE_NAMES.get(kind, kind)
    bad = SubmitError(f"--param {name}={raw}: expected {want} (the pipeline's {name} is {kind})")
    if not isinstance(raw, str):  # a typed value (Python callers, defaults)
        ok = {
            "STRING": str,
            "NUMBER_INTEGER": int,
            "NUMBER_DOUBLE": int | float,
            "BOOLEAN": bool,
            "LIST": list,
            "STRUCT": dict,
        }[kind]
        if isinstance(raw, bool) and kind in ("NUMBER_INTEGER", "NUMBER_DOUBLE"):
            raise bad
        if not isinstance(raw, ok):
            raise bad
        return float(raw) if kind == "NUMBER_DOUBLE" else raw
    text = raw.strip()
    try:
        if kind == "STRING":
            return raw
        if kind == "NUMBER_INTEGER":
            return int(text, 10)
        if kind == "NUMBER_DOUBLE":
            return float(text)
        if kind == "BOOLEAN":
            lowered = text.lower()
            if lowered not in ("true", "false"):
                raise bad
            return lowered == "true"
        value = json.loads(text)
    except ValueError:
        raise bad from None
    if not isinstance(value, list if kind == "LIST" else dict):
        raise bad
    return value


def validate(params: Mapping[str, Any], package: str | Path = DEFAULT_PACKAGE) -> dict[str, Any]:
    """Check names, types and meaning of ``params`` against the compiled pipeline; return
    the typed arguments (only those given: the server fills in the defaults)."""
    inputs = pipeline_inputs(package)
    typed: dict[str, Any] = {}
    for name, raw in params.items():
        if name not in inputs:
            raise SubmitError(
                f"--param {name}: the pipeline has no such parameter (known: "
                f"{', '.join(sorted(inputs))})"
            )
        typed[name] = _coerce(name, raw, str(inputs[name]["parameterType"]))
    full = {n: spec.get("defaultValue") for n, spec in inputs.items()} | typed
    check_config(full)
    return typed


def check_config(arguments: Mapping[str, Any]) -> Any:
    """Build the run's ``acgan`` configuration from the pipeline arguments exactly as the
    ingest task will (same function), so a bad value fails here rather than in the cluster."""
    from acgan.data import synthetic

    values = dict(arguments)
    for p in PARAMETERS:
        # The IR stores integer defaults as YAML numbers that may come back as floats.
        value = values.get(p.name)
        if p.type is int and isinstance(value, float) and value.is_integer():
            values[p.name] = int(value)
    try:
        cfg = build_config(values, dict(os.environ))
    except AcganError as exc:
        # Name the parameter the user gave; the config's message names the key it sets.
        text = str(exc)
        name = next(
            (p for p, key in config_keys().items() if text.startswith(f"{key}:")), "overrides"
        )
        raise SubmitError(f"--param {name}: {text}") from exc
    known = {"synthetic": len(synthetic.CLASS_NAMES), **_TORCHVISION_CLASSES}
    n = len(cfg.data.classes) if cfg.data.classes else known.get(cfg.data.source)
    # The split stage checks the same (acgan.data.splits.plan_splits) once the data is in;
    # here it is checked without importing torch, for the sources whose classes are known.
    k = cfg.split.classes_per_split
    if n is not None and cfg.split.classes is None and k > n:
        raise SubmitError(
            f"--param classes_per_split: {k} is larger than the {n} classes of "
            f"{cfg.data.source}; use at most {n}"
        )
    for group in cfg.split.classes or []:
        for c in group:
            if n is not None and c >= n:
                raise SubmitError(
                    f"--param overrides: split.classes names class {c}, but {cfg.data.source} "
                    f"has {n} classes (0..{n - 1}); fix the list"
                )
    return cfg


HEALTHZ = "/apis/v2beta1/healthz"


def check_endpoint(endpoint: str, timeout: float = 10.0) -> str:
    """The KFP API base URL, after one quick request to its health endpoint: an unreachable
    host or something that is not the KFP API is a one-line error (the kfp client would retry
    for half a minute and print tracebacks). 401/403 pass: the client brings the credentials."""
    import urllib.error
    import urllib.request

    if not endpoint.startswith(("http://", "https://")):
        raise SubmitError(
            f"--endpoint {endpoint}: not a URL; use http(s)://HOST[:PORT] of the KFP API"
        )
    host = endpoint.rstrip("/")
    try:
        with urllib.request.urlopen(host + HEALTHZ, timeout=timeout):
            pass
    except urllib.error.HTTPError as exc:
        if exc.code not in (401, 403):
            raise SubmitError(
                f"--endpoint {host}: answers HTTP {exc.code} on {HEALTHZ}, so it is not a "
                "KFP API; use the pipelines API address (e.g. http://localhost:8080 after "
                "`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`)"
            ) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SubmitError(
            f"--endpoint {host}: not reachable ({one_line(reason)}); check the URL and that "
            "the cluster (or your port-forward) is up"
        ) from exc
    return host


def submit(
    endpoint: str,
    params: Mapping[str, Any],
    package: str | Path = DEFAULT_PACKAGE,
    experiment: str = "acgan",
    run_name: str | None = None,
    namespace: str | None = None,
) -> Submitted:
    """Validate offline, then create a run of ``package`` on ``endpoint``."""
    arguments = validate(params, package)
    host = check_endpoint(endpoint)
    import logging
    import warnings

    import kfp

    # The kfp client logs each failed retry with a traceback on the root logger; the one-line
    # error below says what matters.
    logging.disable(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="kfp")
    try:
        client = kfp.Client(host=host, namespace=namespace)
        result = client.create_run_from_pipeline_package(
            str(package),
            arguments=arguments,
            run_name=run_name,
            experiment_name=experiment,
            namespace=namespace,
        )
    except Exception as exc:  # urllib3 / kfp_server_api errors: one line, never a traceback
        raise SubmitError(
            f"--endpoint {host}: submission failed ({one_line(exc)}); check the URL, "
            "that the KFP API answers there, and your access"
        ) from exc
    finally:
        logging.disable(logging.NOTSET)
    return Submitted(str(result.run_id), f"{host}/#/runs/details/{result.run_id}", arguments)
