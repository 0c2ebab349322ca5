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


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)[:60]


if __name__ == "__main__":
    main()
