"""Training throughput at the default 32x32 configuration, batch 64 (issue 2's benchmark,
extended by the performance issue): (a) the plain reference loop vs (b) the project's trainer,
side by side in one run, with images/second, peak memory and the ratio (b)/(a).

    python -m benchmarks.train_throughput            # full run (minutes on a CPU)
    python -m benchmarks.train_throughput --quick    # a short check of the harness

(b) is :func:`acgan.train.train_split` itself with its defaults (EMA, logging every 25 steps,
checkpoints every 100, sample grids every 200), tracking disabled as in (a). Both time the
steps after a warm-up, so startup (imports, decoding the split once, building the ImageFolder
index) is not in the rate; the data decoding that (a) does every step is.

Two measurements per variant: each in its own process (its peak memory, its rate), and (a) and
(b) interleaved in one process, ``--chunk`` steps of one then of the other, through the
trainer's step hook. The interleaved ratio is the one to quote on a shared machine: both loops
see the same load from moment to moment.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

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

MODULE = "benchmarks.train_throughput"


def _config(args: dict[str, Any], steps: int, device: torch.device) -> Any:
    from acgan.config import load

    return load(
        None,
        [
            *args["overrides"],
            f"train.steps={steps}",
            f"train.device={device.type}",
            f"train.amp={str(args['amp']).lower()}",
        ],
    )


def _project(args: dict[str, Any]) -> dict[str, Any]:
    from acgan.train import train_split

    device = resolve_device(args["device"])
    end = args["warmup"] + args["steps"]
    cfg = _config(args, end, device)
    watch = Stopwatch(args["warmup"], end, device)
    reset_peak(device)
    with tempfile.TemporaryDirectory() as tmp:
        res = train_split(
            cfg, 0, Path(args["splits"]), Path(tmp) / "out", Path(tmp) / "ck",
            hooks=[watch], progress=False,
        )  # fmt: skip
    seconds = watch.seconds()
    return {
        "images_per_s": args["steps"] * cfg.train.batch_size / seconds,
        "seconds": seconds,
        "peak_mib": peak_memory_mib(device),
        "last_loss_d": res.metrics.get("loss_d"),
    }


def _reference(args: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.reference_loop import run_reference

    device = resolve_device(args["device"])
    reset_peak(device)
    out = run_reference(
        Path(args["imagefolder"]),
        device,
        args["batch_size"],
        args["warmup"],
        args["steps"],
        workers=args["workers"],
    )
    return {**out, "peak_mib": peak_memory_mib(device)}


class Interleave:
    """A trainer step hook: every ``chunk`` trainer steps it runs ``chunk`` reference steps,
    splitting the clock between the two loops (with a device sync at each switch)."""

    def __init__(self, reference: Iterator[Any], chunk: int, end: int, device: torch.device):
        self.every, self.reference, self.end, self.device = chunk, reference, end, device
        self.mark: float | None = None
        self.ours_s = self.ref_s = 0.0
        self.ours_steps = self.ref_steps = 0
        self.last_ref = 0.0
        self.ratios: list[float] = []

    def __call__(self, ctx: Any) -> None:
        sync(self.device)
        now = time.perf_counter()
        if self.mark is not None:  # the trainer's first chunk is its warm-up
            ours = now - self.mark
            self.ours_s += ours
            self.ours_steps += self.every
            self.ratios.append(self.last_ref / ours)  # (b)/(a) over this pair of chunks
        if ctx.state.step >= self.end:
            return None
        for _ in range(self.every):
            next(self.reference)
        sync(self.device)
        self.mark = time.perf_counter()
        self.last_ref = self.mark - now
        self.ref_s += self.last_ref
        self.ref_steps += self.every
        return None


def _interleaved(args: dict[str, Any]) -> dict[str, Any]:
    from acgan.train import train_split
    from benchmarks.reference_loop import training_steps

    device = resolve_device(args["device"])
    chunk, rounds = args["chunk"], args["rounds"]
    end = chunk * (rounds + 1)
    cfg = _config(args, end, device)
    reference = training_steps(
        Path(args["imagefolder"]), device, cfg.train.batch_size, args["workers"]
    )
    for _ in range(chunk):  # the reference's warm-up
        next(reference)
    hook = Interleave(reference, chunk, end, device)
    with tempfile.TemporaryDirectory() as tmp:
        train_split(
            cfg, 0, Path(args["splits"]), Path(tmp) / "out", Path(tmp) / "ck",
            hooks=[hook], progress=False,
        )  # fmt: skip
    b = cfg.train.batch_size
    return {
        "ours_images_per_s": hook.ours_steps * b / hook.ours_s,
        "ref_images_per_s": hook.ref_steps * b / hook.ref_s,
        "ratio_median": statistics.median(hook.ratios),
        "ratio_min": min(hook.ratios),
        "ratio_max": max(hook.ratios),
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few steps, one repeat (harness check)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 40; quick 4)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5; quick 2)")
    p.add_argument("--repeats", type=int, default=None, help="runs per variant (default 3; 1)")
    p.add_argument("--chunk", type=int, default=None, help="interleaved chunk (default 5; 2)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved pairs (default 8; 2)")
    p.add_argument(
        "--ref-workers",
        default=None,
        help="DataLoader workers of (a), comma-separated (default: 0 on CPU, 0,4 on CUDA)",
    )
    p.add_argument("--work", type=Path, default=default_work(), help="data cache directory")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    a = parse(argv)
    from acgan.data.splits import load_plan
    from acgan.train.state import amp_supported
    from benchmarks.reference_loop import export_imagefolder

    device = resolve_device(a.device)
    steps = a.steps or (4 if a.quick else 40)
    warmup = a.warmup or (2 if a.quick else 5)
    repeats = a.repeats or (1 if a.quick else 3)
    chunk, rounds = a.chunk or (2 if a.quick else 5), a.rounds or (2 if a.quick else 8)
    default_workers = "0,4" if device.type == "cuda" else "0"
    workers = [int(w) for w in (a.ref_workers or default_workers).split(",")]
    cfg, splits = prepare_splits(a.work, ())
    folder = export_imagefolder(load_plan(splits).split_dir(0), splits.parent / "imagefolder_0")
    common = {"device": a.device, "warmup": warmup, "steps": steps}
    ref = {**common, "imagefolder": str(folder), "batch_size": cfg.train.batch_size}
    ours = {**common, "splits": str(splits), "overrides": ["tracking.enabled=false"]}
    amps = [False, True] if amp_supported(device) else [False]
    names = {False: "(b) acgan trainer, fp32", True: "(b) acgan trainer, train.amp (bf16)"}
    variants = [
        (
            f"(a) reference loop (ImageFolder, DataLoader workers={w})",
            lambda w=w: run_worker(MODULE, "reference", {**ref, "workers": w}),
        )
        for w in workers
    ]
    variants += [
        (names[amp], lambda amp=amp: run_worker(MODULE, "project", {**ours, "amp": amp}))
        for amp in amps
    ]
    print(f"training throughput: {len(variants)} variants x {repeats} runs ...", file=sys.stderr)
    results = alternate(variants, repeats)
    print(f"  interleaved (a)/(b) in one process: {len(amps)} run(s) ...", file=sys.stderr)
    inter = {
        amp: run_worker(
            MODULE,
            "interleaved",
            {
                **ours,
                "amp": amp,
                "imagefolder": str(folder),
                "workers": workers[0],
                "chunk": chunk,
                "rounds": rounds,
            },
        )  # fmt: skip
        for amp in amps
    }
    base = median(results[variants[0][0]], "images_per_s")
    rows, out = [], []
    for i, (name, _) in enumerate(variants):
        ips, mem = median(results[name], "images_per_s"), median(results[name], "peak_mib")
        row: dict[str, Any] = {"variant": name, "images_per_s": ips, "peak_mib": mem}
        row["ratio_own_process"] = ips / base
        if i == 0:
            row["interleaved_images_per_s"] = statistics.mean(
                r["ref_images_per_s"] for r in inter.values()
            )
        amp = next((k for k, v in names.items() if v == name), None)
        if amp is not None:
            r = inter[amp]
            row["interleaved_images_per_s"] = r["ours_images_per_s"]
            row["ratio_interleaved"] = r["ratio_median"]
            row["ratio_interleaved_range"] = (r["ratio_min"], r["ratio_max"])
        out.append(row)
        inter_ips = row.get("interleaved_images_per_s")
        ratio = row.get("ratio_interleaved")
        rng = row.get("ratio_interleaved_range")
        rows.append(
            [
                name,
                ips,
                "-" if inter_ips is None else inter_ips,
                mem,
                f"{ips / base:.2f}x",
                "-" if ratio is None else f"{ratio:.2f}x ({rng[0]:.2f}-{rng[1]:.2f})",
            ]
        )
    mem_kind = "GPU max allocated" if device.type == "cuda" else "peak RSS"
    print(
        table(
            f"Training throughput: 32x32, batch {cfg.train.batch_size}, {device.type} - "
            f"{machine(device)}\nown process: median of {repeats} run(s), {steps} timed steps "
            f"after {warmup} warm-up; interleaved: {rounds} pairs of {chunk}-step chunks in one "
            f"process (median ratio, range); load average {load_average()}; "
            f"bf16 on this device: {'yes' if amp_supported(device) else 'no (fp32 only)'}",
            [
                "variant",
                "images/s own process",
                "images/s interleaved",
                f"{mem_kind} MiB",
                "vs (a) own",
                "vs (a) interleaved",
            ],
            rows,
        ),
        flush=True,
    )
    return out


if __name__ == "__main__":
    if not worker_main({"project": _project, "reference": _reference, "interleaved": _interleaved}):
        main(sys.argv[1:])
