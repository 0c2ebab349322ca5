"""Start-up of each ``acgan`` command: what a stage process spends before its work begins.

    python -m benchmarks.startup              # 1 run per command
    python -m benchmarks.startup --repeat 3   # medians

- ``acgan --help``: the interpreter, ``acgan.cli`` and click (every command's floor), and
  ``import acgan.cli`` alone in ``-X importtime``'s own figure;
- per command, a trivial invocation: the command run against a missing input, so that it
  imports what its body needs and stops with its one-line error (exit 2) before any work
  (``tracking.enabled: false``: opening an MLflow store is work, not start-up). It runs under
  ``-X importtime``, which names the heavy libraries it imported (torch, torchvision,
  torchmetrics, MLflow, matplotlib, kfp, pandas).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import load_average, table

HEAVY = ("torch", "torchvision", "torchmetrics", "mlflow", "matplotlib", "kfp", "pandas")
MISSING = "/nonexistent/acgan-startup"
# One trivial invocation per command: the input it names does not exist.
COMMANDS: dict[str, list[str]] = {
    "ingest": ["ingest", "--set", "data.source=imagefolder", "--set", f"data.root={MISSING}"],
    "split": ["split", "--data", MISSING],
    "train": ["train", "--split", "0", "--splits", MISSING],
    "monitor": ["monitor", "--splits", MISSING],
    "judge": ["judge", "--data", MISSING],
    "evaluate": ["evaluate", "--data", MISSING, "--ensemble", f"{MISSING}/ensemble.json"],
    "register": ["register", "--ensemble", f"{MISSING}/ensemble.json", "--data", MISSING],
    "generate": ["generate", "--model", f"{MISSING}/ensemble.json"],
    "config": ["config"],
    "compile": ["compile", "--out", "{tmp}/acgan.yaml"],
    "submit": ["submit", "--endpoint", "http://127.0.0.1:9", "--param", "steps=5", "--dry-run"],
}
# `python -c` that runs the console script's entry point under -X importtime.
ENTRY = "import sys; from acgan.cli import main; main(sys.argv[1:])"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ACGAN_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "0"
    return env


def _run(args: list[str], cwd: Path) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True)
    return time.perf_counter() - t0, proc.returncode, proc.stderr


def _heavy(importtime_log: str) -> list[str]:
    """The heavy top-level packages in a ``-X importtime`` log."""
    seen = set()
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and "|" in line:
            seen.add(line.rsplit("|", 1)[1].strip())
    return [h for h in HEAVY if h in seen]


def import_cli_seconds(cwd: Path) -> float:
    """``import acgan.cli``'s cumulative time as ``-X importtime`` reports it."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import acgan.cli"],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
    )
    for line in proc.stderr.splitlines():
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[2] == "acgan.cli":
            return int(parts[1]) / 1e6
    raise RuntimeError(f"no acgan.cli line in -X importtime's output:\n{proc.stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    acgan = str(Path(sys.executable).with_name("acgan"))
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        # the defaults, but no MLflow store: a stage's sqlite set-up is not its start-up
        (cwd / "params.yaml").write_text("tracking: {enabled: false}\n")
        cli = statistics.median(import_cli_seconds(cwd) for _ in range(a.repeat))
        helps = [_run([acgan, "--help"], cwd)[0] for _ in range(a.repeat)]
        rows = []
        for name, args in COMMANDS.items():
            args = [x.format(tmp=tmp) for x in args]
            runs = [
                _run([sys.executable, "-X", "importtime", "-c", ENTRY, *args], cwd)
                for _ in range(a.repeat)
            ]
            codes = "/".join(sorted({str(code) for _, code, _ in runs}))
            heavy = ", ".join(_heavy(runs[-1][2])) or "-"
            rows.append([name, statistics.median(r[0] for r in runs), codes, heavy])
    print(
        f"\n`import acgan.cli` (-X importtime): {cli:.3f} s; `acgan --help`: "
        f"{statistics.median(helps):.2f} s (median of {a.repeat})"
    )
    print(
        table(
            f"Start-up per command (a trivial invocation, median of {a.repeat}, s); "
            f"load {load_average()}",
            ["command", "start s", "exit", "heavy imports"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
