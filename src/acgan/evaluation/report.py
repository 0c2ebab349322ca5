"""The evaluation's pictures and report: matplotlib plots, image grids, ``dvc plots`` tables
and one self-contained HTML page (images inlined as base64, so the KFP HTML artifact and a
mailed file show everything).

Plots are drawn on ``matplotlib.figure.Figure`` with the Agg canvas, never ``pyplot``: no global
figure state, no display needed.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from acgan import html as html_page
from acgan.config import EvalConfig
from acgan.io import atomic_write_json
from acgan.metrics import suite
from acgan.models.ensemble import Ensemble
from acgan.models.sampling import labelled_grid, latents
from acgan.monitor import status
from acgan.tracking import png_bytes

GRID_COLUMNS = 10
INTERP_STEPS = 8
NN_QUANTILES = 21

# The figures of reports/eval/metrics.json (`dvc metrics show`, the parent MLflow run, the
# registry's tags); figures.json, the evaluate run and the report hold every figure. Few
# enough that `dvc metrics show`'s one row stays about 160 characters wide.
HEADLINE = (
    "judge_accuracy",
    "judge_skill",
    "diverse_fraction",
    "msssim_mean",
    "fid",
    "fid_ratio",
    "inception_score",
    "nn_l1_ratio",
)


def headline(metrics: dict[str, Any], gate: dict[str, Any]) -> dict[str, float]:
    out = {k: float(metrics[k]) for k in HEADLINE if isinstance(metrics.get(k), int | float)}
    out["gate_passed"] = float(bool(gate["passed"]))
    return out


# (file, title, caption) of every picture, in report order.
PICTURES = (
    ("samples.png", "Samples", "one row per class, each from its split's generator"),
    ("accuracy.png", "Judge accuracy per class", "samples vs held-out real images"),
    ("msssim.png", "MS-SSIM diversity", "per class: samples vs real; lower is more diverse"),
    ("resolution.png", "Resolution discriminability", "the paper's Figure 2"),
    (
        "nn_distance.png",
        "Nearest-neighbour distances",
        "each sample's distance to its nearest training image (pixel L1), against real images'",
    ),
    (
        "memorisation.png",
        "Memorisation",
        "the closest pairs per class: sample | its nearest training image",
    ),
    ("interpolation.png", "Latent interpolation", "one class per row, z0 -> z1 linearly"),
    ("class_swap.png", "Class swap", "the same z in every column, one class per row"),
)


# Class names are plain text in every plot: a '$' in one must not start matplotlib's math mode.
NO_MATH = {"text.parse_math": False}


def _render(fig: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


@matplotlib.rc_context(NO_MATH)
def training_plot(history: list[dict[str, float]]) -> np.ndarray:
    """The judge's loss and accuracies per epoch."""
    fig = Figure(figsize=(7, 3), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in history]
    ax1.plot(epochs, [r["loss"] for r in history], marker="o")
    ax1.set(title="judge loss", xlabel="epoch")
    for key in ("train_accuracy", "holdout_accuracy"):
        if history and key in history[0]:
            ax2.plot(epochs, [r[key] for r in history], marker="o", label=key.split("_")[0])
    ax2.set(title="judge accuracy", xlabel="epoch", ylim=(0, 1.02))
    ax2.legend()
    fig.tight_layout()
    return _render(fig)


def _pick(classes: list[int], k: int) -> list[int]:
    """At most ``k`` classes spread evenly over the list."""
    if len(classes) <= k:
        return list(classes)
    return (
        [classes[round(i * (len(classes) - 1) / (k - 1))] for i in range(k)]
        if k > 1
        else [classes[0]]
    )


def grids(
    ensemble: Ensemble, data: suite.EvalData, figs: suite.Figures, cfg: EvalConfig
) -> dict[str, np.ndarray]:
    """Sample, interpolation, class-swap and nearest-neighbour grids (HxWx3 uint8), one row
    per class, labelled with its name, each image at least 64 px."""
    rows = _pick(data.classes, cfg.grid_classes)
    names = [data.class_names[c] for c in rows]
    out: dict[str, np.ndarray] = {}
    per = min(GRID_COLUMNS, int((data.fake_labels == rows[0]).sum()))
    out["samples.png"] = labelled_grid(
        torch.cat([data.fake_images[data.fake_labels == c][:per] for c in rows]), per, names
    )
    dim = ensemble.latent_dim
    ends = latents(2 * len(rows), dim, cfg.seed + 1)
    t = torch.linspace(0, 1, INTERP_STEPS)[:, None]
    interp = [
        ensemble.generate(c, INTERP_STEPS, z=(1 - t) * ends[2 * i] + t * ends[2 * i + 1])
        for i, c in enumerate(rows)
    ]
    out["interpolation.png"] = labelled_grid(torch.cat(interp), INTERP_STEPS, names)
    z = latents(GRID_COLUMNS, dim, cfg.seed + 2)
    swap = [ensemble.generate(c, GRID_COLUMNS, z=z) for c in rows]
    out["class_swap.png"] = labelled_grid(torch.cat(swap), GRID_COLUMNS, names)
    pairs = [p for p in figs.tables.get("nn_pairs", []) if p[0] in rows]
    if pairs:
        k = min(len(p[1]) for p in pairs)
        tiles = [
            torch.stack([img for s, n in zip(q[:k], b[:k], strict=True) for img in (s, n)])
            for _, q, b, _ in pairs
        ]
        pair_names = [data.class_names[p[0]] for p in pairs]
        out["memorisation.png"] = labelled_grid(torch.cat(tiles), 2 * k, pair_names)
    return out


