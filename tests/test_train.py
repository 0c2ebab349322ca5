"""The per-split trainer: learning, outputs, exact resume, SIGKILL resume, bad checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from acgan import checkpoint
from acgan.config import Config
from acgan.errors import CheckpointError, ConfigError
from acgan.models.ensemble import Ensemble
from acgan.train import train_split

FAST = (
    "train.batch_size=16",
    "train.log_every=2",
    "train.sample_every=1000",
    "train.checkpoint_every=2",
    "monitor.enabled=false",
)


def _gen_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(out_dir / "generator.pt")["state_dict"]


def test_d_class_accuracy_rises_above_chance(
    make_cfg: Callable[..., Config], synthetic_splits: Path, tmp_path: Path
) -> None:
    cfg = make_cfg(
        "train.steps=60",
        "train.batch_size=32",
        "train.log_every=10",
        "train.sample_every=1000",
        "train.checkpoint_every=60",
        "model.d_dropout=0.0",
        "monitor.enabled=false",
    )
    res = train_split(cfg, 0, synthetic_splits, tmp_path / "out", tmp_path / "ck", progress=False)
    history = json.loads((res.out_dir / "history.json").read_text())["history"]
    first, last = history[0]["d_acc_real"], history[-1]["d_acc_real"]
    chance = 1 / 5
    assert last > 2 * chance and last > first, history
    assert all(h["loss_d"] == h["loss_d"] for h in history)  # no NaN


def test_outputs_are_complete_and_traceable(tiny_trained) -> None:  # noqa: ANN001
    out = tiny_trained.model_dirs[0]
    for name in ("generator.pt", "config.json", "history.json", "train.json", "samples.png"):
        assert (out / name).is_file(), name
    record = json.loads((out / "config.json").read_text())
    assert record["stage"] == "train" and len(record["data_hash"]) == 64
    assert record["config"]["train"]["steps"] == tiny_trained.cfg.train.steps
    summary = json.loads((out / "train.json").read_text())
    assert summary["step"] == tiny_trained.cfg.train.steps and summary["classes"] == [0, 1, 2, 3, 4]
    ens = Ensemble.load(tiny_trained.model_dirs)
    assert ens.classes == list(range(10))
    img = ens.generate("star", 3, seed=1)
    assert img.shape == (3, 3, 32, 32) and img.dtype == torch.uint8
    assert torch.equal(img, ens.generate(8, 3, seed=1))  # names and indices route the same


def test_resume_continues_exactly(
    make_cfg: Callable[..., Config], synthetic_splits: Path, tmp_path: Path
) -> None:
    """Stopping at step 4 and resuming to 8 gives the same weights as 8 steps straight."""
    straight = train_split(
        make_cfg("train.steps=8", *FAST),
        1,
        synthetic_splits,
        tmp_path / "a",
        tmp_path / "ck_a",
        progress=False,
    )
    part = train_split(
        make_cfg("train.steps=4", *FAST),
        1,
        synthetic_splits,
        tmp_path / "b",
        tmp_path / "ck_b",
        progress=False,
    )
    assert part.resumed_from is None and part.step == 4
    resumed = train_split(
        make_cfg("train.steps=8", *FAST),
        1,
        synthetic_splits,
        tmp_path / "b",
        tmp_path / "ck_b",
        progress=False,
    )
    assert resumed.resumed_from == 4 and resumed.step == 8
    a, b = _gen_weights(straight.out_dir), _gen_weights(resumed.out_dir)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ha = json.loads((straight.out_dir / "history.json").read_text())["history"]
    hb = json.loads((resumed.out_dir / "history.json").read_text())["history"]
    assert [h["step"] for h in ha] == [h["step"] for h in hb]


def test_damaged_checkpoint_is_reported(
    make_cfg: Callable[..., Config], synthetic_splits: Path, tmp_path: Path
) -> None:
    cfg = make_cfg("train.steps=4", *FAST)
    train_split(cfg, 0, synthetic_splits, tmp_path / "out", tmp_path / "ck", progress=False)
    (newest_step, newest), *_ = checkpoint.iter_newest(next((tmp_path / "ck").glob("split_0/*")))
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a full disk
    with pytest.raises(CheckpointError) as err:
        train_split(
            make_cfg("train.steps=6", *FAST),
            0,
            synthetic_splits,
            tmp_path / "out",
            tmp_path / "ck",
            progress=False,
        )
    assert str(newest) in str(err.value) and "\n" not in str(err.value)
    assert newest_step == 4


def test_cuda_without_gpu_is_a_config_error(
    make_cfg: Callable[..., Config], synthetic_splits: Path, tmp_path: Path
) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ConfigError, match="train.device"):
        train_split(
            make_cfg("train.device=cuda"),
            0,
            synthetic_splits,
            tmp_path / "o",
            tmp_path / "c",
            progress=False,
        )


def _acgan(*args: str, cwd: Path, **kw) -> subprocess.Popen:  # noqa: ANN003
    exe = Path(sys.executable).with_name("acgan")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [str(exe), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.mark.slow
def test_sigkill_then_restart_resumes(
    synthetic_ingested: Path, synthetic_splits: Path, tmp_path: Path
) -> None:
    """A real `acgan train` process killed with SIGKILL resumes from its last checkpoint."""
    import shutil

    shutil.copytree(synthetic_splits, tmp_path / "data" / "splits")
    (tmp_path / "params.yaml").write_text(
        "tracking: {enabled: false}\nmonitor: {enabled: false}\n"
        "train: {steps: 400, batch_size: 8, checkpoint_every: 3, log_every: 3,"
        " sample_every: 1000}\n"
    )
    ck_root = tmp_path / "checkpoints" / "split_0"
    proc = _acgan("train", "--split", "0", cwd=tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(checkpoint.list_steps(next(ck_root.glob("*"), ck_root))) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    saved = max(s for s, _ in checkpoint.list_steps(next(ck_root.glob("*"))))
    assert saved >= 6 and not (tmp_path / "models" / "split_0").exists()

    # Restart with a budget just past the checkpoint: it must resume, not start over.
    done = _acgan("train", "--split", "0", "--set", f"train.steps={saved + 3}", cwd=tmp_path)
    out, err = done.communicate(timeout=180)
    assert done.returncode == 0, err
    assert f"resumed from step {saved}" in out
    summary = json.loads((tmp_path / "models" / "split_0" / "train.json").read_text())
    assert summary["resumed_from"] == saved and summary["step"] == saved + 3
    assert not list(ck_root.glob("*/.step-*.tmp"))


def test_tracking_parent_and_child_runs(
    make_cfg: Callable[..., Config], synthetic_splits: Path, tmp_path: Path
) -> None:
    """Against a real sqlite MLflow store: one parent, one child per split, curves + grids."""
    from mlflow.tracking import MlflowClient

    from acgan.config import TrackingConfig
    from acgan.lineage import make_tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = make_cfg(
        "train.steps=4",
        *FAST,
        "train.sample_every=2",
        "tracking.enabled=true",
        f"tracking.uri={uri}",
    )
    old = os.getcwd()
    os.chdir(tmp_path)  # the embedded store keeps artifacts under ./mlruns
    try:
        tracker = make_tracker(TrackingConfig(uri=uri, experiment="acgan-test"))
        runs = [
            train_split(
                cfg,
                sid,
                synthetic_splits,
                tmp_path / f"split_{sid}",
                tmp_path / "ck",
                tracker,
                progress=False,
            )
            for sid in (0, 1)
        ]
        again = train_split(
            cfg, 0, synthetic_splits, tmp_path / "split_0", tmp_path / "ck", tracker, progress=False
        )
    finally:
        os.chdir(old)
    client = MlflowClient(uri)
    children = [client.get_run(r.run_id) for r in runs]
    parents = {c.data.tags["mlflow.parentRunId"] for c in children}
    assert len(parents) == 1 and again.run_id == runs[0].run_id  # resumed run reuses its child
    assert {c.data.tags["acgan.split"] for c in children} == {"0", "1"}
    hist = client.get_metric_history(runs[0].run_id, "loss_d")
    assert [m.step for m in hist] == [2, 4]
    arts = {a.path for a in client.list_artifacts(runs[0].run_id, "samples")}
    assert {"samples/step_0000002.png", "samples/final.png"} <= arts
    parent = client.get_run(parents.pop())
    assert parent.data.params["train.steps"] == "4"
