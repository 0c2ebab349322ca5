"""Start-up of each ``acgan`` command: what a stage process spends before its work begins.

    python -m benchmarks.startup              # 3 repeats, medians
    python -m benchmarks.startup --repeat 5

Per command, three figures, each the median wall time of fresh processes:

- ``--help``: the interpreter, ``acgan.cli`` and click (what every command pays);
- ``start``: a trivial invocation, the command run against a missing input so that it imports
  what its body needs and then stops with its one-line error (exit 2) before any work
  (``tracking.enabled: false``: opening an MLflow store is work, not start-up);
- the heavy libraries that invocation imported (``-X importtime``): torch, torchvision,
  torchmetrics, MLflow, matplotlib, kfp, pandas.

Plus ``import acgan.cli`` alone, in ``-X importtime``'s own figure (microseconds -> s).
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


def _wall(args: list[str], cwd: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True)
    return time.perf_counter() - t0, proc.returncode


def _imported(args: list[str], cwd: Path) -> list[str]:
    """The heavy top-level packages a command imports (from -X importtime's log)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", ENTRY, *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
    )
    seen = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name in HEAVY:
                seen.add(name)
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
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    acgan = str(Path(sys.executable).with_name("acgan"))
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        # the defaults, but no MLflow store: a stage's sqlite set-up is not its start-up
        (cwd / "params.yaml").write_text("tracking: {enabled: false}\n")
        cli = statistics.median(import_cli_seconds(cwd) for _ in range(a.repeat))
        rows = []
        for name, args in COMMANDS.items():
            args = [x.format(tmp=tmp) for x in args]
            helps, starts, codes = [], [], set()
            for _ in range(a.repeat):  # alternate, so load drift affects both alike
                helps.append(_wall([acgan, args[0], "--help"], cwd)[0])
                seconds, code = _wall([acgan, *args], cwd)
                starts.append(seconds)
                codes.add(code)
            heavy = ", ".join(_imported(args, cwd)) or "-"
            rows.append(
                [
                    name,
                    statistics.median(helps),
                    statistics.median(starts),
                    "/".join(map(str, sorted(codes))),
                    heavy,
                ]
            )
    print(f"\n`import acgan.cli` (-X importtime, median of {a.repeat}): {cli:.3f} s")
    print(
        table(
            f"Start-up per command, median of {a.repeat} (s); load {load_average()}",
            ["command", "--help s", "start s", "exit", "heavy imports of the start"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