def _figure(width: float, height: float) -> Figure:
    # constrained layout keeps tick labels, axis labels and outside legends inside the image
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


@matplotlib.rc_context(NO_MATH)
def _accuracy_plot(table: list[dict[str, Any]]) -> np.ndarray:
    fig = _figure(max(5.0, 0.6 * len(table) + 2), 3.6)
    ax = fig.subplots()
    x = np.arange(len(table))
    ax.bar(x - 0.2, [r["judge_accuracy"] for r in table], 0.4, label="samples")
    ax.bar(x + 0.2, [r["real_judge_accuracy"] for r in table], 0.4, label="real (held out)")
    ax.set_xticks(x, [r["class"] for r in table], rotation=45, ha="right")
    ax.set(ylabel="judge top-1 accuracy", ylim=(0, 1.0))
    # above the axes, never over the bars
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, frameon=False)
    return _render(fig)


@matplotlib.rc_context(NO_MATH)
def _msssim_plot(table: list[dict[str, Any]], threshold: float) -> np.ndarray:
    """One row per class (names on the axis, never on top of each other): samples vs real."""
    fig = _figure(6.0, max(3.0, 0.32 * len(table) + 1.4))
    ax = fig.subplots()
    y = np.arange(len(table))
    ax.barh(y - 0.2, [r["msssim"] for r in table], 0.4, label="samples")
    ax.barh(y + 0.2, [r["msssim_real"] for r in table], 0.4, label="real")
    ax.axvline(threshold, color="r", lw=1, ls="--", label="least diverse real class")
    ax.set_yticks(y, [r["class"] for r in table])
    ax.invert_yaxis()  # first class on top, as in the tables
    ax.set(xlabel="mean pairwise MS-SSIM (lower: more diverse)", xlim=(0, 1))
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=3, frameon=False, fontsize=8)
    return _render(fig)


def _resolution_plot(rows: list[dict[str, float]]) -> np.ndarray:
    fig = _figure(4.8, 3.4)
    ax = fig.subplots()
    sides = [r["resolution"] for r in rows]
    ax.plot(sides, [r["real_accuracy"] for r in rows], marker="o", label="real (held out)")
    ax.plot(sides, [r["sample_accuracy"] for r in rows], marker="s", label="samples")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sides, [str(s) for s in sides])
    ax.set(xlabel="resolution (px, resized back)", ylabel="judge accuracy", ylim=(0, 1.05))
    ax.legend(fontsize=8)
    return _render(fig)


def _nn_plot(dist: dict[str, list[float]]) -> np.ndarray:
    fig = _figure(5.2, 3.6)
    ax = fig.subplots()
    both = [*dist.get("samples", []), *dist.get("real", [])]
    bins = np.histogram_bin_edges(both, bins=30) if both else 30  # one set of bins for both
    for key, label in (("samples", "samples"), ("real", "real (held out)")):
        if dist.get(key):
            ax.hist(dist[key], bins=bins, alpha=0.6, density=True, label=label)
    ax.set(
        xlabel="distance to the nearest training image\n(mean |pixel difference|, 0-255)",
        ylabel="density",
    )
    ax.legend(fontsize=8)
    return _render(fig)


def _quantiles(values: list[float]) -> list[float | None]:
    if not values:
        return [None] * NN_QUANTILES
    q = torch.linspace(0, 1, NN_QUANTILES, dtype=torch.float64)
    return torch.quantile(torch.tensor(values, dtype=torch.float64), q).tolist()


