"""Typed, frozen configuration.

``params.yaml`` holds only overrides; every default lives here. :func:`load` turns the file
(plus ``key=value`` overrides from the command line) into one frozen :class:`Config` and rejects
unknown keys, wrong types and out-of-range values with a one-line :class:`ConfigError` that
names the key.

Field metadata carries the validation rules: ``choices`` (allowed values), ``min``/``max``
(inclusive bounds, also applied to list items), and ``doc`` (shown by ``acgan config``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from acgan.config.sections import (
    SOURCES,
    Config,
    DataConfig,
    EvalConfig,
    ModelConfig,
    MonitorConfig,
    RegistryConfig,
    SplitConfig,
    TrackingConfig,
    TrainConfig,
)
from acgan.errors import ConfigError

# The sections live in acgan.config.sections; ``from acgan.config import TrainConfig`` works.
__all__ = [
    "SOURCES", "Config", "DataConfig", "EvalConfig", "ModelConfig", "MonitorConfig",
    "RegistryConfig", "SplitConfig", "TrackingConfig", "TrainConfig", "describe", "from_dict",
    "load", "parse_override", "recipe_file", "recipe_names", "replace",
]  # fmt: skip

_SECTION_TYPES = {
    "data": DataConfig,
    "split": SplitConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "monitor": MonitorConfig,
    "eval": EvalConfig,
    "registry": RegistryConfig,
    "tracking": TrackingConfig,
}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " | ".join(_type_name(a) for a in args) + " | null"
    if origin is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, tp: Any, value: Any, rules: dict[str, Any]) -> Any:
    """Check ``value`` against type ``tp`` and the field's rules; return the clean value."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(key, inner, value, rules)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(f"{key}[{i}]", item_tp, v, rules) for i, v in enumerate(value)]
    if tp is float and isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }
    if tp in ok and not ok[tp](value):
        raise ConfigError(f"{key}: expected {expected[tp]}, got {value!r}")
    if tp is float:
        value = float(value)
        if not math.isfinite(value):  # every bound check below is false for NaN
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    choices = rules.get("choices")
    if choices is not None and value not in choices:
        allowed = " | ".join(str(c) for c in choices)
        raise ConfigError(f"{key}: must be one of {allowed}, got {value!r}")
    lo, hi = rules.get("min"), rules.get("max")
    if lo is not None and value < lo:
        raise ConfigError(f"{key}: must be >= {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key}: must be <= {hi}, got {value!r}")
    return value


def _build_section(name: str, raw: Any, source: str) -> Any:
    cls = _SECTION_TYPES[name]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: section '{name}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: unknown key '{name}.{key}' (known: {known})")
    kwargs = {
        k: _coerce(f"{name}.{k}", hints[k], v, dict(fields[k].metadata)) for k, v in raw.items()
    }
    return cls(**kwargs)


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (the
    plain loader silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in seen:
                raise ConfigError(
                    f"{self.name}:{line}: key '{key}' is given twice (first on line "
                    f"{seen[key]}); keep one"
                )
            if isinstance(key, typing.Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _yaml_error(where: str, exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line caret message as one ``file:line:col: problem`` line."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or type(exc).__name__
    at = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark is not None else where
    return f"{at}: not valid YAML ({problem}); fix the file"


def _read_yaml(p: Path) -> Any:
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the file as UTF-8"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the params file ({exc.strerror}); check it") from exc
    loader = _StrictLoader(text)
    loader.name = str(p)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(str(p), exc)) from exc
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.steps=50"`` -> ``("train.steps", 50)``; the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or ("." not in key and key.strip() != "recipe"):
        raise ConfigError(f"override '{text}': expected section.key=value, e.g. train.steps=50")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc.problem})") from exc


def from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    for name in raw:
        if name not in _SECTION_TYPES and name != "recipe":
            known = ", ".join([*_SECTION_TYPES, "recipe"])
            raise ConfigError(f"{source}: unknown section '{name}' (known: {known})")
    recipe = raw.get("recipe")
    if recipe is not None and not isinstance(recipe, str):
        raise ConfigError(f"{source}: recipe: expected a preset name or YAML path, got {recipe!r}")
    cfg = Config(
        **{n: _build_section(n, raw.get(n), source) for n in _SECTION_TYPES}, recipe=recipe
    )
    _cross_check(cfg, source)
    return cfg


