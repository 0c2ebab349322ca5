"""Exceptions a user can act on.

Every error the core raises for bad input is an :class:`AcganError` whose message is one line
naming the input and what to do. The CLI prints that line and exits with status 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class AcganError(Exception):
    """Base class: bad input or environment, with a one-line actionable message."""


class ConfigError(AcganError):
    """A key in params.yaml (or an override) is unknown, mistyped or out of range."""


class DataError(AcganError):
    """A dataset, shard, manifest or split file is missing, corrupt or inconsistent."""


class CheckpointError(AcganError):
    """A checkpoint is missing, truncated, tampered with, or does not match the config."""


class TrackingError(AcganError):
    """The MLflow tracking server or artifact store could not be used."""


class RegistryError(AcganError):
    """Registering, aliasing or loading a registered model failed."""
