"""Pipeline overhead: the wall time of ``dvc repro`` and of the ``kfp.local`` run against the
training time inside them (the trainer's own loop time, ``train_seconds`` in each split's
``train.json``).

    python -m benchmarks.pipeline_overhead            # the demo budget (params.yaml as is)
    python -m benchmarks.pipeline_overhead --quick    # a tiny budget: a check of the harness

Both run in a temporary copy of the repository (tracked and untracked-not-ignored files, as the
tests copy it) with the embedded MLflow store. For ``dvc repro`` a small wrapper in front of the
``acgan`` console script records each stage process's wall time, so the table shows where the
time outside training goes: DVC itself (hashing, caching outputs), each stage's interpreter
start and imports, and the stages that are not training (judge, monitor, evaluate, register).
Every ``dvc repro`` stage is a new process (``make demo`` runs plain ``dvc repro``); what one
costs before its work starts is ``python -m benchmarks.startup``'s table.
The ``kfp.local`` part needs the pipeline package (``pipelines/acgan.py``); without it, it is
skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from acgan.kfp_runtime import config_keys
from benchmarks.common import REPO, load_average, table

# A tiny budget (seconds per stage): checks that the harness works, not a representative ratio.
QUICK: dict[str, dict[str, Any]] = {
    "data": {"synthetic_per_class": 40, "shard_rows": 64},
    "split": {"classes_per_split": 5, "ids": [0, 1], "reference_pairs": 10},
    "train": {"steps": 6, "batch_size": 16, "log_every": 2, "sample_every": 6,
              "checkpoint_every": 3},
    "monitor": {"every": 3, "pairs": 4},
    "eval": {  # the gate open: registration runs after so short a training
        "samples_per_class": 8,
        "msssim_pairs": 4,
        "judge_epochs": 1,
        "min_skill": None,
        "max_fid_ratio": None,
        "min_diverse_fraction": 0.0,
        "require_all_classes": False,
    },
}  # fmt: skip
# Keys the local KFP run sets itself (paths, tracking) or derives (the split ids).
KFP_SKIP = ("data.root", "split.ids", "tracking.")
# Pipeline parameters that stand for config keys (the pipeline's table), less those above.
KFP_PARAMS = {key: name for name, key in config_keys().items() if not key.startswith(KFP_SKIP)}

SHIM = """#!/bin/sh
# Times each `acgan` process that dvc starts (benchmarks/pipeline_overhead.py).
start=$(date +%s.%N)
"{real}" "$@"
rc=$?
echo "$start $(date +%s.%N) $rc $*" >> "{log}"
exit $rc
"""


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def copy_repo(dst: Path) -> None:
    """Tracked and untracked-but-not-ignored files, committed in a fresh git repository."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    for rel in filter(None, (f.decode() for f in files)):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def _env(bin_dir: Path | None = None) -> dict[str, str]:
    path = os.pathsep.join(
        [*([str(bin_dir)] if bin_dir else []), str(Path(sys.executable).parent),
         os.environ.get("PATH", "")]
    )  # fmt: skip
    env = {**os.environ, "PATH": path, "DVC_NO_ANALYTICS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the embedded store in the copy
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return wall


def import_seconds() -> float:
    """One stage process's interpreter start + the heavy imports (the second of two runs, so
    with a warm page cache as in a pipeline)."""
    code = "import torch, torchvision, torchmetrics, mlflow, acgan.train, acgan.tracking"
    cmd = [sys.executable, "-c", code]
    subprocess.run(cmd, check=True, capture_output=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def _train_seconds(paths: list[Path]) -> float:
    """Sum of the trainer's loop time; a pack's shared loop counted once."""
    seen: dict[tuple, float] = {}
    for p in paths:
        s = json.loads(p.read_text())
        key = tuple(s.get("packed_with") or [s["split_id"]])
        seen[key] = float(s.get("train_seconds", 0.0))
    return sum(seen.values())


def _stage_name(args: str) -> str:
    parts = shlex.split(args)
    name = parts[0] if parts else "?"
    ids = [parts[i + 1] for i, a in enumerate(parts[:-1]) if a == "--split"]
    return f"{name}@{','.join(ids)}" if ids else name


def measure_dvc(work: Path, quick: bool) -> dict[str, Any]:
    work = work / "dvc"
    repo = work / "dvc-repo"
    repo.mkdir(parents=True)
    copy_repo(repo)
    if quick:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        (repo / "params.yaml").write_text(yaml.safe_dump(_merge(params, QUICK)))
    shim_dir, log = work / "shim", work / "acgan-calls.log"
    shim_dir.mkdir()
    real = shutil.which("acgan", path=str(Path(sys.executable).parent))
    if real is None:
        raise RuntimeError("no `acgan` console script beside this interpreter; pip install -e .")
    (shim_dir / "acgan").write_text(SHIM.format(real=real, log=log))
    (shim_dir / "acgan").chmod(0o755)
    env = _env(shim_dir)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "copy"],
    ):
        _run(cmd, repo, env)  # fmt: skip
    print("  dvc repro ...", file=sys.stderr, flush=True)
    wall = _run(["dvc", "repro"], repo, env)
    stages = []
    for line in log.read_text().splitlines():
        start, end, rc, args = line.split(" ", 3)
        stages.append((_stage_name(args), float(end) - float(start)))
    train = _train_seconds(sorted(repo.glob("models/**/train.json")))
    return {"wall_s": wall, "train_s": train, "stages": stages}


