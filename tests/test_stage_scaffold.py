"""The one stage scaffold (:func:`acgan.lineage.stage`): every stage's MLflow run ends the same
way (FINISHED / FAILED / KILLED) and its output directory is replaced whole or not at all.
Runs go to a real embedded MLflow store (sqlite), as `dvc repro` uses by default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from acgan.config import Config
from acgan.lineage import stage
from acgan.tracking import Tracker

HASH = "ab" * 32


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Tracker:
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(db.parent)  # the store's artifacts land beside it
        return Tracker(f"sqlite:///{db}", "scaffold")


def _status(tracker: Tracker, run_id: str) -> str:
    return str(tracker.client.get_run(run_id).info.status)


def test_success_writes_config_and_finishes_the_run(
    tracker: Tracker, small_cfg: Config, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with stage("judge", small_cfg, out, data_hash=HASH, tracker=tracker, tags={"k": "v"}) as st:
        with st.output(extra_field=1) as tmp:
            (tmp / "a.txt").write_text("a")
            st.record["late"] = 2  # filled while the block runs: still in config.json
        run_id, parent_id = st.run.run_id, st.pipeline_run.run_id
    record = json.loads((out / "config.json").read_text())
    assert (out / "a.txt").read_text() == "a"
    assert (record["stage"], record["data_hash"], record["run_id"]) == ("judge", HASH, run_id)
    assert (record["extra_field"], record["late"]) == (1, 2)
    assert record["config"] == small_cfg.record()
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["acgan.stage"] == "judge" and run.data.tags["k"] == "v"
    assert run.data.tags["mlflow.parentRunId"] == parent_id
    assert run.data.params["train.steps"] == str(small_cfg.train.steps)  # the flat config
    assert _status(tracker, parent_id) == "RUNNING"  # later stages log into it


@pytest.mark.parametrize(
    ("error", "status"), [(ValueError, "FAILED"), (KeyboardInterrupt, "KILLED")]
)
def test_failure_ends_runs_and_keeps_the_old_output(
    tracker: Tracker,
    small_cfg: Config,
    tmp_path: Path,
    error: type[BaseException],
    status: str,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    ids = {}
    with (
        pytest.raises(error),
        stage("evaluate", small_cfg, out, data_hash=HASH, tracker=tracker) as st,
    ):
        ids = {"run": st.run.run_id, "parent": st.pipeline_run.run_id}
        with st.output() as tmp:
            (tmp / "new.txt").write_text("half")
            raise error("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp directory left
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    # a failed or killed stage ends its pipeline run too: nothing later will
    assert _status(tracker, ids["run"]) == status and _status(tracker, ids["parent"]) == status


def test_finish_pipeline_ends_the_parent_with_the_result(
    tracker: Tracker, make_cfg: object, tmp_path: Path
) -> None:
    cfg = make_cfg("train.steps=7")  # type: ignore[operator]
    with stage("evaluate", cfg, tmp_path / "out", data_hash=HASH, tracker=tracker) as st:
        st.finish_pipeline({"fid": 12.5}, {"acgan.gate": "passed"})
        assert _status(tracker, st.pipeline_run.run_id) == "RUNNING"
    parent = tracker.client.get_run(st.pipeline_run.run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["fid"] == 12.5
    assert parent.data.tags["acgan.gate"] == "passed"


def test_untracked_stage_writes_its_output_without_a_run(tmp_path: Path) -> None:
    with stage("ingest", {"data": {"source": "x"}}, tmp_path / "out", data_hash=None) as st:
        with st.output() as tmp:
            (tmp / "m.json").write_text("{}")
            st.data_hash = HASH  # known only at the end (ingest): still recorded
        assert st.run.run_id == "none"
    record = json.loads((tmp_path / "out" / "config.json").read_text())
    assert record["config"] == {"data": {"source": "x"}} and record["data_hash"] == HASH
    assert "run_id" not in record
