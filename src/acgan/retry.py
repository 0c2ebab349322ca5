"""The one retry layer for every MLflow and model-registry call (:class:`Retry`).

It lives beside the tracking adapter (:mod:`acgan.tracking`), which is the only module that
imports MLflow; this module sets MLflow's own HTTP retry settings for the duration of a call
and imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from acgan.errors import AcganError, TrackingError, mask_credentials
from acgan.io import one_line

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_DEADLINE_S = 30.0  # tracking.deadline_s's default: what a call may take, retries included
MIN_ATTEMPT_S = 1.0  # a retry starts only with at least this much of the deadline left

# MLflow error codes that no retry will fix.
PERMANENT = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    "RESOURCE_DOES_NOT_EXIST",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "INVALID_STATE",
    "BAD_REQUEST",
}
# MLflow retries failed HTTP requests itself (7 times, with backoff, 120 s timeout each):
# wrapped in retries of our own that multiplied to ~1,000 s against a dead server. Inside
# :class:`Retry` MLflow makes one attempt per request, which waits at most what is left.
_HTTP_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
_HTTP_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
# MLflow prints "View run ... at: <tracking URI>/#/..." on stdout whenever a run ends: with
# user-info in the URI that is the password on the terminal (and the CLI says where runs are).
_NO_URL = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


@contextlib.contextmanager
def _one_http_attempt(timeout_s: float) -> Iterator[None]:
    """MLflow's own HTTP retries off, its request timeout at ``timeout_s`` and its run-URL
    printing off in the block (MLflow reads all three per call), restored afterwards."""
    saved = {k: os.environ.get(k) for k in (_HTTP_RETRIES, _HTTP_TIMEOUT, _NO_URL)}
    os.environ[_HTTP_RETRIES] = "0"
    os.environ[_HTTP_TIMEOUT] = str(max(1, math.ceil(timeout_s)))
    os.environ[_NO_URL] = "true"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Retry:
    """The one retry layer for every MLflow and registry call: attempts with exponential
    backoff until the call succeeds, an error no retry fixes (:data:`PERMANENT`), ``attempts``
    (when given) or ``deadline_s`` seconds in all — then one :attr:`error` line. Each attempt's
    HTTP requests wait at most the time left, so a dead or silent server fails within the
    deadline."""

    error: type[AcganError] = TrackingError
    hint = (
        "check tracking.uri / MLFLOW_TRACKING_URI and that the server and its artifact store are up"
    )

    def __init__(
        self,
        where: str,
        deadline_s: float = DEFAULT_DEADLINE_S,
        attempts: int | None = None,
        backoff_s: float = 0.5,
        hint: str | None = None,
        error: type[AcganError] | None = None,
        service: str = "MLflow",
    ) -> None:
        """``service`` names what failed in the error line (``MLflow``, ``model registry``)."""
        self.where, self.deadline_s = mask_credentials(where), float(deadline_s)
        self.service = service
        self.attempts, self.backoff_s = attempts, float(backoff_s)
        self.hint, self.error = hint or self.hint, error or self.error

    def message(self, what: str, tries: int, seconds: float, exc: BaseException) -> str:
        return (
            f"{self.service} at {self.where}: {what} failed after {tries} attempt(s) in "
            f"{seconds:.1f} s ({one_line(exc)}); {self.hint}"
        )

    def __call__(self, what: str, fn: Callable[[], T]) -> T:
        start, tries = time.monotonic(), 0
        while True:
            left = self.deadline_s - (time.monotonic() - start)
            try:
                with _one_http_attempt(left):
                    return fn()
            except AcganError:
                raise
            except Exception as exc:  # MlflowException, requests and boto errors
                tries += 1
                elapsed = time.monotonic() - start
                left = self.deadline_s - elapsed
                permanent = getattr(exc, "error_code", None) in PERMANENT
                if permanent or tries == self.attempts or left <= MIN_ATTEMPT_S:
                    raise self.error(self.message(what, tries, elapsed, exc)) from exc
                delay = min(self.backoff_s * 2 ** (tries - 1), left - MIN_ATTEMPT_S)
                # quiet: a call that fails for good says so in one line, at the end
                log.debug("%s failed (%s); retrying in %.1f s", what, one_line(exc), delay)
                time.sleep(delay)


__all__ = ["DEFAULT_DEADLINE_S", "MIN_ATTEMPT_S", "PERMANENT", "Retry"]
