"""Pictures of the monitor stage: MS-SSIM vs step per split, and a self-contained HTML report.

The plot draws each class's curve (checks abandoned by a rollback or after a stop dotted and
faded), each class's threshold as a dashed line and its real-image reference as a thin dotted
line in the class's colour, the final measurement of the delivered weights as a star, and
collapse events as crosses.
The HTML report embeds the plots as base64 PNGs so it can be opened anywhere (the KFP HTML
artifact, an MLflow artifact view, a mail attachment).
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from acgan import html as html_page
from acgan.io import atomic_write_bytes
from acgan.monitor import status


def plot_split(rec: Mapping[str, Any], path: Path) -> Path:
    """PNG of one split's MS-SSIM curves (a ``monitor.json`` split record plus its curve)."""
    import matplotlib

    matplotlib.use("Agg")  # no display in a pod or a CI runner
    # Class names are plain text: a '$' in one must not start matplotlib's math mode.
    with matplotlib.rc_context(NO_MATH):
        return _plot_split(rec, path)


NO_MATH = {"text.parse_math": False}


def _plot_split(rec: Mapping[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    colors = plt.get_cmap("tab10")
    curve = rec.get("curve") or []
    for i, (name, cls) in enumerate(rec["classes"].items()):
        color = colors(i % 10)
        kept = [(e["step"], e["values"][name]) for e in curve if not e.get("discarded")]
        if kept:
            ax.plot(*zip(*kept, strict=True), marker="o", ms=3, color=color, label=name)
        for segment in _abandoned(curve, name):
            ax.plot(*zip(*segment, strict=True), ls=":", marker="o", ms=4, mfc="none",
                    color=color, alpha=0.6)  # fmt: skip
        ax.plot(
            [rec["step"]],
            [cls["final_msssim"]],
            marker="*",
            ms=11,
            color=color,
            label=None if kept else name,
        )
        if cls.get("reference") is not None:
            ax.axhline(cls["reference"], color=color, lw=0.6, ls=(0, (1, 3)))
        ax.axhline(cls["threshold"], color=color, lw=1.0, ls="--", alpha=0.8)
    for e in rec.get("events", []):
        ax.plot([e["step"]], [e["value"]], marker="x", ms=9, mew=2, color="black")
    ax.plot([], [], color="grey", ls="--", label="threshold (per class)")
    ax.plot([], [], color="grey", ls=(0, (1, 3)), lw=0.6, label="real reference")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("training step")
    ax.set_ylabel("mean pairwise MS-SSIM of samples")
    ax.set_ylim(0.0, 1.02)
    title = f"split {rec['split_id']}: {status.label(rec['status'])}"
    if rec.get("rollbacks"):
        title += f" ({rec['rollbacks']} rollback{'s' if rec['rollbacks'] != 1 else ''})"
    tally = status.tally(c["status"] for c in rec["classes"].values())
    ax.set_title(f"{title}: {tally}\n(x: collapse event, *: delivered weights)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _abandoned(curve: list[dict[str, Any]], name: str) -> list[list[tuple[int, float]]]:
    """The runs of checks a rollback (or a stop) abandoned, one per branch, each starting at
    the kept check it branched off, so the way up to the collapse stays visible."""
    segments: list[list[tuple[int, float]]] = []
    last_kept: tuple[int, float] | None = None
    branch = None
    for e in curve:
        point = (e["step"], e["values"][name])
        if not e.get("discarded"):
            last_kept, branch = point, None
            continue
        if e.get("branch") != branch:
            branch = e.get("branch")
            start = [p for p in (last_kept,) if p is not None and p[0] < point[0]]
            segments.append(start)
        segments[-1].append(point)
    return segments


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _split_section(sid: str, rec: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{_esc(name)}</td><td>{c['final_msssim']:.4f}</td>"
        f"<td>{'' if c['reference'] is None else format(c['reference'], '.4f')}</td>"
        f"<td>{c['threshold']:.4f}</td><td>{status.badge(c['status'])}</td></tr>"
        for name, c in rec["classes"].items()
    )
    events = "".join(
        f"<li>step {e['step']}: {_esc(e['class'])} MS-SSIM {e['value']:.3f} &gt; "
        f"{e['threshold']:.3f} &rarr; {_esc(e['action'])}"
        + (f" (restored step {e['restored_step']})" if e.get("restored_step") is not None else "")
        + (f" [{_esc(e['reason'])}]" if e.get("reason") else "")
        + "</li>"
        for e in rec.get("events", [])
    )
    extra = ""
    if rec.get("excluded"):
        extra += f"<p class='bad'>Excluded from the ensemble: {_esc(rec['excluded'])}</p>"
    if rec.get("retrained"):
        r = rec["retrained"]
        first = r.get("first_attempt") or {}
        gone = ", ".join(first.get("collapsed_classes") or []) or "?"
        extra += (
            f"<p>Retrained once in training with a new seed (the first attempt left "
            f"{_esc(gone)} collapsed at step {_esc(str(first.get('step', '?')))}) &rarr; "
            f"<code>{_esc(r['model_dir'])}</code>: {status.badge(r['status'])}</p>"
        )
    # The headline carries the class tally, so it never reads "healthy" above a table of
    # classes that are not.
    tally = status.tally(c["status"] for c in rec["classes"].values())
    return (
        f"<h2>Split {_esc(sid)}: {status.badge(rec['status'])} "
        f"<small>{_esc(tally)}</small></h2>"
        f"<p><code>{_esc(rec['model_dir'])}</code>, step {rec['step']}"
        f"{', stopped early' if rec.get('stopped_early') else ''}, "
        f"{rec.get('rollbacks', 0)} rollback(s)"
        f"{'' if rec.get('monitored') else ', no in-training curve (monitor was off)'}</p>"
        f"<table><tr><th>class</th><th>final MS-SSIM</th><th>real reference</th>"
        f"<th>threshold</th><th>status</th></tr>{rows}</table>"
        + (f"<h3>Events</h3><ul>{events}</ul>" if events else "")
        + extra
    )


def write_html(
    summary: Mapping[str, Any],
    plots: Mapping[str, Path],
    path: Path,
    links: Mapping[str, str | None] | None = None,
) -> Path:
    """The stage's report: settings, per-split tables and events, the plots inline."""
    images = "".join(html_page.figure(label, p) for label, p in plots.items())
    splits = summary["splits"]
    sections = "".join(_split_section(sid, rec) for sid, rec in splits.items())
    codes = [rec["status"] for rec in splits.values()]
    codes += [c["status"] for rec in splits.values() for c in rec["classes"].values()]
    members = ", ".join(str(m["split_id"]) for m in summary["members"]) or "none"
    retrain = "yes" if summary["retrain_collapsed"] else "no"
    css = f"""td, th {{ text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
h2 small {{ font-weight: normal; color: #57606a; font-size: 0.7em; }}
.bad {{ color: #a00; font-weight: bold; }}
{status.BADGE_CSS}"""
    body = f"""<h1>Collapse monitor</h1>
{status.links_html(links or {}, {"run": "the monitor's run"})}
<p>Mean pairwise MS-SSIM of samples from fixed latent codes ({_esc(summary["measure_protocol"])},
{summary["pairs"]} pairs per class), against each class's threshold
({_esc(summary["threshold_rule"])}). A class is <b>healthy</b> at or below its threshold,
<b>not_converged</b> above it (it never reached the real data's diversity, or hovers near it),
and <b>collapsed</b> when, after having been healthy, it stays above the threshold and
{summary["rise"]:g} above its own best for {summary["patience"]} consecutive check(s); checks
in the first {summary.get("warmup", 0):.0%} of training count for the status only. A split
takes its worst class's status. In-training action:
<b>{_esc(summary["action"])}</b>; retrain collapsed splits: {retrain}.</p>
<p>Ensemble members: <b>{_esc(members)}</b>; excluded: {len(summary["excluded"])}.</p>
<h2>Statuses</h2>
{status.legend_html(codes)}
{sections}
<h2>Plots</h2>
{images}
"""
    atomic_write_bytes(path, html_page.page("acgan collapse monitor", body, css).encode())
    return path
