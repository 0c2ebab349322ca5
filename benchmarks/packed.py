"""The packed ensemble trainer: K splits trained together in one process vs the same K splits
one after another (``train.pack: K`` vs ``train.pack: 1``), and one split alone. A pack runs as
one batched model on CUDA; on a CPU its splits train one after another in its process (the
batched model measured slower there), so on a CPU the batched model gets its own row, and an
interleaved measurement (one batched step of K splits, then K single-split steps, alternately
in one process) compares the two step functions under the same machine load.

    python -m benchmarks.packed             # K = 10 (minutes on a CPU)
    python -m benchmarks.packed --quick     # K = 3, a few steps: a check of the harness
    python -m benchmarks.packed --quick --mode interleaved --rounds 4 --set recipe=paper

The data is the default synthetic dataset cut into one class per split, so that ten splits of
one shape exist (the model's cost hardly depends on the class count). Targets (issue 6): on a
GPU, K = 10 packed within 2x one split's step time; on a CPU, no slower than one after another.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from acgan.devices import resolve_device
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
    run_worker,
    sync,
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
            hooks=[watch], progress=False, batched=args.get("batched"),
        )  # fmt: skip
        wall = time.perf_counter() - t
    # Steady-state time: one after another, the sum of each split's timed window; packed, the
    # window they share, from the first split's marks (its hooks run right after the pack's
    # step, before any split's checkpoint at the last step).
    if args["pack"] == 1:
        steady = sum(watch.stop[s] - watch.start[s] for s in watch.start)
    else:
        steady = min(watch.stop.values()) - min(watch.start.values())
    images = len(args["ids"]) * args["steps"] * cfg.train.batch_size
    return {
        "wall_s": wall,
        "steady_s": steady,
        "images_per_s": images / steady,
        "step_s": steady / args["steps"] / (len(args["ids"]) if args["pack"] == 1 else 1),
        "peak_mib": peak_memory_mib(device),
    }


def _interleaved(args: dict[str, Any]) -> dict[str, Any]:
    """One packed step of K splits, then K single-split steps (one per split), alternately in
    one process: both see the same machine load. The trainer's own step functions; the loops
    around them add nothing measurable (checked on this CPU)."""
    from acgan.config import load
    from acgan.train.packed import PackedNets
    from acgan.train.run import load_split_data
    from acgan.train.state import build_state, resolve_amp
    from acgan.train.step import StepRecipe, step_split, train_step

    device = resolve_device(args["device"])
    cfg = load(None, [*args["overrides"], f"train.device={device.type}"])
    amp = resolve_amp(cfg.train.amp, device)
    b = cfg.train.batch_size
    data = [load_split_data(Path(args["splits"]), sid, device)[1] for sid in args["ids"]]
    single = [build_state(cfg, d.num_classes, device, 100 + i) for i, d in enumerate(data)]
    nets = PackedNets([build_state(cfg, d.num_classes, device, i) for i, d in enumerate(data)], amp)
    recipe = StepRecipe.from_config(cfg.train, amp)
    packed_s, seq_s = [], []
    for r in range(args["warmup"] + args["rounds"]):
        sync(device)
        t = time.perf_counter()
        train_step(nets, data, recipe)
        sync(device)
        t1 = time.perf_counter()
        for st, d in zip(single, data, strict=True):
            step_split(st, d, recipe)
        sync(device)
        t2 = time.perf_counter()
        if r >= args["warmup"]:
            packed_s.append(t1 - t)
            seq_s.append(t2 - t1)
    k = len(data)
    return {
        "packed_step_s": statistics.median(packed_s),
        "single_step_s": statistics.median(seq_s) / k,
        "speedup_median": statistics.median(s / p for s, p in zip(seq_s, packed_s, strict=True)),
        "speedup_min": min(s / p for s, p in zip(seq_s, packed_s, strict=True)),
        "speedup_max": max(s / p for s, p in zip(seq_s, packed_s, strict=True)),
        "packed_images_per_s": k * b * len(packed_s) / sum(packed_s),
        "sequential_images_per_s": k * b * len(seq_s) / sum(seq_s),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="K=3, few steps, one repeat")
    p.add_argument("--k", type=int, default=None, help="splits (default 10; quick 3)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3; quick 1)")
    p.add_argument("--repeats", type=int, default=None, help="runs per variant (default 2; 1)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 8; 2)")
    p.add_argument(
        "--mode",
        choices=("both", "interleaved", "processes"),
        default="both",
        help="interleaved steps in one process, whole trainings in their own processes, or both",
    )
    p.add_argument("--work", type=Path, default=default_work(), help="data cache directory")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for the trained model, e.g. recipe=paper (repeatable)",
    )
    a = p.parse_args(argv)
    device = resolve_device(a.device)
    k = a.k or (3 if a.quick else 10)
    rounds = a.rounds or (2 if a.quick else 8)
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
        "overrides": ["tracking.enabled=false", *overrides, *a.sets],
    }

    def job(ids_: list[int], pack: int, batched: bool | None = None) -> dict[str, Any]:
        args = {**common, "ids": ids_, "pack": pack, "batched": batched}
        return run_worker(MODULE, "train", args)

    out: list[dict[str, Any]] = []
    default_mode = "batched model" if device.type == "cuda" else "one after another, 1 process"
    mem_kind = "GPU max allocated" if device.type == "cuda" else "peak RSS"
    if a.mode in ("both", "processes"):
        variants = [
            ("1 split alone", lambda: job([0], 1)),
            (f"{k} splits one after another (pack 1)", lambda: job(ids, 1)),
            (f"{k} splits packed (pack {k}, {default_mode})", lambda: job(ids, k)),
        ]
        if device.type != "cuda":  # the batched model too, which a CPU does not use by default
            variants.append((f"{k} splits packed, batched model", lambda: job(ids, k, True)))
        print(f"packed trainer: {len(variants)} variants x {repeats} runs ...", file=sys.stderr)
        results = alternate(variants, repeats)
        med = {n: {key: median(r, key) for key in r[0]} for n, r in results.items()}
        one, seq, packed = (med[n] for n, _ in variants[:3])
        rows = [
            [n, m["images_per_s"], m["step_s"], m["wall_s"], m["peak_mib"]] for n, m in med.items()
        ]
        print(
            table(
                f"Packed ensemble trainer, whole trainings in their own processes: {k} splits, "
                f"32x32, batch {cfg.train.batch_size} per split, {device.type} - "
                f"{machine(device)}\nmedian of {repeats} run(s), {steps} timed steps after "
                f"{warmup} warm-up; wall = whole call incl. setup and outputs; "
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
            f"images/s, {summary['packed_wall_vs_sequential_wall']:.2f}x wall time; a packed "
            f"step of {k} splits takes {summary['packed_step_vs_one_split_step']:.2f}x one "
            "split's step",
            flush=True,
        )
        out += [{"variant": n, **m} for n, m in med.items()] + [summary]
    if a.mode in ("both", "interleaved"):
        print(f"  interleaved: {rounds} rounds ...", file=sys.stderr, flush=True)
        r = run_worker(MODULE, "interleaved", {**common, "ids": ids, "rounds": rounds, "warmup": 1})
        rows = [
            [f"{k} single-split steps, one per split", r["sequential_images_per_s"],
             k * r["single_step_s"], "1.00x"],
            [f"one packed step of {k} splits", r["packed_images_per_s"], r["packed_step_s"],
             f"{r['speedup_median']:.2f}x ({r['speedup_min']:.2f}-{r['speedup_max']:.2f})"],
        ]  # fmt: skip
        print(
            table(
                "The batched packed model vs one after another, interleaved step by step in "
                "one process: "
                f"{k} splits, batch {cfg.train.batch_size} per split, {device.type} - "
                f"{machine(device)}\n{rounds} rounds (median speed-up, range); load average "
                f"{load_average()}",
                ["variant", "images/s", "s per round", "speed-up"],
                rows,
            ),
            flush=True,
        )
        print(
            f"\na packed step of {k} splits takes "
            f"{r['packed_step_s'] / r['single_step_s']:.2f}x one split's step",
            flush=True,
        )
        out.append({"interleaved": r})
    return out


if __name__ == "__main__":
    if not worker_main({"train": _train, "interleaved": _interleaved}):
        main(sys.argv[1:])
