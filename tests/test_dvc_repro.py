"""The main job, `dvc repro`, end to end in a temporary copy of the repository.

A tiny budget on the synthetic dataset and the embedded MLflow store (sqlite in the copy):
every stage runs, a second `dvc repro` does nothing, and changing `train.steps` invalidates
only training and the stages after it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pipeline_checks import check_evaluation, check_mlflow, check_registered

REPO = Path(__file__).resolve().parents[1]

TINY_PARAMS = {
    "data": {"synthetic_per_class": 20, "shard_rows": 64},
    "split": {"classes_per_split": 5, "ids": [0, 1], "reference_pairs": 10},
    "train": {
        "steps": 4,
        "batch_size": 16,
        "log_every": 2,
        "sample_every": 4,
        "checkpoint_every": 2,
    },
    "monitor": {"every": 2, "pairs": 4},
    "eval": {  # the gate open: registration runs after so short a training
        "samples_per_class": 8,
        "msssim_pairs": 4,
        "judge_epochs": 1,
        "min_skill": None,
        "max_fid_ratio": None,
        "min_diverse_fraction": 0.0,
        "require_all_classes": False,
    },
}


def _copy_repo(dst: Path) -> None:
    """Tracked and untracked-but-not-ignored files: what a fresh clone plus local edits has."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for rel in filter(None, (f.decode() for f in files)):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def _env() -> dict[str, str]:
    env = {
        **os.environ,
        # the `acgan` console script of this interpreter's environment
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "OMP_NUM_THREADS": "2",
    }
    env.pop("MLFLOW_TRACKING_URI", None)  # the embedded default: sqlite:///mlflow.db in cwd
    return env


def _run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    env = env or _env()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{out[-6000:]}"
    return out


def _ran(output: str) -> set[str]:
    """Stage names `dvc repro` executed (it prints "Running stage 'NAME':")."""
    return {
        line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")
    }


@pytest.mark.slow
def test_dvc_repro_end_to_end(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_repo(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(_merge(params, TINY_PARAMS)))
    _run(repo, "git", "init", "-q")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy")

    first = _run(repo, "dvc", "repro")  # what `make demo` runs
    stages = set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    expected = {s for s in stages if s != "train"} | {"train@0", "train@1"}
    assert _ran(first) == expected, first[-3000:]

    manifest = json.loads((repo / "data/ingested/manifest.json").read_text())
    assert manifest["total"] == 200 and len(manifest["class_names"]) == 10
    plan = json.loads((repo / "data/splits/splits.json").read_text())
    assert [s["classes"] for s in plan["splits"]] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    for sid in (0, 1):
        out = repo / f"models/split_{sid}"
        assert json.loads((out / "train.json").read_text())["step"] == 4
        assert (out / "generator.pt").stat().st_size > 0 and (out / "samples.png").is_file()
    metrics = check_evaluation(repo / "reports/eval", manifest["class_names"])
    assert (repo / "mlflow.db").is_file()  # the embedded tracking store was used
    shown = _run(repo, "dvc", "metrics", "show")
    assert "judge_accuracy" in shown and max(map(len, shown.splitlines())) < 170  # one row
    plots = json.loads(_run(repo, "dvc", "plots", "show", "--json"))
    declared = yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]
    names = {next(iter(p)) if isinstance(p, dict) else p for p in declared}
    assert set(plots["data"]) == names and "errors" not in plots  # only the declared plots

    # DVC wrote no ignore entries (.gitignore lists the outputs): tracked files are untouched,
    # so every stage's lineage names the commit; dvc.lock is the one new file.
    # (added or untracked: core.autostage stages it where the checkout is a git repository)
    status = _run(repo, "git", "status", "--porcelain").splitlines()
    assert [line[3:] for line in status] == ["dvc.lock"], status
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    record = json.loads((repo / "reports/register/registration.json").read_text())
    parent = client.get_run(record["pipeline_run_id"])
    assert parent.info.status == "FINISHED"  # ended by the last stage, register
    assert parent.data.metrics["judge_accuracy"] == metrics["judge_accuracy"]
    assert parent.data.tags["acgan.model_version"] == str(record["version"])
    check_mlflow(client, repo / "reports/eval", metrics, parent.info.run_id)
    mv = check_registered(client, record["model_name"], record["version"], parent.info.run_id)
    assert mv.run_id == record["run_id"]
    # every stage's lineage names the same data; tracked stages name their run
    for out in ("data/splits", "models/split_0", "judge", "reports/monitor", "reports/register"):
        lineage = json.loads((repo / out / "config.json").read_text())
        assert lineage["data_hash"] == manifest["content_hash"], out
    head = _run(repo, "git", "rev-parse", "HEAD").strip()
    assert parent.data.tags["acgan.git_commit"] == head
    assert parent.data.tags["mlflow.source.git.commit"] == head

    # Nothing changed: nothing runs.
    again = _run(repo, "dvc", "repro")
    assert _ran(again) == set(), again[-3000:]

    # A training budget change invalidates training and what depends on it, never
    # ingest/split (`dvc status` names the stages `dvc repro` would run).
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["steps"] = 6
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    stale = set(json.loads(_run(repo, "dvc", "status", "--json")))
    assert {"train@0", "train@1"} <= stale and not stale & {"ingest", "split", "judge"}, stale
