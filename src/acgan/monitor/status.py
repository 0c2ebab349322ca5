"""The one vocabulary of health states: what each status code means, how every page shows it.

The monitor writes codes into ``monitor.json`` (per class and per split); the monitor report,
the evaluation report, the MLflow tags and the registry's ``acgan.split_health`` all render
them through :func:`describe`, so a state means the same thing on every page. A code that is
not listed here (a newer monitor, a hand-edited file) is still shown, as itself, in grey.
The reports' other shared pieces live here too: the status badge and legend, and the line of
links to their MLflow runs.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Class states (the collapse rule, acgan.monitor.detector) and split states (the monitor stage).
HEALTHY = "healthy"
NOT_DIVERSE = "not_diverse"
COLLAPSING = "collapsing"
COLLAPSED = "collapsed"
NOT_CONVERGED = "not_converged"
STOPPED_EARLY = "stopped_early"
RETRAINED = "retrained"
EXCLUDED = "excluded"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Status:
    code: str  # what monitor.json, the tags and the manifests hold
    label: str  # a few words for headlines and tables
    meaning: str  # one sentence: what it says about the generator
    colour: str  # CSS colour of its badge (HTML reports)
    good: bool  # nothing for a user to do


_ALL = (
    Status(HEALTHY, "healthy", "as diverse as the real data at the last check", "#1a7f37", True),
    Status(
        NOT_CONVERGED,
        "not converged",
        "never reached the real data's diversity (or hovers above it without a collapse trend)",
        "#9a6700",
        False,
    ),
    Status(
        COLLAPSING,
        "collapsing",
        "was diverse, now rising above its threshold (not yet for `monitor.patience` checks)",
        "#bc4c00",
        False,
    ),
    Status(
        COLLAPSED,
        "collapsed",
        "was diverse, then stayed above its threshold, rising, for `monitor.patience` checks",
        "#cf222e",
        False,
    ),
    Status(
        RETRAINED,
        "retrained",
        "collapsed in training, then retrained once with a new seed; the retrained generator "
        "is used",
        "#0969da",
        True,
    ),
    Status(EXCLUDED, "excluded", "left out of the ensemble (see the reason)", "#cf222e", False),
    Status(UNKNOWN, "unknown", "no monitor verdict (the monitor did not run)", "#6e7781", False),
    # the names earlier monitors wrote (monitor.json files of older runs)
    Status(NOT_DIVERSE, "not diverse", "never reached the real data's diversity", "#9a6700", False),
    Status(
        STOPPED_EARLY,
        "stopped early",
        "training stopped at the last healthy checkpoint after a collapse",
        "#bc4c00",
        False,
    ),
)
STATUSES: dict[str, Status] = {s.code: s for s in _ALL}


def describe(code: str | None) -> Status:
    """The entry for ``code``; an unlisted code is shown as itself rather than hidden."""
    if code is None:
        return STATUSES[UNKNOWN]
    return STATUSES.get(code) or Status(code, code.replace("_", " "), code, "#6e7781", False)


def label(code: str | None) -> str:
    return describe(code).label


def badge(code: str | None) -> str:
    """An HTML badge: the label on the status colour, its meaning as the tooltip."""
    s = describe(code)
    return (
        f"<span class='status' title='{html.escape(s.meaning, quote=True)}' "
        f"style='background:{s.colour}'>{html.escape(s.label)}</span>"
    )


def tally(codes: Iterable[str]) -> str:
    """``"5 of 5 classes not converged"`` / ``"3 healthy, 2 collapsing (of 5 classes)"``."""
    counts = Counter(codes)
    total = sum(counts.values())
    if not total:
        return "no classes"
    if len(counts) == 1:
        code = next(iter(counts))
        return f"{total} of {total} class{'es' if total != 1 else ''} {label(code)}"
    ordered = sorted(counts.items(), key=lambda kv: _ORDER.get(kv[0], len(_ORDER)))
    parts = ", ".join(f"{n} {label(code)}" for code, n in ordered)
    return f"{parts} (of {total} classes)"


_ORDER = {s.code: i for i, s in enumerate(_ALL)}

BADGE_CSS = (
    ".status { color: white; padding: 0.05em 0.45em; border-radius: 0.3em; "
    "font-size: 0.9em; white-space: nowrap; }"
)


def legend_html(codes: Iterable[str]) -> str:
    """A definition list of the statuses that appear on a page: badge, then meaning."""
    seen = list(dict.fromkeys(codes))
    items = "".join(f"<dt>{badge(c)}</dt><dd>{html.escape(describe(c).meaning)}</dd>" for c in seen)
    return f"<dl class='legend'>{items}</dl>" if items else ""


def links_html(links: Mapping[str, str | None], labels: Mapping[str, str]) -> str:
    """The reports' MLflow line: a link per ``labels`` key present in ``links``, then how to
    open the UI (``links["hint"]``); empty when tracking was off."""
    parts = [
        f"<a href='{html.escape(str(links[key]), quote=True)}'>{html.escape(text)}</a>"
        for key, text in labels.items()
        if links.get(key)
    ]
    if not parts:
        return ""
    hint = f" ({html.escape(str(links['hint']))})" if links.get("hint") else ""
    return f"<p>MLflow: {' &middot; '.join(parts)}{hint}</p>"


__all__ = [
    "BADGE_CSS",
    "COLLAPSED",
    "COLLAPSING",
    "EXCLUDED",
    "HEALTHY",
    "NOT_CONVERGED",
    "NOT_DIVERSE",
    "RETRAINED",
    "STATUSES",
    "STOPPED_EARLY",
    "UNKNOWN",
    "Status",
    "badge",
    "describe",
    "label",
    "legend_html",
    "links_html",
    "tally",
]
