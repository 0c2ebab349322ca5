"""``python -m benchmarks.quality``: training recipes side by side at one budget, judged alike.

    python -m benchmarks.quality --data synthetic --recipe paper --recipe default
    python -m benchmarks.quality --data ../shared/data/fashion-mnist-7k \\
        --classes-per-split 2 --steps 600 --recipe paper --recipe default
    python -m benchmarks.quality --data DIR --mode split --recipe default   # split vs one model

Each dataset (``synthetic`` or an ImageFolder directory) is ingested, split and judged once;
each recipe then trains every split for ``--steps`` steps of ``--batch-size`` images through
the project's own stages (``acgan.train``, the collapse monitor, ``acgan.evaluation``), and the
evaluation's figures go into one table per dataset: judge accuracy, FID and intra-class FID in
the judge's feature space, the fraction of classes at least as diverse as the least diverse
real class, Inception Score, D's real-image class accuracy at the end of training, and wall
time. ``--mode split`` trains the class-split ensemble and one model over all classes at equal
total steps (the paper's claim that splitting helps).

A recipe is a preset name (``paper``; ``default`` is the code's defaults) or
``LABEL=ITEM;ITEM;...`` where an item is a preset name or a ``section.key=value`` override:
``--recipe "nodrop=paper;model.d_dropout=0"``. Results are cached under ``--work`` by dataset,
recipe and budget (re-running the same command only prints the table); curves of D's class
accuracy and the losses are drawn per dataset (``curves.png``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acgan.devices import resolve_device
from benchmarks.common import load_average, machine, table

COLUMNS = (
    "recipe",
    "judge acc",
    "FID",
    "intra-FID",
    "diverse",
    "IS",
    "D real acc",
    "train s",
)


@dataclass(frozen=True)
class Recipe:
    label: str
    overrides: tuple[str, ...]


def parse_recipe(text: str) -> Recipe:
    label, sep, spec = text.partition("=")
    if not sep:  # a bare preset name
        label, spec = text, text
    items = [i.strip() for i in spec.split(";") if i.strip()]
    overrides = []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif item != "default":
            overrides.append(f"recipe={item}")
    return Recipe(label.strip(), tuple(overrides))


def detect_channels(root: Path) -> int:
    """1 when every sampled image of the ImageFolder is grayscale, else 3."""
    from PIL import Image

    files = [p for d in sorted(root.iterdir()) if d.is_dir() for p in sorted(d.iterdir())[:5]]
    modes = set()
    for p in files[:50]:
        with Image.open(p) as im:
            modes.add(im.mode)
    return 1 if modes and modes <= {"L", "1", "I;16", "I"} else 3


def data_overrides(data: str, channels: int | None) -> list[str]:
    if data == "synthetic":
        return ["data.source=synthetic", f"data.channels={channels or 3}"]
    root = Path(data)
    if not root.is_dir():
        raise SystemExit(f"--data {data}: not a directory; give an ImageFolder or 'synthetic'")
    return [
        "data.source=imagefolder",
        f"data.root={root.resolve()}",
        f"data.channels={channels or detect_channels(root)}",
    ]


def prepare(work: Path, overrides: list[str], progress: bool) -> tuple[Path, int]:
    """Ingest and judge once per dataset; returns its directory and its class count."""
    from acgan.config import load
    from acgan.data import synthetic
    from acgan.data.ingest import ingest, load_manifest
    from acgan.evaluation.judge import train_judge

    cfg = load(None, overrides)
    # the synthetic images are made by code: a new version of it is a new dataset
    version = f"-v{synthetic.VERSION}" if cfg.data.source == "synthetic" else ""
    root = work / f"data-{cfg.fingerprint('data')}{version}"
    if not (root / "ingested" / "manifest.json").is_file():
        ingest(cfg.data, root / "ingested", progress=progress)
    if not (root / "judge" / "judge.json").is_file():
        train_judge(cfg, root / "ingested", root / "judge", progress=progress)
    return root, len(load_manifest(root / "ingested").class_names)


def split_overrides(n_classes: int, per_split: int) -> list[str]:
    per_split = min(per_split, n_classes)
    ids = list(range((n_classes + per_split - 1) // per_split))
    return [f"split.classes_per_split={per_split}", f"split.ids={ids}"]


def make_plan(root: Path, overrides: list[str], progress: bool) -> tuple[Path, int]:
    """The split plan (and its real-image references) for one split configuration."""
    from acgan.config import load
    from acgan.data.splits import load_plan, make_splits

    cfg = load(None, overrides)
    splits = root / f"splits-{cfg.fingerprint('split')}"
    if not (splits / "splits.json").is_file():
        make_splits(root / "ingested", splits, cfg, progress=progress)
    return splits, len(load_plan(splits).splits)


def run_recipe(
    root: Path,
    splits: Path,
    overrides: list[str],
    label: str,
    progress: bool,
    max_splits: int | None = None,
) -> dict[str, Any]:
    """Train every split of the plan with one recipe, let the monitor stage choose the
    ensemble (as ``dvc repro`` does), evaluate it; cached by recipe and budget."""
    from acgan.config import load, replace
    from acgan.data.splits import load_plan
    from acgan.evaluation.stage import evaluate
    from acgan.monitor.stage import run_monitor
    from acgan.train import train_split_with_monitor

    cfg = load(None, overrides)
    fp = cfg.fingerprint("split", "model", "train", "monitor", "eval")
    out = root / "runs" / f"{label}-{fp}" / (f"first-{max_splits}" if max_splits else "all")
    result_file = out / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    plan = load_plan(splits)
    ids = [spec.id for spec in plan.splits[:max_splits]]
    cfg = replace(cfg, split={"ids": ids})
    t0 = time.perf_counter()
    histories, train_s = [], 0.0
    for sid in ids:
        res = train_split_with_monitor(
            cfg, sid, splits, out / "models" / f"split_{sid}", out / "ckpt", progress=progress
        )
        info = json.loads((res.out_dir / "train.json").read_text())
        train_s += float(info["train_seconds"])
        histories.append(json.loads((res.out_dir / "history.json").read_text())["history"])
    mon = run_monitor(cfg, splits, out / "models", out / "monitor", progress=progress)
    ev = evaluate(
        cfg, root / "ingested", splits, mon.manifest, root / "judge", out / "eval",
        progress=progress,
    )  # fmt: skip
    m = ev.metrics
    last = [h[-1] for h in histories if h]
    result = {
        "label": label,
        "overrides": overrides,
        **{k: m.get(k) for k in RESULT_KEYS},
        "d_acc_real": sum(r["d_acc_real"] for r in last) / max(1, len(last)),
        "d_acc_fake": sum(r["d_acc_fake"] for r in last) / max(1, len(last)),
        "train_seconds": train_s,
        "total_seconds": time.perf_counter() - t0,
        "histories": histories,
        "samples": str(out / "eval" / "plots" / "samples.png"),
        "gate": ev.gate,
        "verdicts": verdicts(mon.splits, m),
    }
    result_file.write_text(json.dumps(result, indent=1))
    return result


def run_curve(
    root: Path,
    splits: Path,
    overrides: list[str],
    label: str,
    points: list[int],
    progress: bool,
    max_splits: int | None = None,
) -> list[dict[str, Any]]:
    """One training per recipe, evaluated at several points of it: the splits train to
    ``points[0]`` steps, are judged (monitor stage + evaluation, as ``dvc repro`` would at
    that budget), then resume from their checkpoint to the next point, and so on. The
    checkpoint fingerprint leaves ``train.steps`` out, so each point continues the same run
    rather than starting again: the whole curve costs one training to ``points[-1]``.
    Retraining a collapsed split is off (it would restart the run being measured); the
    monitor's verdict at each point is in the row. Cached per point."""
    from acgan.config import load, replace
    from acgan.data.splits import load_plan
    from acgan.evaluation.stage import evaluate
    from acgan.io import read_json_or_none
    from acgan.monitor.stage import run_monitor
    from acgan.train import train_split_with_monitor

    base = load(None, [*overrides, "monitor.retrain_collapsed=false"])
    fp = base.fingerprint("split", "model", "train", "monitor", "eval", exclude=("train.steps",))
    out = root / "curves" / f"{label}-{fp}" / (f"first-{max_splits}" if max_splits else "all")
    plan = load_plan(splits)
    ids = [spec.id for spec in plan.splits[:max_splits]]
    judge_key = (read_json_or_none(root / "judge" / "judge.json") or {}).get("key")
    rows = []
    for steps in sorted(points):
        point = out / f"step_{steps:06d}"
        result_file = point / "result.json"
        cached = read_json_or_none(result_file)
        if cached is not None and cached.get("judge_key") == judge_key:
            rows.append(cached)
            continue
        cfg = replace(base, split={"ids": ids}, train={"steps": steps})
        t0 = time.perf_counter()
        train_s, last = 0.0, []
        for sid in ids:
            model_dir = point / "models" / f"split_{sid}"
            info = read_json_or_none(model_dir / "train.json")
            if info is None or info.get("step") != steps:  # else: judged again (a new judge)
                train_split_with_monitor(
                    cfg, sid, splits, model_dir, out / "ckpt", progress=progress
                )
                info = json.loads((model_dir / "train.json").read_text())
            train_s += float(info["train_seconds"])
            hist = json.loads((model_dir / "history.json").read_text())["history"]
            if hist:
                last.append(hist[-1])
        mon = run_monitor(cfg, splits, point / "models", point / "monitor", progress=progress)
        ev = evaluate(
            cfg, root / "ingested", splits, mon.manifest, root / "judge", point / "eval",
            progress=progress,
        )  # fmt: skip
        m = ev.metrics
        result = {
            "label": label,
            "steps": steps,
            "judge_key": judge_key,
            "overrides": overrides,
            **{k: m.get(k) for k in RESULT_KEYS},
            "d_acc_real": sum(r["d_acc_real"] for r in last) / max(1, len(last)),
            "loss_d": sum(r["loss_d"] for r in last) / max(1, len(last)),
            "loss_g": sum(r["loss_g"] for r in last) / max(1, len(last)),
            "train_seconds": train_s,  # this point's share of the one training
            "total_seconds": time.perf_counter() - t0,
            "samples": str(point / "eval" / "plots" / "samples.png"),
            "gate": ev.gate,
            "verdicts": verdicts(mon.splits, m),
        }
        result_file.write_text(json.dumps(result, indent=1))
        rows.append(result)
    return rows