def _kfp_params(repo: Path, quick: bool) -> dict[str, Any]:
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    if quick:
        raw = _merge(raw, QUICK)
    params: dict[str, Any] = {}
    overrides = []
    for section, keys in raw.items():
        for key, value in (keys or {}).items():
            dotted = f"{section}.{key}"
            if dotted in KFP_PARAMS:
                params[KFP_PARAMS[dotted]] = value
            elif not dotted.startswith(KFP_SKIP):
                overrides.append(f"{dotted}={json.dumps(value)}")
    return {**params, "overrides": overrides}


def measure_kfp(work: Path, quick: bool) -> dict[str, Any] | None:
    if not (REPO / "pipelines" / "acgan.py").is_file():
        print("kfp.local: skipped (pipelines/acgan.py does not exist yet)", flush=True)
        return None
    repo = work / "kfp-repo"
    repo.mkdir(parents=True)
    copy_repo(repo)
    params = _kfp_params(repo, quick)
    cmd = [sys.executable, "-m", "pipelines.acgan", "--local", "--root", str(repo / "kfp_local")]
    for k, v in params.items():
        cmd += ["--param", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
    print("  kfp.local run ...", file=sys.stderr, flush=True)
    wall = _run(cmd, repo, _env())
    train = _train_seconds(sorted((repo / "kfp_local").glob("outputs/**/train.json")))
    tasks = len(list((repo / "kfp_local").glob("outputs/*/**/executor_output.json")))
    return {"wall_s": wall, "train_s": train, "tasks": tasks}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pipeline_overhead",
                                description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--quick", action="store_true", help="tiny budget (harness check)")
    p.add_argument("--skip-dvc", action="store_true")
    p.add_argument("--skip-kfp", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the temporary copies")
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="acgan-overhead-"))
    out: dict[str, Any] = {"imports_s": import_seconds()}
    try:
        if not a.skip_dvc:
            out["dvc"] = measure_dvc(work, a.quick)
        if not a.skip_kfp:
            out["kfp"] = measure_kfp(work, a.quick)
    finally:
        if a.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    budget = "tiny (--quick)" if a.quick else "demo (params.yaml)"
    rows = []
    names = {
        "dvc": "dvc repro",
        "kfp": "kfp.local run",
    }
    for name, label in names.items():
        r = out.get(name)
        if r:
            over = r["wall_s"] - r["train_s"]
            rows.append([
                label, r["wall_s"], r["train_s"], over,
                f"{100 * over / max(r['train_s'], 1e-9):.0f}%",
            ])  # fmt: skip
    if rows:
        print(table(
            f"Pipeline overhead, {budget} budget; one stage process's start + imports: "
            f"{out['imports_s']:.1f} s; load average {load_average()}",
            ["run", "wall s", "training s", "outside training s", "outside / training"], rows,
        ), flush=True)  # fmt: skip
    modes = ["dvc"] if out.get("dvc") else []
    if modes:
        stage_rows = [
            [n, *(out[m]["stages"][i][1] for m in modes)]
            for i, (n, _) in enumerate(out[modes[0]]["stages"])
        ]
        stage_rows.append([
            "dvc itself (wall - stage processes)",
            *(out[m]["wall_s"] - sum(s for _, s in out[m]["stages"]) for m in modes),
        ])  # fmt: skip
        print(table(
            "dvc repro, per stage process (wall s)",
            ["stage", *(f"{names[m]} s" for m in modes)], stage_rows,
        ), flush=True)  # fmt: skip
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
