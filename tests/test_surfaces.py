"""What a user reads, in pieces that need no pipeline run: the one status vocabulary on every
page, labelled grids, and progress bars that print lines (not redraws) into logs."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from acgan import progress
from acgan.evaluation.report import split_statuses
from acgan.models.sampling import labelled_grid
from acgan.monitor import report, status
from acgan.registry.inputs import split_health


def _summary(split_status: str, class_status: str) -> dict:
    cls = {"class": 0, "final_msssim": 0.8, "reference": 0.15, "threshold": 0.2}
    return {
        "measure_protocol": "ms-ssim",
        "pairs": 4,
        "threshold": 0.2,
        "threshold_rule": "monitor.threshold",
        "patience": 2,
        "rise": 0.05,
        "action": "warn",
        "retrain_collapsed": False,
        "splits": {
            "0": {
                "split_id": 0,
                "model_dir": "models/split_0",
                "step": 400,
                "status": split_status,
                "classes": {n: {**cls, "status": class_status} for n in ("circle", "star")},
                "events": [],
            }
        },
        "members": [{"split_id": 0, "model_dir": "models/split_0", "status": split_status}],
        "excluded": [],
    }


def test_a_new_status_shows_the_same_on_every_page(tmp_path: Path) -> None:
    """`not_converged` (a split that never reached the real data's diversity) as monitor.json
    holds it: the monitor report, the evaluation report's rows and the registry's tag agree."""
    code = status.NOT_CONVERGED
    summary = _summary(code, status.NOT_CONVERGED)
    page = report.write_html(summary, {}, tmp_path / "r.html").read_text()
    badge = status.badge(code)
    assert f"Split 0: {badge} <small>2 of 2 classes not converged</small>" in page
    assert "never reached the real data&#x27;s diversity" in page  # the legend says what it means
    assert "Split 0: healthy" not in page

    class _Ens:  # the evaluation report needs only the members' class names
        members = [type("M", (), {"split_id": 0, "class_names": ["circle", "star"]})()]

    manifest = {"members": summary["members"], "excluded": []}
    assert [r["status"] for r in split_statuses(manifest, _Ens())] == [code]  # type: ignore[arg-type]
    assert split_health(summary, manifest) == {0: code}
    assert status.label(code) == "not converged"


def test_unknown_codes_are_shown_not_hidden() -> None:
    s = status.describe("wobbly_new_state")
    assert (s.code, s.label, s.good) == ("wobbly_new_state", "wobbly new state", False)
    assert "wobbly new state" in status.badge("wobbly_new_state")
    assert (
        status.tally(["healthy", "collapsed", "healthy"]) == "2 healthy, 1 collapsed (of 3 classes)"
    )
    # excluded splits keep the monitor's status; the reason is beside it
    manifest = {"members": [], "excluded": [{"split_id": 1, "status": "collapsed", "reason": "x"}]}
    assert split_health(None, manifest) == {1: "collapsed"}
    assert split_health(None, {"excluded": [{"split_id": 2, "reason": "x"}]}) == {2: "excluded"}


def test_labelled_grid_upscales_and_names_each_row() -> None:
    images = torch.zeros(6, 3, 32, 32, dtype=torch.uint8)
    plain = labelled_grid(images, nrow=3)
    assert plain.shape == (2 * 66 + 2, 3 * 66 + 2, 3)  # 32 px -> 64 px cells, 2 px padding
    named = labelled_grid(images, nrow=3, row_labels=["circle", "a-much-longer-name"])
    assert named.shape[0] == plain.shape[0] and named.shape[1] > plain.shape[1] + 60
    left = Image.fromarray(named).crop((0, 0, named.shape[1] - plain.shape[1], named.shape[0]))
    assert left.getextrema()[0][0] < 128  # dark text on the white label column


def test_progress_prints_lines_every_interval_when_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter(range(0, 10_000, 1))  # one "second" per call to the wrapper's clock
    monkeypatch.setattr(progress.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 5.0)
    out = io.StringIO()  # not a terminal
    bar = progress.progress_bar(total=100, desc="train split 0", file=out, mininterval=0)
    for _ in range(100):
        bar.update(1)
        bar.set_postfix(d="0.5")  # a postfix forces a redraw: still not a line per step
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and 2 < len(lines) < 60
    assert lines[0].startswith("train split 0:   0%") and "100/100" in lines[-1]


def test_progress_keeps_tqdm_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    bar = progress.progress_bar(total=3, desc="x", file=out, mininterval=0)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert "\r" in out.getvalue()  # tqdm's in-place redraws


def test_version_description_command_works_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command in a version's description: the version's own URI, and a local store's
    path made absolute (pasted in another directory it must reach the same store)."""
    from acgan.registry.register import generate_command

    monkeypatch.chdir(tmp_path)
    cmd = generate_command("acgan-synthetic", 3, "sqlite:///mlflow.db")
    assert cmd.startswith(f"MLFLOW_TRACKING_URI=sqlite:///{tmp_path}/mlflow.db acgan generate ")
    assert "--model models:/acgan-synthetic/3 " in cmd
    server = generate_command("my gan", 1, "http://mlflow:5000")
    assert server.startswith("MLFLOW_TRACKING_URI=http://mlflow:5000 ")
    assert "--model 'models:/my gan/1'" in server  # quoted for the shell
