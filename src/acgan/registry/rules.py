"""The registration rules, free of MLflow: the champion decision and bounded retries."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from acgan.checkpoint import one_line
from acgan.errors import AcganError, RegistryError

log = logging.getLogger(__name__)
T = TypeVar("T")

# MLflow error codes that no retry will fix.
PERMANENT = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "INVALID_STATE",
}


@dataclass(frozen=True)
class Decision:
    promote: bool  # move @champion to the new version
    reason: str
    already: bool = False  # the version already holds @champion (a repeated registration)

    @property
    def champion(self) -> bool:
        return self.promote or self.already


def decide(
    *,
    gate_passed: bool,
    gate_reasons: list[str],
    metric: str,
    greater_is_better: bool,
    version: int,
    figure: float | None,
    champion_version: int | None,
    champion_figure: float | None,
) -> Decision:
    """The champion rule, as a pure function (the registry only executes its answer)."""
    if not gate_passed:
        return Decision(False, "gate failed: " + ("; ".join(gate_reasons) or "no reason given"))
    if champion_version == version:
        return Decision(False, f"version {version} already is the champion", already=True)
    if champion_version is None:
        return Decision(True, "first version to pass the gate")
    if figure is None:
        return Decision(False, f"no {metric} figure to compare with champion v{champion_version}")
    if champion_figure is None:
        return Decision(True, f"champion v{champion_version} has no {metric} figure")
    better = figure > champion_figure if greater_is_better else figure < champion_figure
    word = "beats" if better else ("ties" if figure == champion_figure else "does not beat")
    return Decision(
        better,
        f"{metric} {figure:.6g} {word} champion v{champion_version} ({champion_figure:.6g})",
    )


class Retrier:
    """Bounded retries with exponential backoff; then one :class:`RegistryError` line."""

    def __init__(self, attempts: int, backoff_s: float, where: str) -> None:
        self.attempts, self.backoff_s, self.where = attempts, backoff_s, where

    def __call__(self, what: str, fn: Callable[[], T]) -> T:
        for i in range(self.attempts):
            try:
                return fn()
            except AcganError:
                raise
            except Exception as exc:  # MlflowException, requests and boto errors
                code = getattr(exc, "error_code", None)
                if code in PERMANENT or i == self.attempts - 1:
                    raise RegistryError(
                        f"model registry at {self.where}: {what} failed after {i + 1} "
                        f"attempt(s) ({one_line(exc)[:200]}); check that the MLflow server and "
                        "its artifact store are up, then re-run `acgan register`"
                    ) from exc
                delay = self.backoff_s * 2**i
                log.warning("%s failed (%s); retrying in %.1f s", what, one_line(exc), delay)
                time.sleep(delay)
        raise AssertionError("unreachable")