@matplotlib.rc_context(NO_MATH)
def write_plots(
    plot_dir: Path, figs: suite.Figures, data: suite.EvalData, images: dict[str, np.ndarray]
) -> None:
    """PNG plots and grids, plus the JSON tables ``dvc plots`` renders."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    table = [{"class": data.class_names[c], **figs.per_class[c]} for c in data.classes]
    atomic_write_json(plot_dir / "per_class.json", table)
    pictures = dict(images)
    if table and "judge_accuracy" in table[0]:
        pictures["accuracy.png"] = _accuracy_plot(table)
    if table and "msssim" in table[0]:
        pictures["msssim.png"] = _msssim_plot(table, figs.overall["msssim_real_max"])
    if "resolution" in figs.tables:
        atomic_write_json(plot_dir / "resolution.json", figs.tables["resolution"])
        pictures["resolution.png"] = _resolution_plot(figs.tables["resolution"])
    if "nn_distances" in figs.tables:
        dist = figs.tables["nn_distances"]
        s, r = _quantiles(dist["samples"]), _quantiles(dist["real"])
        rows = [
            {"quantile": i / (NN_QUANTILES - 1), "samples": s[i], "real": r[i]}
            for i in range(NN_QUANTILES)
        ]
        atomic_write_json(plot_dir / "nn_distance.json", rows)
        pictures["nn_distance.png"] = _nn_plot(dist)
    for name, arr in pictures.items():
        (plot_dir / name).write_bytes(png_bytes(arr))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def split_statuses(manifest: dict[str, Any], ensemble: Ensemble) -> list[dict[str, Any]]:
    """Each split's monitor status as the ensemble manifest records it (members and the
    excluded), for the report and the tags: the monitor's word, not a new judgement."""
    classes = {m.split_id: m.class_names for m in ensemble.members}
    rows = [
        {
            "split_id": int(m["split_id"]),
            "status": str(m.get("status") or status.UNKNOWN),
            "classes": classes.get(int(m["split_id"]), []),
            "note": "",
        }
        for m in manifest.get("members", [])
    ]
    rows += [
        {
            "split_id": int(x["split_id"]),
            "status": str(x.get("status") or status.EXCLUDED),
            "classes": [],
            "note": f"excluded from the ensemble: {x.get('reason', 'no reason given')}",
        }
        for x in manifest.get("excluded", [])
    ]
    return sorted(rows, key=lambda r: r["split_id"])


def _gate_html(gate: dict[str, Any]) -> str:
    e = html.escape
    verdict = "PASSED" if gate["passed"] else "FAILED"
    colour = "#1a7f37" if gate["passed"] else "#cf222e"
    advice = gate.get("advice") or []
    items = "".join(
        f"<li>{e(r)}"
        + (f"<br><b>What to do next:</b> {e(advice[i])}" if i < len(advice) else "")
        + "</li>"
        for i, r in enumerate(gate["reasons"])
    )
    return (
        f"<p class='gate' style='background:{colour}'>gate {verdict}</p>"
        f"<ul>{items or '<li>all thresholds met</li>'}</ul>"
    )


def _splits_html(splits: list[dict[str, Any]]) -> str:
    if not splits:
        return ""
    e = html.escape
    rows = "".join(
        f"<tr><th>split {r['split_id']}</th><td>{status.badge(r['status'])}</td>"
        f"<td>{e(', '.join(r['classes']))}</td><td>{e(r['note'])}</td></tr>"
        for r in splits
    )
    return (
        "<h2>Splits (the collapse monitor's verdict)</h2><table><tr><th>split</th>"
        f"<th>status</th><th>classes</th><th>note</th></tr>{rows}</table>"
        + status.legend_html(r["status"] for r in splits)
    )


def render_report(
    metrics: dict[str, Any],
    gate: dict[str, Any],
    protocols: dict[str, str],
    inputs: dict[str, Any],
    plot_dir: Path,
    links: dict[str, str | None],
    splits: list[dict[str, Any]],
) -> str:
    """One HTML page: gate (with what to do next), the splits' status, figures, per-class
    table, every picture inlined, protocols, inputs and links to the MLflow runs."""
    e = html.escape
    headline = "".join(
        f"<tr><th>{e(k)}</th><td>{_fmt(v)}</td></tr>"
        for k, v in metrics.items()
        if isinstance(v, int | float)
    )
    per_class = metrics.get("per_class", {})
    cols = sorted({k for v in per_class.values() for k in v})
    pc_rows = "".join(
        f"<tr><th>{e(name)}</th>"
        + "".join(f"<td>{_fmt(figs.get(k, ''))}</td>" for k in cols)
        + "</tr>"
        for name, figs in per_class.items()
    )
    pc_head = "".join(f"<th>{e(c)}</th>" for c in cols)
    pictures = []
    for file, title, caption in PICTURES:
        path = plot_dir / file
        if path.is_file():
            pictures.append(html_page.figure(caption, path, heading=title))
    protos = "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in protocols.items())
    css = f"""table {{ margin: 1em 0; font-size: 0.9em; }}
th, td {{ padding: 3px 8px; text-align: left; }}
.gate {{ color: white; padding: 0.5em 1em; display: inline-block; font-weight: bold; }}
figure {{ margin: 1em; }}
pre {{ background: #f6f8fa; padding: 1em; overflow-x: auto; }}
{status.BADGE_CSS}"""
    body = f"""<h1>AC-GAN ensemble evaluation</h1>
{status.links_html(links, {"run": "this evaluation's run", "runs": "all runs"})}
{_gate_html(gate)}
{_splits_html(splits)}
<h2>Figures</h2><table>{headline}</table>
<h2>Per class</h2><table><tr><th>class</th>{pc_head}</tr>{pc_rows}</table>
<h2>Pictures</h2>{"".join(pictures)}
<h2>Protocols</h2><ul>{protos}</ul>
<h2>Inputs</h2><pre>{e(json.dumps(inputs, indent=2, default=str))}</pre>
"""
    return html_page.page("AC-GAN ensemble evaluation", body, css)
