"""``python -m benchmarks``: every benchmark, one table each (figures printed, never asserted).

    python -m benchmarks                 # the full measurement (tens of minutes on 2 CPU cores)
    python -m benchmarks --quick         # short runs: checks the harness, figures are rough
    python -m benchmarks --only throughput,packed --device cuda

Sections: ``throughput`` (the reference loop vs the project's trainer), ``ablation`` (what
each of the trainer's step-level changes is worth), ``packed`` (K splits
packed vs one after another), ``monitor`` (one collapse check vs ``monitor.every`` steps),
``eval`` (evaluation speed, 10 classes x 1,000 samples) and ``pipeline`` (``dvc repro`` /
``kfp.local`` wall time vs the training inside).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import sys
import time

SECTIONS = ("throughput", "ablation", "packed", "monitor", "eval", "pipeline")
MODULES = {
    "throughput": "benchmarks.train_throughput",
    "ablation": "benchmarks.step_ablation",
    "packed": "benchmarks.packed",
    "monitor": "benchmarks.monitor_overhead",
    "eval": "benchmarks.eval_speed",
    "pipeline": "benchmarks.pipeline_overhead",
}


def _call(module: str, argv: list[str]) -> None:
    if importlib.util.find_spec(module) is None:
        print(f"\n{module}: skipped (the module does not exist yet)", flush=True)
        return
    main = getattr(importlib.import_module(module), "main", None)
    if main is None:
        print(f"\n{module}: skipped (no main())", flush=True)
        return
    if inspect.signature(main).parameters:
        main(argv)
    else:
        main()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short runs (a harness check)")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (training sections)")
    a = p.parse_args(argv)
    chosen = [s.strip() for s in a.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        p.error(f"--only: unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    quick = ["--quick"] if a.quick else []
    for section in chosen:
        t = time.perf_counter()
        if section in ("throughput", "ablation", "packed"):
            argv_ = [*quick, "--device", a.device]
        elif section == "monitor":  # it has no --quick: fewer timed steps and one repeat
            argv_ = [*(["--steps", "3", "--repeats", "1"] if a.quick else []), "--device", a.device]
        else:
            argv_ = quick
        _call(MODULES[section], argv_)
        print(f"[{section}: {time.perf_counter() - t:.0f} s]", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
