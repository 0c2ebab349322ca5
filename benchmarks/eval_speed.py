"""Evaluation speed (issue 4, item 8): ``acgan evaluate`` on 10 classes x 1,000 samples at
32x32, target under 60 s on a 2-core CPU, excluding the one-time judge training.

    python -m benchmarks.eval_speed                # 10 x 1,000 samples, 1,000 real per class
    python -m benchmarks.eval_speed --quick        # 10 x 100 samples: checks the harness
    python -m benchmarks.eval_speed --repeat 3     # median of 3 runs

The workspace (ingested synthetic data, two splits of five classes, generators trained for
``--train-steps`` steps, a judge) is built once under ``--work`` and reused. Each measured run
is :func:`acgan.evaluation.stage.evaluate` in a fresh interpreter (tracking disabled, no progress
bars); the table shows its own per-phase timings (``EvalResult.timings``) and the wall time of
the call, which covers reading the data, sampling, every metric, the grids and the report.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    default_work,
    load_average,
    machine,
    median,
    run_worker,
    table,
    worker_main,
)

MODULE = "benchmarks.eval_speed"
TARGET_S = 60.0


def _overrides(args: dict[str, Any]) -> list[str]:
    return [
        "tracking.enabled=false",
        "data.source=synthetic",
        "data.resolution=32",
        f"data.synthetic_per_class={args['real_per_class']}",
        "split.classes_per_split=5",
        "split.ids=[0, 1]",
        f"train.steps={args['train_steps']}",
        "train.device=cpu",
        "eval.judge_epochs=1",
        f"eval.samples_per_class={args['samples']}",
    ]


def prepare(work: Path, args: dict[str, Any]) -> dict[str, Path]:
    """Data, splits, two trained splits, the ensemble manifest and a judge (built once)."""
    from acgan.config import load
    from acgan.data.ingest import ingest
    from acgan.data.splits import make_splits
    from acgan.evaluation.judge import train_judge
    from acgan.models.ensemble import write_manifest
    from acgan.train import train_split

    cfg = load(None, _overrides(args))
    root = work / f"eval-{cfg.fingerprint('data', 'split', 'train')}"
    paths = {
        "data": root / "ingested",
        "splits": root / "splits",
        "manifest": root / "ensemble.json",
        "judge": root / "judge",
    }
    if not (paths["splits"] / "splits.json").is_file():
        ingest(cfg.data, paths["data"], progress=False)
        make_splits(paths["data"], paths["splits"], cfg, progress=False)
    members = []
    for sid in cfg.split.ids:
        out = root / f"split_{sid}"
        if not (out / "train.json").is_file():
            train_split(cfg, sid, paths["splits"], out, root / "checkpoints", progress=False)
        members.append({"split_id": sid, "model_dir": str(out), "status": "healthy"})
    write_manifest(paths["manifest"], members)
    t = time.perf_counter()
    res = train_judge(cfg, paths["data"], paths["judge"], progress=False)
    if not res.cached:
        print(f"  judge trained once: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return paths


def _measure(args: dict[str, Any]) -> dict[str, Any]:
    """Worker: one evaluation, timed."""
    import torch

    from acgan.config import load
    from acgan.evaluation.stage import evaluate

    cfg = load(None, _overrides(args))
    p = {k: Path(v) for k, v in args["paths"].items()}
    t = time.perf_counter()
    res = evaluate(
        cfg, p["data"], p["splits"], p["manifest"], p["judge"], Path(args["out"]), progress=False
    )
    wall = time.perf_counter() - t
    return {
        "wall_s": wall,
        "timings": res.timings,
        "fid": res.metrics["fid"],
        "machine": machine(torch.device("cpu")),
    }


def main(argv: list[str] | None = None) -> None:
    if worker_main({"eval": _measure}):
        return
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="100 samples per class, 100 real")
    p.add_argument("--samples", type=int, default=1000, help="samples per class")
    p.add_argument("--real-per-class", type=int, default=1000, help="real images per class")
    p.add_argument("--train-steps", type=int, default=20, help="steps per split's generator")
    p.add_argument("--repeat", type=int, default=1, help="measured runs (median shown)")
    p.add_argument("--work", type=Path, default=default_work(), help="workspace directory")
    a = p.parse_args(argv)
    args = {
        "samples": 100 if a.quick else a.samples,
        "real_per_class": 100 if a.quick else a.real_per_class,
        "train_steps": 2 if a.quick else a.train_steps,
    }
    paths = prepare(a.work, args)
    args["paths"] = {k: str(v) for k, v in paths.items()}
    args["out"] = str(a.work / "eval-out")
    runs = []
    for r in range(a.repeat):
        runs.append(run_worker(MODULE, "eval", args))
        print(f"  [{r + 1}/{a.repeat}] {runs[-1]['wall_s']:.0f} s", file=sys.stderr, flush=True)
    phases = list(runs[0]["timings"])
    rows: list[list[Any]] = [
        [name, median([{"v": x["timings"][name]} for x in runs], "v")] for name in phases
    ]
    wall = median(runs, "wall_s")
    rows.append(["total (evaluate() wall time)", wall])
    n = 10 * args["samples"]
    title = (
        f"Evaluation of 10 classes x {args['samples']:,} samples at 32x32 "
        f"({args['real_per_class']:,} real images per class; judge training excluded)\n"
        f"{runs[0]['machine']}; load average {load_average()}; median of {a.repeat} run(s)\n"
        f"target < {TARGET_S:.0f} s: {'met' if wall < TARGET_S else 'NOT met'} "
        f"({n / wall:,.0f} samples/s end to end)"
    )
    print(table(title, ["phase", "seconds"], rows), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
