"""Shared pieces of the benchmarks: the data workspace, measurement workers, tables.

Every measured variant runs in a fresh subprocess (``python -m benchmarks.<module> --worker
KIND --args JSON``) so that its peak memory is its own and no variant warms caches for
another; the worker prints one JSON line. Variants alternate when repeated, so a machine whose
load changes during the run (other jobs) affects each of them alike; the tables show medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
# The measured configuration: the default 32x32 model at batch 64 (params.yaml's dataset).
BASE_OVERRIDES = ("tracking.enabled=false", "data.resolution=32", "train.batch_size=64")


def default_work() -> Path:
    return Path(tempfile.gettempdir()) / "acgan-bench"


def machine(device: torch.device) -> str:
    """What the figures were measured on, for the table's title."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def load_average() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "n/a"
    return f"{one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def sync(device: torch.device) -> None:
    """Wait for queued GPU work: benchmarks time what ran, the trainer never waits."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """Peak GPU memory allocated by tensors on CUDA; the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def prepare_splits(work: Path, overrides: Sequence[str]) -> tuple[Any, Path]:
    """Ingest + split the configured dataset once per configuration; reused across runs."""
    from acgan.config import load
    from acgan.data.ingest import ingest
    from acgan.data.splits import make_splits

    cfg = load(None, [*BASE_OVERRIDES, *overrides])
    root = Path(work) / f"data-{cfg.fingerprint('data', 'split')}"
    splits = root / "splits"
    if not (splits / "splits.json").is_file():
        ingest(cfg.data, root / "ingested", progress=False)
        make_splits(root / "ingested", splits, cfg, progress=False)
    return cfg, splits


def run_worker(module: str, kind: str, args: dict[str, Any], timeout: float = 3600) -> dict:
    """Run one measurement in a fresh interpreter; return its JSON result."""
    cmd = [sys.executable, "-m", module, "--worker", kind, "--args", json.dumps(args)]
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"benchmark worker {module} {kind} failed ({proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


def worker_main(kinds: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> bool:
    """If this process was started as a worker, run it, print its JSON and return True."""
    if "--worker" not in sys.argv:
        return False
    p = argparse.ArgumentParser()
    p.add_argument("--worker", choices=sorted(kinds))
    p.add_argument("--args", default="{}")
    a, _ = p.parse_known_args()
    result = kinds[a.worker](json.loads(a.args))
    print(json.dumps(result), flush=True)
    return True


def alternate(
    variants: Sequence[tuple[str, Callable[[], dict[str, Any]]]], repeats: int
) -> dict[str, list[dict[str, Any]]]:
    """Run every variant ``repeats`` times, interleaved (a b a b ...)."""
    out: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    for r in range(repeats):
        for name, fn in variants:
            t = time.perf_counter()
            out[name].append(fn())
            print(
                f"  [{r + 1}/{repeats}] {name}: {time.perf_counter() - t:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    return out


def median(results: Sequence[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in results)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table (also valid Markdown), numbers right-aligned."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 10 else f"{v:,.0f}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.ljust(w) if i == 0 else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "| " + " | ".join(parts) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([f"\n{title}", "", line(header), sep, *(line(r) for r in cells)])


class Stopwatch:
    """A trainer step hook that times each split from step ``warmup`` to step ``end``.

    Hooks run after a step's work is queued: on CUDA the clock waits for the device there
    (and only there, in the benchmark; the trainer itself never waits).
    """

    every = 1

    def __init__(self, warmup: int, end: int, device: torch.device) -> None:
        self.warmup, self.end, self.device = warmup, end, device
        self.start: dict[int, float] = {}
        self.stop: dict[int, float] = {}

    def __call__(self, ctx: Any) -> None:
        step, sid = ctx.state.step, ctx.meta["split_id"]
        if step == self.warmup and sid not in self.start:
            sync(self.device)
            self.start[sid] = time.perf_counter()
        if step == self.end and sid not in self.stop:
            sync(self.device)
            self.stop[sid] = time.perf_counter()
        return None

    def seconds(self) -> float:
        """Wall time from the first split's warm-up mark to the last split's end."""
        return max(self.stop.values()) - min(self.start.values())
