"""Exceptions a user can act on.

Every error the core raises for bad input is an :class:`AcganError` whose message is one line
naming the input and what to do. The CLI prints that line and exits with status 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re


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


# scheme://user:password@host -> scheme://***@host. Matches inside any text (an error line
# quoting a URL, a params value) as well as a bare URI; the host and path stay readable.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#\s'\"]+)@")


def mask_credentials(text: str) -> str:
    """``text`` with the user-info of every URI in it replaced by ``***``.

    The one helper for everything that records or prints a URI (MLflow params, config.json,
    checkpoints, registration.json, ``acgan config``, error lines): a tracking URI such as
    ``https://user:token@mlflow.example.com`` must never end up in a file, a run or a log.
    """
    return _USERINFO.sub(r"\g<scheme>***@", text)


def strip_credentials(uri: str) -> str:
    """``uri`` without its user-info, for a link or a command a user copies (a masked ``***``
    would not work there; the user's own MLFLOW_TRACKING_USERNAME/PASSWORD or browser do)."""
    return _USERINFO.sub(r"\g<scheme>", uri)
