"""Training throughput at the default 32x32 configuration, batch 64 (issue 2's benchmark,
extended by the performance issue): (a) the plain reference loop vs (b) the project's trainer,
side by side in one run, with images/second, peak memory and the ratio (b)/(a).

    python -m benchmarks.train_throughput            # full run (minutes on a CPU)
    python -m benchmarks.train_throughput --quick    # a short check of the harness

(b) is :func:`acgan.train.train_split` itself with its defaults (EMA, logging every 25 steps,
checkpoints every 100, sample grids every 200), tracking disabled as in (a). Both time the
steps after a warm-up, so startup (imports, decoding the split once, building the ImageFolder
index) is not in the rate; the data decoding that (a) does every step is.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
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

MODULE = "benchmarks.train_throughput"


def _project(args: dict[str, Any]) -> dict[str, Any]:
    from acgan.config import load
    from acgan.train import train_split

    device = resolve_device(args["device"])
    end = args["warmup"] + args["steps"]
    cfg = load(
        None,
        [
            *args["overrides"],
            f"train.steps={end}",
            f"train.device={device.type}",
            f"train.amp={str(args['amp']).lower()}",
        ],
    )
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


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few steps, one repeat (harness check)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 40; quick 4)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5; quick 2)")
    p.add_argument("--repeats", type=int, default=None, help="runs per variant (default 3; 1)")
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
    workers = [
        int(w) for w in (a.ref_workers or ("0,4" if device.type == "cuda" else "0")).split(",")
    ]
    cfg, splits = prepare_splits(a.work, ())
    folder = export_imagefolder(load_plan(splits).split_dir(0), splits.parent / "imagefolder_0")
    common = {"device": a.device, "warmup": warmup, "steps": steps}
    project = {**common, "splits": str(splits), "overrides": ["tracking.enabled=false"]}
    variants = [
        (
            f"(a) reference loop (ImageFolder, DataLoader workers={w})",
            lambda w=w: run_worker(
                MODULE,
                "reference",
                {
                    **common,
                    "imagefolder": str(folder),
                    "batch_size": cfg.train.batch_size,
                    "workers": w,
                },
            ),
        )  # fmt: skip
        for w in workers
    ]
    variants.append(
        (
            "(b) acgan trainer, fp32",
            lambda: run_worker(MODULE, "project", {**project, "amp": False}),
        )
    )
    if amp_supported(device):
        variants.append(
            (
                "(b) acgan trainer, train.amp (bf16)",
                lambda: run_worker(MODULE, "project", {**project, "amp": True}),
            )
        )
    print(f"training throughput: {len(variants)} variants x {repeats} runs ...", file=sys.stderr)
    results = alternate(variants, repeats)
    base = median(results[variants[0][0]], "images_per_s")
    rows, out = [], []
    for name, _ in variants:
        ips, mem = median(results[name], "images_per_s"), median(results[name], "peak_mib")
        rows.append([name, ips, mem, f"{ips / base:.2f}x"])
        out.append({"variant": name, "images_per_s": ips, "peak_mib": mem, "ratio": ips / base})
    mem_kind = "GPU max allocated" if device.type == "cuda" else "peak RSS"
    print(
        table(
            f"Training throughput: 32x32, batch {cfg.train.batch_size}, {device.type} - "
            f"{machine(device)}\nmedian of {repeats} run(s), {steps} timed steps after "
            f"{warmup} warm-up; load average {load_average()}; "
            f"bf16 on this device: {'yes' if amp_supported(device) else 'no (fp32 only)'}",
            ["variant", "images/s", f"{mem_kind} MiB", "vs (a)"],
            rows,
        ),
        flush=True,
    )
    return out


if __name__ == "__main__":
    if not worker_main({"project": _project, "reference": _reference}):
        main(sys.argv[1:])