CURVE_COLUMNS = (
    "recipe", "steps", "judge acc", "FID", "intra-FID", "diverse", "IS", "D real acc",
    "loss D", "loss G", "monitor",
)  # fmt: skip


def curve_row(r: dict[str, Any]) -> list[Any]:
    statuses = sorted({v["status"] for v in r.get("verdicts", [])})
    return [
        r["label"], r["steps"], f"{r['judge_accuracy']:.3f}", f"{r['fid']:.2f}",
        f"{r['intra_fid_mean']:.2f}", f"{r['diverse_fraction']:.2f}",
        f"{r['inception_score']:.2f}", f"{r['d_acc_real']:.2f}", f"{r['loss_d']:.2f}",
        f"{r['loss_g']:.2f}", ",".join(statuses),
    ]  # fmt: skip


def draw_learning_curves(curves: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    """One panel per figure against the steps per split, one line per recipe."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = (("judge_accuracy", "judge accuracy (higher is better)"),
            ("fid", "FID, judge space (lower is better)"),
            ("intra_fid_mean", "intra-class FID (lower is better)"),
            ("diverse_fraction", "classes as diverse as real"))  # fmt: skip
    fig = Figure(figsize=(18, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(keys))
    for label, rows in curves.items():
        xs = [r["steps"] for r in rows]
        for ax, (key, name) in zip(axes, keys, strict=True):
            ax.plot(xs, [r[key] for r in rows], marker="o", label=label)
            ax.set_title(name)
            ax.set_xlabel("steps per split")
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def grid_strip(rows: list[dict[str, Any]], path: Path) -> None:
    """The sample grids of one curve side by side, each headed by its step count."""
    from PIL import Image, ImageDraw

    images = [Image.open(r["samples"]).convert("RGB") for r in rows]
    w, h = max(i.width for i in images), max(i.height for i in images)
    strip = Image.new("RGB", (w * len(images), h + 16), "white")
    draw = ImageDraw.Draw(strip)
    for k, (r, im) in enumerate(zip(rows, images, strict=True)):
        strip.paste(im, (k * w, 16))
        draw.text((k * w + 4, 2), f"{r['label']}: {r['steps']} steps", fill="black")
    strip.save(path)


RESULT_KEYS = (
    "judge_accuracy", "real_judge_accuracy", "judge_skill", "fid", "intra_fid_mean",
    "fid_real_floor", "fid_ratio", "diverse_fraction", "inception_score", "classes_missing",
)  # fmt: skip


def verdicts(splits: dict[int, dict[str, Any]], metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Each split's monitor verdict beside what the evaluation says of its samples."""
    per_class = metrics.get("per_class", {})
    rows = []
    for sid, rec in sorted(splits.items()):
        names = list(rec["classes"])
        figs = [per_class[n] for n in names if n in per_class]
        row: dict[str, Any] = {
            "split": sid, "classes": names, "status": rec["status"], "excess": rec["excess"],
            "excluded": bool(rec.get("excluded")),
        }  # fmt: skip
        for key in ("judge_accuracy", "intra_fid", "msssim"):
            row[key] = sum(f[key] for f in figs) / len(figs) if figs else None
        rows.append(row)
    return rows


def draw_curves(results: list[dict[str, Any]], path: Path, title: str) -> None:
    """D's real/fake class accuracy and both losses against the step, mean over splits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (("d_acc_real", "D class accuracy, real"), ("d_acc_fake", "D class accuracy, fake"),
            ("loss_d", "D loss"), ("loss_g", "G loss"))  # fmt: skip
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for r in results:
        hs = [h for h in r["histories"] if h]
        if not hs:
            continue
        steps = [row["step"] for row in hs[0]]
        for ax, (key, name) in zip(axes, keys, strict=True):
            n = min(len(h) for h in hs)
            ys = [sum(h[i][key] for h in hs) / len(hs) for i in range(n)]
            ax.plot(steps[:n], ys, label=r["label"])
            ax.set_title(name)
            ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def row(r: dict[str, Any]) -> list[Any]:
    return [
        r["label"],
        f"{r['judge_accuracy']:.3f}",
        f"{r['fid']:.2f}",
        f"{r.get('intra_fid_mean', r.get('intra_fid')):.2f}",
        f"{r['diverse_fraction']:.2f}",
        f"{r['inception_score']:.2f}",
        f"{r['d_acc_real']:.2f}",
        round(r["train_seconds"]),
    ]


def verdict_table(r: dict[str, Any]) -> str:
    """The monitor's verdict per split beside its samples' figures (ordered as they are?)."""

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    rows = [
        [v["split"], " ".join(v["classes"]), v["status"] + (" (excluded)" if v["excluded"] else ""),
         f"{v['excess']:+.3f}", fmt(v["judge_accuracy"]), fmt(v["intra_fid"]), fmt(v["msssim"])]
        for v in r["verdicts"]
    ]  # fmt: skip
    header = ("split", "classes", "monitor verdict", "excess", "judge acc", "intra-FID", "MS-SSIM")
    return table(f"{r['label']}: monitor verdicts vs samples", header, rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.quality",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    p.add_argument("--data", action="append", help="'synthetic' or an ImageFolder (repeatable)")
    p.add_argument("--recipe", action="append", help="preset or LABEL=ITEM;ITEM (repeatable)")
    p.add_argument("--steps", type=int, default=600, help="steps per split")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--classes-per-split", type=int, default=2)
    p.add_argument("--channels", type=int, choices=(1, 3), help="default: detected")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--mode", choices=("recipes", "split"), default="recipes")
    p.add_argument("--set", action="append", default=[], help="extra override (repeatable)")
    p.add_argument("--work", type=Path, default=Path("/tmp/acgan-quality"))
    p.add_argument("--progress", action="store_true", help="progress bars")
    p.add_argument("--max-splits", type=int, help="train only the first N splits (quick screening)")
    p.add_argument(
        "--curve",
        help="learning curves: comma-separated steps per split (e.g. 600,1200,2400,4800,9600) "
        "at which one training per recipe is evaluated (--steps is then ignored)",
    )
    a = p.parse_args(argv)
    datasets = a.data or ["synthetic"]
    recipes = [parse_recipe(r) for r in (a.recipe or ["paper", "default"])]
    print(f"$ python -m benchmarks.quality {shlex.join(sys.argv[1:] if argv is None else argv)}")
    print(f"machine: {machine(resolve_device('cpu'))}; load {load_average()}")
    budget = [
        "tracking.enabled=false",
        f"data.resolution={a.resolution}",
        f"train.steps={a.steps}",
        f"train.batch_size={a.batch_size}",
        *a.set,
    ]
    for data in datasets:
        base = [*data_overrides(data, a.channels), *budget]
        root, n_classes = prepare(a.work, base, a.progress)
        if a.curve:
            curve_main(a, recipes, data, base, root, n_classes)
            continue
        groups = [("", a.classes_per_split, 1)]
        if a.mode == "split":  # one model over all classes gets the ensemble's total steps
            n_splits = -(-n_classes // a.classes_per_split)
            groups = [("ensemble", a.classes_per_split, 1), ("one model", n_classes, n_splits)]
        results = []
        for tag, per_split, factor in groups:
            split_ov = split_overrides(n_classes, per_split)
            splits, n_splits = make_plan(root, [*base, *split_ov], a.progress)
            steps = a.steps * factor
            for r in recipes:
                label = f"{r.label}, {tag}: {n_splits} x {steps} steps" if tag else r.label
                # a recipe may set its own budget (e.g. an untrained baseline: train.steps=1)
                ov = [*base, *split_ov, f"train.steps={steps}", *r.overrides]
                t = time.perf_counter()
                # cached by recipe and budget: the ensemble of --mode split is the recipes run
                res = run_recipe(root, splits, ov, _slug(r.label), a.progress, a.max_splits)
                res["label"] = label
                results.append(res)
                print(f"  {label}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        channels = next(o for o in base if o.startswith("data.channels=")).split("=")[1]
        title = (
            f"{data}: {n_classes} classes, {a.classes_per_split} per split, {a.steps} steps "
            f"per split, batch {a.batch_size}, {channels} channel(s), {a.resolution} px"
        )
        print(table(title, COLUMNS, [row(r) for r in results]))
        real = results[0].get("real_judge_accuracy")
        if real is not None:
            print(f"\njudge accuracy on held-out real images: {real:.3f}")
        for r in results:
            if r.get("verdicts"):
                print(verdict_table(r))
        curves = root / ("curves-split.png" if a.mode == "split" else "curves.png")
        draw_curves(results, curves, title)
        print(f"curves: {curves}")
        for r in results:
            print(f"samples of {r['label']}: {r['samples']}")


def curve_main(
    a: argparse.Namespace, recipes: list[Recipe], data: str, base: list[str], root: Path,
    n_classes: int,
) -> None:  # fmt: skip
    points = sorted({int(x) for x in a.curve.split(",") if x.strip()})
    split_ov = split_overrides(n_classes, a.classes_per_split)
    splits, n_splits = make_plan(root, [*base, *split_ov], a.progress)
    curves: dict[str, list[dict[str, Any]]] = {}
    for r in recipes:
        t = time.perf_counter()
        ov = [*base, *split_ov, *r.overrides]
        curves[r.label] = run_curve(
            root, splits, ov, _slug(r.label), points, a.progress, a.max_splits
        )
        print(f"  {r.label}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    n = min(a.max_splits or n_splits, n_splits)
    title = (
        f"{data}: learning curves, {n} of {n_splits} splits x {a.classes_per_split} classes, "
        f"batch {a.batch_size}, {a.resolution} px"
    )
    rows = [curve_row(r) for rs in curves.values() for r in rs]
    print(table(title, CURVE_COLUMNS, rows))
    first = next(iter(curves.values()))[0]
    print(f"\njudge accuracy on held-out real images: {first['real_judge_accuracy']:.3f}")
    plot = root / f"learning-curves-{n}x{a.classes_per_split}.png"
    draw_learning_curves(curves, plot, title)
    print(f"curves: {plot}")
    for label, rs in curves.items():
        strip = root / f"grids-{_slug(label)}-{n}x{a.classes_per_split}.png"
        grid_strip(rs, strip)
        print(f"grids of {label}: {strip}")


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)[:60]


if __name__ == "__main__":
    main()
