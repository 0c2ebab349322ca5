"""The one device resolver: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` -> a ``torch.device``.

Training (``train.device``), serving (the pyfunc model's ``device``), ``acgan generate`` and the
benchmarks all resolve a device name here, so ``auto`` means the same everywhere and asking for
CUDA on a machine without one is the same one-line error.
"""

from __future__ import annotations

import torch

from acgan.errors import ConfigError


def resolve_device(name: str, key: str = "device") -> torch.device:
    """``auto`` -> CUDA when visible, else CPU; a CUDA device without one visible, or a name
    torch does not know, is a :class:`ConfigError` naming ``key`` (the setting it came from)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"{key}: {name} requested but no CUDA device is visible; use {key}=auto or cpu"
        )
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"{key}: {name!r} is not a device; use auto, cpu or cuda") from exc
