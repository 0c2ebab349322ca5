"""The registration rules, free of MLflow: the champion decision and the registry's retry."""

from __future__ import annotations

from dataclasses import dataclass

from acgan.errors import RegistryError
from acgan.retry import DEFAULT_DEADLINE_S, PERMANENT, Retry

__all__ = ["PERMANENT", "Decision", "decide", "registry_retry"]


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


def registry_retry(
    attempts: int, backoff_s: float, where: str, deadline_s: float = DEFAULT_DEADLINE_S
) -> Retry:
    """The tracking adapter's one retry layer (:class:`~acgan.retry.Retry`, bounded by
    ``tracking.deadline_s`` and ``registry.retries``), failing with a :class:`RegistryError`
    line that says to re-run ``acgan register``."""
    return Retry(
        where,
        deadline_s,
        attempts,
        backoff_s,
        hint="check that the MLflow server and its artifact store are up, "
        "then re-run `acgan register`",
        error=RegistryError,
        service="model registry",
    )
