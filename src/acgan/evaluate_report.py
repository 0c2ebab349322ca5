"""The evaluation's pictures and report: matplotlib plots, image grids, ``dvc plots`` tables
and one self-contained HTML page (images inlined as base64, so the KFP HTML artifact and a
mailed file show everything).

Plots are drawn on ``matplotlib.figure.Figure`` with the Agg canvas, never ``pyplot``: no global
figure state, no display needed.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from acgan.checkpoint import atomic_write_json
from acgan.config import EvalConfig
from acgan.metrics import suite
from acgan.models.ensemble import Ensemble
from acgan.models.sampling import grid_image, latents
from acgan.tracking import png_bytes

GRID_COLUMNS = 10
INTERP_STEPS = 8
NN_QUANTILES = 21

# (file, title, caption) of every picture, in report order.
PICTURES = (
    ("samples.png", "Samples", "one row per class, each from its split's generator"),
    ("accuracy.png", "Judge accuracy per class", "samples vs held-out real images"),
    ("msssim.png", "MS-SSIM diversity", "per class: samples vs real; lower is more diverse"),
    ("resolution.png", "Resolution discriminability", "the paper's Figure 2"),
    ("nn_distance.png", "Memorisation", "distance to the nearest training image (pixel L1)"),
    ("memorisation.png", "Nearest neighbours", "pairs: sample | its nearest training image"),
    ("interpolation.png", "Latent interpolation", "one class per row, z0 -> z1 linearly"),
    ("class_swap.png", "Class swap", "the same z in every row (column), one class per row"),
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
    """Sample, interpolation, class-swap and nearest-neighbour grids (HxWx3 uint8)."""
    rows = _pick(data.classes, cfg.grid_classes)
    out: dict[str, np.ndarray] = {}
    per = min(GRID_COLUMNS, int((data.fake_labels == rows[0]).sum()))
    out["samples.png"] = grid_image(
        torch.cat([data.fake_images[data.fake_labels == c][:per] for c in rows]), nrow=per
    )
    dim = ensemble.latent_dim
    ends = latents(2 * len(rows), dim, cfg.seed + 1)
    t = torch.linspace(0, 1, INTERP_STEPS)[:, None]
    interp = [
        ensemble.generate(c, INTERP_STEPS, z=(1 - t) * ends[2 * i] + t * ends[2 * i + 1])
        for i, c in enumerate(rows)
    ]
    out["interpolation.png"] = grid_image(torch.cat(interp), nrow=INTERP_STEPS)
    z = latents(GRID_COLUMNS, dim, cfg.seed + 2)
    swap = [ensemble.generate(c, GRID_COLUMNS, z=z) for c in rows]
    out["class_swap.png"] = grid_image(torch.cat(swap), nrow=GRID_COLUMNS)
    pairs = [p for p in figs.tables.get("nn_pairs", []) if p[0] in rows]
    if pairs:
        k = min(len(p[1]) for p in pairs)
        tiles = [
            torch.stack([img for s, n in zip(q[:k], b[:k], strict=True) for img in (s, n)])
            for _, q, b, _ in pairs
        ]
        out["memorisation.png"] = grid_image(torch.cat(tiles), nrow=2 * k)
    return out


def _accuracy_plot(table: list[dict[str, Any]]) -> np.ndarray:
    fig = Figure(figsize=(max(5, 0.6 * len(table) + 2), 3.2), dpi=100)
    ax = fig.subplots()
    x = np.arange(len(table))
    ax.bar(x - 0.2, [r["judge_accuracy"] for r in table], 0.4, label="samples")
    ax.bar(x + 0.2, [r["real_judge_accuracy"] for r in table], 0.4, label="real (held out)")
    ax.set_xticks(x, [r["class"] for r in table], rotation=45, ha="right")
    ax.set(ylabel="judge top-1 accuracy", ylim=(0, 1.05))
    ax.legend()
    fig.tight_layout()
    return _render(fig)


def _msssim_plot(table: list[dict[str, Any]], threshold: float) -> np.ndarray:
    fig = Figure(figsize=(4.5, 4), dpi=100)
    ax = fig.subplots()
    ax.scatter([r["msssim_real"] for r in table], [r["msssim"] for r in table])
    for r in table:
        ax.annotate(r["class"], (r["msssim_real"], r["msssim"]), fontsize=7)
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="samples = real")
    ax.axhline(threshold, color="r", lw=1, label="least diverse real class")
    ax.set(xlabel="real MS-SSIM", ylabel="sample MS-SSIM", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _render(fig)


def _resolution_plot(rows: list[dict[str, float]]) -> np.ndarray:
    fig = Figure(figsize=(4.5, 3.2), dpi=100)
    ax = fig.subplots()
    sides = [r["resolution"] for r in rows]
    ax.plot(sides, [r["real_accuracy"] for r in rows], marker="o", label="real (held out)")
    ax.plot(sides, [r["sample_accuracy"] for r in rows], marker="s", label="samples")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sides, [str(s) for s in sides])
    ax.set(xlabel="resolution (px, resized back)", ylabel="judge accuracy", ylim=(0, 1.05))
    ax.legend()
    fig.tight_layout()
    return _render(fig)


def _nn_plot(dist: dict[str, list[float]]) -> np.ndarray:
    fig = Figure(figsize=(4.5, 3.2), dpi=100)
    ax = fig.subplots()
    both = [*dist.get("samples", []), *dist.get("real", [])]
    bins = np.histogram_bin_edges(both, bins=30) if both else 30  # one set of bins for both
    for key, label in (("samples", "samples"), ("real", "real (held out)")):
        if dist.get(key):
            ax.hist(dist[key], bins=bins, alpha=0.6, density=True, label=label)
    ax.set(xlabel="mean |pixel difference| to nearest training image (0-255)", ylabel="density")
    ax.legend()
    fig.tight_layout()
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


def render_report(
    metrics: dict[str, Any],
    gate: dict[str, Any],
    protocols: dict[str, str],
    inputs: dict[str, Any],
    plot_dir: Path,
    run_id: str | None,
) -> str:
    """One HTML page: gate, headline figures, per-class table, every picture inlined."""
    e = html.escape
    verdict = "PASSED" if gate["passed"] else "FAILED"
    colour = "#1a7f37" if gate["passed"] else "#cf222e"
    reasons = "".join(f"<li>{e(r)}</li>" for r in gate["reasons"]) or "<li>all thresholds met</li>"
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
            b64 = base64.b64encode(path.read_bytes()).decode("ascii")
            pictures.append(
                f"<figure><h3>{e(title)}</h3><img alt='{e(title)}' "
                f"src='data:image/png;base64,{b64}'><figcaption>{e(caption)}</figcaption>"
                "</figure>"
            )
    protos = "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in protocols.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>AC-GAN ensemble evaluation</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
.gate {{ color: white; background: {colour}; padding: 0.5em 1em; display: inline-block; }}
img {{ image-rendering: pixelated; max-width: 100%; }}
figure {{ display: inline-block; vertical-align: top; margin: 1em; }}
pre {{ background: #f6f8fa; padding: 1em; overflow-x: auto; }}
</style></head><body>
<h1>AC-GAN ensemble evaluation</h1>
<p class="gate">gate {verdict}</p>
<ul>{reasons}</ul>
<h2>Figures</h2><table>{headline}</table>
<h2>Per class</h2><table><tr><th>class</th>{pc_head}</tr>{pc_rows}</table>
<h2>Pictures</h2>{"".join(pictures)}
<h2>Protocols</h2><ul>{protos}</ul>
<h2>Inputs</h2><pre>{e(json.dumps(inputs, indent=2, default=str))}</pre>
<p>MLflow run: {e(str(run_id))}</p>
</body></html>
"""
