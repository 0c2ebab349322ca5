"""The packed ensemble trainer: K splits as one batched model vs the same K splits trained one
after another (``train.pack: K`` vs ``train.pack: 1``), and one split alone.

    python -m benchmarks.packed             # K = 10 (minutes on a CPU)
    python -m benchmarks.packed --quick     # K = 3, a few steps: a check of the harness

The data is the default synthetic dataset cut into one class per split, so that ten splits of
one shape exist (the model's cost hardly depends on the class count). Targets (issue 6): on a
GPU, K = 10 packed within 2x one split's step time; on a CPU, no slower than one after another.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Stopwatch,
    alternate,
    default_work,
    load_average,
    machine,
    median,
    peak_memory_mib,
    prepare_splits,
    reset_peak,
    resolve_device,
    run_worker,
    table,
    worker_main,
)

MODULE = "benchmarks.packed"


def _train(args: dict[str, Any]) -> dict[str, Any]:
    from acgan.config import load
    from acgan.train import train_splits

    device = resolve_device(args["device"])
    end = args["warmup"] + args["steps"]
    cfg = load(
        None,
        [
            *args["overrides"],
            f"train.steps={end}",
            f"train.device={device.type}",
            f"train.pack={args['pack']}",
            "monitor.enabled=false",
        ],
    )
    watch = Stopwatch(args["warmup"], end, device)
    reset_peak(device)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        train_splits(
            cfg, args["ids"], Path(args["splits"]), Path(tmp) / "models", Path(tmp) / "ck",
            hooks=[watch], progress=False,
        )  # fmt: skip
        wall = time.perf_counter() - t
    # Steady-state time: one after another, the sum of each split's timed window; packed, the
    # one window they share.
    if args["pack"] == 1:
        steady = sum(watch.stop[s] - watch.start[s] for s in watch.start)
    else:
        steady = watch.seconds()
    images = len(args["ids"]) * args["steps"] * cfg.train.batch_size
    return {
        "wall_s": wall,
        "steady_s": steady,
        "images_per_s": images / steady,
        "step_s": steady / args["steps"] / (len(args["ids"]) if args["pack"] == 1 else 1),
        "peak_mib": peak_memory_mib(device),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="K=3, few steps, one repeat")
    p.add_argument("--k", type=int, default=None, help="splits (default 10; quick 3)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3; quick 1)")
    p.add_argument("--repeats", type=int, default=None, help="runs per variant (default 2; 1)")
    p.add_argument("--work", type=Path, default=default_work(), help="data cache directory")
    a = p.parse_args(argv)
    device = resolve_device(a.device)
    k = a.k or (3 if a.quick else 10)
    steps = a.steps or (2 if a.quick else 20)
    warmup = a.warmup or (1 if a.quick else 3)
    repeats = a.repeats or (1 if a.quick else 2)
    if not 1 <= k <= 10:
        p.error("--k: the synthetic dataset has 10 classes, so 1 to 10 one-class splits")
    ids = list(range(k))
    # split.ids must name every split of the plan (acgan split checks it); k of them train.
    overrides = ["split.classes_per_split=1", f"split.ids={list(range(10))}"]
    cfg, splits = prepare_splits(a.work, overrides)
    common = {
        "device": a.device,
        "warmup": warmup,
        "steps": steps,
        "splits": str(splits),
        "overrides": ["tracking.enabled=false", *overrides],
    }

    def job(ids_: list[int], pack: int) -> dict[str, Any]:
        return run_worker(MODULE, "train", {**common, "ids": ids_, "pack": pack})

    variants = [
        ("1 split alone", lambda: job([0], 1)),
        (f"{k} splits one after another (pack 1)", lambda: job(ids, 1)),
        (f"{k} splits packed (pack {k})", lambda: job(ids, k)),
    ]
    print(f"packed trainer: {len(variants)} variants x {repeats} runs ...", file=sys.stderr)
    results = alternate(variants, repeats)
    med = {n: {key: median(r, key) for key in r[0]} for n, r in results.items()}
    one, seq, packed = (med[n] for n, _ in variants)
    rows = [[n, m["images_per_s"], m["step_s"], m["wall_s"], m["peak_mib"]] for n, m in med.items()]
    mem_kind = "GPU max allocated" if device.type == "cuda" else "peak RSS"
    print(
        table(
            f"Packed ensemble trainer: {k} splits, 32x32, batch {cfg.train.batch_size} per split, "
            f"{device.type} - {machine(device)}\nmedian of {repeats} run(s), {steps} timed steps "
            f"after {warmup} warm-up; wall = whole call incl. setup and outputs; "
            f"load average {load_average()}",
            ["variant", "images/s", "s/step", "wall s", f"{mem_kind} MiB"],
            rows,
        ),
        flush=True,
    )
    summary = {
        "packed_vs_sequential_images_per_s": packed["images_per_s"] / seq["images_per_s"],
        "packed_step_vs_one_split_step": packed["step_s"] / one["step_s"],
        "packed_wall_vs_sequential_wall": packed["wall_s"] / seq["wall_s"],
    }
    print(
        f"\npacked / one after another: {summary['packed_vs_sequential_images_per_s']:.2f}x "
        f"images/s, {summary['packed_wall_vs_sequential_wall']:.2f}x wall time; a packed step "
        f"of {k} splits takes {summary['packed_step_vs_one_split_step']:.2f}x one split's step",
        flush=True,
    )
    return [{"variant": n, **m} for n, m in med.items()] + [summary]


if __name__ == "__main__":
    if not worker_main({"train": _train}):
        main(sys.argv[1:])