def _cross_check(cfg: Config, source: str) -> None:
    """Rules that involve more than one key."""
    if cfg.split.classes is not None:
        seen: set[int] = set()
        for i, group in enumerate(cfg.split.classes):
            if not group:
                raise ConfigError(f"{source}: split.classes[{i}] is empty; list class indices")
            dup = seen.intersection(group)
            if dup or len(set(group)) != len(group):
                raise ConfigError(
                    f"{source}: split.classes[{i}] repeats class {sorted(dup or group)[0]}; "
                    "each class belongs to one split"
                )
            seen.update(group)
    if len(set(cfg.split.ids)) != len(cfg.split.ids):
        raise ConfigError(f"{source}: split.ids has duplicates: {cfg.split.ids}")
    if cfg.registry.model_name is not None and re.search(r"['\"`]", cfg.registry.model_name):
        # the registry is searched by name, and MLflow's filter strings cannot escape quotes
        raise ConfigError(
            f"{source}: registry.model_name {cfg.registry.model_name!r} has a quote character; "
            "name the model without ' \" or `"
        )


RECIPES_DIR = Path(__file__).parent.parent / "recipes"


def recipe_names() -> list[str]:
    """The built-in presets (``src/acgan/recipes/<name>.yaml``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _read_params(p: Path) -> dict[str, Any]:
    loaded = _read_yaml(p) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: expected a mapping of sections, got {type(loaded).__name__}")
    return {k: dict(v) if isinstance(v, dict) else v for k, v in loaded.items()}


def _layer(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, key by key within each section."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k].update(v)
        else:
            out[k] = dict(v) if isinstance(v, dict) else v
    return out


def recipe_file(recipe: str) -> Path:
    """A preset name (``paper``) or the path of a YAML file of overrides."""
    if not isinstance(recipe, str) or not recipe:
        raise ConfigError(f"recipe: expected a preset name or a YAML path, got {recipe!r}")
    if "/" not in recipe and not recipe.endswith((".yaml", ".yml")):
        path = RECIPES_DIR / f"{recipe}.yaml"
        if not path.is_file():
            known = ", ".join(recipe_names())
            raise ConfigError(
                f"recipe: unknown preset {recipe!r} (known: {known}); or give a YAML file path"
            )
        return path
    if not Path(recipe).is_file():
        raise ConfigError(f"recipe: {recipe}: file not found; give a preset name or a YAML path")
    return Path(recipe)


def load(
    path: str | Path | typing.Sequence[str | Path] | None = "params.yaml",
    overrides: typing.Sequence[str] = (),
    *,
    missing_ok: bool = True,
) -> Config:
    """Read ``path`` (YAML, overrides only; several files layer left to right) and
    ``key=value`` overrides into a :class:`Config`.

    A ``recipe: NAME`` key (in a file, or ``--set recipe=NAME``) layers that preset's
    overrides beneath the files: defaults < recipe < params files < ``--set``.
    A missing file is an error unless ``missing_ok`` and it is the default ``params.yaml``
    (then the built-in defaults apply).
    """
    paths = [] if path is None else [path] if isinstance(path, str | Path) else list(path)
    raw: dict[str, Any] = {}
    source = ", ".join(map(str, paths)) or "defaults"
    for item in paths:
        p = Path(item)
        if p.is_dir():
            raise ConfigError(f"{p}: is a directory; pass --params with a YAML file")
        if p.exists():
            raw = _layer(raw, _read_params(p))
        elif not (missing_ok and p.name == "params.yaml"):
            raise ConfigError(f"{p}: params file not found; pass --params with an existing file")
    for text in overrides:
        key, value = parse_override(text)
        if key == "recipe":
            raw["recipe"] = value
            continue
        section, _, name = key.partition(".")
        if section not in _SECTION_TYPES:
            raise ConfigError(f"override '{text}': unknown section '{section}'")
        sec = raw.setdefault(section, {})
        if not isinstance(sec, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping")
        sec[name] = value
    if raw.get("recipe") is not None:
        preset_path = recipe_file(raw["recipe"])
        preset = _read_params(preset_path)
        if "recipe" in preset:
            raise ConfigError(f"{preset_path}: a recipe cannot name another recipe")
        raw = _layer(preset, raw)
    return from_dict(raw, source)


def describe() -> list[tuple[str, str, Any, str]]:
    """``(key, type, default, doc)`` for every key — used by ``acgan config --list``."""
    presets = ", ".join(recipe_names())
    doc = f"preset layered beneath the params files: {presets}, or a YAML path"
    rows = [("recipe", "str | null", None, doc)]
    for name, cls in _SECTION_TYPES.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append(
                (f"{name}.{f.name}", _type_name(hints[f.name]), default, f.metadata.get("doc", ""))
            )
    return rows


def replace(cfg: Config, **changes: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with some keys of some sections changed, validated like a file."""
    d = cfg.to_dict()
    for section, keys in changes.items():
        d[section].update(keys)
    return from_dict(d, "config")
