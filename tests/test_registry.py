"""Registration, the champion rule, the pyfunc model and `acgan generate` on the embedded
MLflow store (sqlite + local artifacts: what `dvc repro` uses by default).

The registry tests share one store (module scope) and run in file order: v1 becomes the
champion, later versions move it only by the rule.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import SMALL_OVERRIDES, TINY_TRAIN, TinyPipeline
from PIL import Image

from acgan import checkpoint
from acgan.config import Config, load
from acgan.errors import AcganError, RegistryError
from acgan.io import file_sha256
from acgan.models.ensemble import GENERATOR_FILE, write_manifest
from acgan.registry.rules import decide
from acgan.tracking import NullTracker, Tracker

# turn_timeout_s: a version left unfinished (as a killed process leaves it) is taken over after
# a second instead of a minute
REG = ("registry.retries=2", "registry.retry_backoff_s=0.01", "registry.turn_timeout_s=1")


# --- the rule, as a pure function -------------------------------------------------------------


@pytest.mark.parametrize(
    ("gate", "fig", "champ", "champ_fig", "gib", "promote", "words"),
    [
        (False, 0.9, None, None, True, False, "gate failed: FID too high"),
        (True, None, None, None, True, True, "first version"),
        (True, 0.6, 1, 0.5, True, True, "beats"),
        (True, 0.5, 1, 0.5, True, False, "ties"),
        (True, 0.4, 1, 0.5, True, False, "does not beat"),
        (True, 0.4, 1, 0.5, False, True, "beats"),  # lower is better (e.g. FID)
        (True, None, 1, 0.5, True, False, "no judge_accuracy figure"),
        (True, 0.4, 1, None, True, True, "has no judge_accuracy figure"),
    ],
)
def test_champion_rule(
    gate: bool,
    fig: float | None,
    champ: int | None,
    champ_fig: float | None,
    gib: bool,
    promote: bool,
    words: str,
) -> None:
    d = decide(
        gate_passed=gate,
        gate_reasons=["FID too high"],
        metric="judge_accuracy",
        greater_is_better=gib,
        version=2,
        figure=fig,
        champion_version=champ,
        champion_figure=champ_fig,
    )
    assert d.promote is promote and words in d.reason
    assert decide(
        gate_passed=True,
        gate_reasons=[],
        metric="m",
        greater_is_better=True,
        version=3,
        figure=0.1,
        champion_version=3,
        champion_figure=0.9,
    ).champion


# --- helpers ----------------------------------------------------------------------------------


def tree_digest(*dirs: Path) -> str:
    """One hash of every file under ``dirs`` (to prove training outputs are untouched)."""
    h = hashlib.sha256()
    for d in dirs:
        for p in sorted(d.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(d)).encode() + p.read_bytes())
    return h.hexdigest()


def perturbed_copy(src: Path, dst: Path, scale: float) -> Path:
    """Another "training run": the split's files with its generator weights nudged."""
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_file():
            (dst / p.name).write_bytes(p.read_bytes())
    rec = checkpoint.load(dst / GENERATOR_FILE)
    rec["state_dict"] = {
        k: v * (1 + scale) if v.is_floating_point() else v for k, v in rec["state_dict"].items()
    }
    checkpoint.save(rec, dst / GENERATOR_FILE)
    train = json.loads((dst / "train.json").read_text())  # a run records what it wrote
    train["generator_sha256"] = file_sha256(dst / GENERATOR_FILE)
    (dst / "train.json").write_text(json.dumps(train))
    return dst


def make_run(root: Path, dirs: tuple[Path, ...], accuracy: float | None, passed: bool) -> Path:
    """An ensemble manifest plus an evaluation report for it, under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    write_manifest(
        root / "monitor",
        [{"split_id": i, "model_dir": str(d), "status": "healthy"} for i, d in enumerate(dirs)],
    )
    (root / "monitor" / "monitor.json").write_text(
        json.dumps({"splits": {str(i): {"status": "healthy"} for i in range(len(dirs))}})
    )
    (root / "eval").mkdir(exist_ok=True)
    metrics: dict[str, Any] = {"fid": 120.0, "per_class": {"0": {"accuracy": 0.1}}}
    if accuracy is not None:
        metrics["judge_accuracy"] = accuracy
    (root / "eval" / "metrics.json").write_text(json.dumps(metrics))
    reasons = [] if passed else ["judge_accuracy below eval.min_accuracy"]
    (root / "eval" / "gate.json").write_text(json.dumps({"passed": passed, "reasons": reasons}))
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An embedded MLflow store (sqlite backend, artifacts in a local directory)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def cfg(store: str) -> Config:
    return load(
        None,
        [
            *SMALL_OVERRIDES,
            *TINY_TRAIN,
            *REG,
            "tracking.enabled=true",
            f"tracking.uri={store}",
            "registry.model_name=acgan-test",
        ],
    )


@pytest.fixture(scope="module")
def tracker(cfg: Config) -> Tracker:
    # The experiment's artifact root is ./mlruns of the directory it is created in: the
    # store's own directory, not the repository.
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(Path(cfg.tracking.uri.removeprefix("sqlite:///")).parent)
        return Tracker(cfg.tracking.uri, cfg.tracking.experiment)


def register_run(cfg: Config, root: Path, ingested: Path, tracker: Any) -> Any:
    """``register()`` of what :func:`make_run` wrote under ``root`` (into ``root/register``)."""
    from acgan.registry.register import register

    return register(
        cfg,
        root / "monitor" / "ensemble.json",
        ingested,
        root / "register",
        tracker,
        monitor_dir=root / "monitor",
        eval_dir=root / "eval",
    )


@pytest.fixture(scope="module")
def do_register(cfg: Config, tracker: Tracker, tiny_trained: TinyPipeline) -> Callable[..., Any]:
    def _do(root: Path, c: Config | None = None, tr: Any = None) -> Any:
        return register_run(c or cfg, root, tiny_trained.ingested, tr or tracker)

    return _do


# --- registration through the embedded store --------------------------------------------------


@pytest.fixture(scope="module")
def first(
    do_register: Callable[..., Any],
    tiny_trained: TinyPipeline,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Any, Path, str]:
    """Version 1: the first registration into the empty store."""
    before = tree_digest(*tiny_trained.model_dirs)
    root = make_run(tmp_path_factory.mktemp("r1"), tiny_trained.model_dirs, 0.5, True)
    return do_register(root), root, before


def test_first_version_becomes_champion_with_lineage(
    first: tuple[Any, Path, str],
    tiny_trained: TinyPipeline,
    tracker: Tracker,
    tmp_path: Path,
) -> None:
    res, root, before = first
    assert (res.version, res.champion, res.decision, res.created) == (1, True, "promoted", True)
    client = tracker.client
    mv = client.get_model_version("acgan-test", 1)
    assert sorted(mv.aliases) == ["candidate", "champion"]
    data_hash = json.loads((tiny_trained.ingested / "manifest.json").read_text())["content_hash"]
    assert mv.tags["acgan.data_hash"] == data_hash
    assert mv.tags["acgan.git_commit"]
    plan = json.loads(mv.tags["acgan.split_plan"])
    assert sorted(plan) == ["0", "1"] and len(plan["0"]) == 5
    assert json.loads(mv.tags["acgan.split_health"]) == {"0": "healthy", "1": "healthy"}
    assert float(mv.tags["acgan.metric.judge_accuracy"]) == 0.5
    assert "acgan.metric.per_class" not in mv.tags  # only top-level figures
    assert "2 splits x 6 steps x 16 images/step" in mv.tags["acgan.budget"]
    assert mv.tags["acgan.decision"] == "promoted" and mv.tags["acgan.champion_figure"] == "none"
    assert mv.tags["acgan.registration_complete"] == "true"
    assert "AC-GAN ensemble" in mv.description
    rec = json.loads((root / "register" / "registration.json").read_text())
    assert rec["version"] == 1 and rec["champion"] and rec["model_uri"] == "models:/acgan-test/1"
    # the version and its logged model point at each other (the UI shows both links) ...
    logged = client.get_logged_model(mv.source.removeprefix("models:/"))
    listed = json.loads(logged.tags["mlflow.modelVersions"])
    assert listed == [{"name": "acgan-test", "version": "1"}]
    assert logged.source_run_id == res.run_id == mv.run_id
    # ... the description's command names this version, and the pipeline's run is over
    assert "acgan generate --model models:/acgan-test/1 --classes 0,1" in mv.description
    assert (
        rec["generate"] in mv.description and "/versions/1?workflowType" in rec["links"]["version"]
    )
    parent = client.get_run(rec["pipeline_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["acgan.model_uri"] == "models:/acgan-test/1"
    assert Image.open(root / "register" / "samples.png").size[0] > 0
    # the logged model is code + weights: no pickle anywhere, and it has its signature
    local = Path(client.download_artifacts(res.run_id, "", str(tmp_path / "dl")))
    assert "samples" in {p.name for p in local.iterdir()}  # the sample grid in the source run
    import mlflow

    model_dir = Path(mlflow.artifacts.download_artifacts(mv.source, dst_path=str(tmp_path / "m")))
    files = {p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]
    assert "model_code.py" in files and "input_example.json" in files
    assert sum(f.endswith(GENERATOR_FILE) for f in files) == 2
    mlmodel = (model_dir / "MLmodel").read_text()
    assert "mlflow.pyfunc.loaders.code_model" in mlmodel and "signature:" in mlmodel
    assert tree_digest(*tiny_trained.model_dirs) == before  # training outputs untouched


def test_same_training_run_twice_makes_no_second_version(
    first: Any,
    do_register: Callable[..., Any],
    tiny_trained: TinyPipeline,
    tracker: Tracker,
    tmp_path: Path,
) -> None:
    client = tracker.client
    # as a registration killed after creating the version leaves it: no alias, no final tag
    client.delete_registered_model_alias("acgan-test", "candidate")
    client.delete_model_version_tag("acgan-test", 1, "acgan.registration_complete")
    root = make_run(tmp_path / "again", tiny_trained.model_dirs, 0.5, True)
    # a newer evaluation of the same generators: its figures replace the version's old ones
    (root / "eval" / "metrics.json").write_text('{"judge_accuracy": 0.5, "is": 2.5}')
    res = do_register(root)
    assert (res.version, res.created) == (1, False)
    assert "candidate" in client.get_model_version("acgan-test", 1).aliases  # finished now
    champion = tracker.client.get_registered_model("acgan-test").aliases["champion"]
    assert res.champion is (champion == 1)
    assert len(tracker.client.search_model_versions("name='acgan-test'")) == 1
    tags = tracker.client.get_model_version("acgan-test", 1).tags
    assert tags["acgan.metric.is"] == "2.5" and "acgan.metric.fid" not in tags


def test_champion_moves_only_on_gate_and_a_better_figure(
    first: Any,
    do_register: Callable[..., Any],
    tiny_trained: TinyPipeline,
    tracker: Tracker,
    tmp_path: Path,
) -> None:
    client = tracker.client
    cases = [  # (figure, gate passed, champion afterwards); "worse" is in test_champion_rule
        (0.5, True, 1),  # tie: the old champion stays
        (0.9, False, 1),  # better but the gate failed
        (0.6, True, None),  # better and passed: promoted (None = this version)
    ]
    for i, (fig, passed, champ) in enumerate(cases):
        dirs = tuple(
            perturbed_copy(d, tmp_path / f"v{i}" / d.name, 1e-3 * (i + 1))
            for d in tiny_trained.model_dirs
        )
        res = do_register(make_run(tmp_path / f"run{i}", dirs, fig, passed))
        assert res.created
        expect = res.version if champ is None else champ
        aliases = client.get_registered_model("acgan-test").aliases
        assert {k: int(v) for k, v in aliases.items()} == {
            "champion": expect,
            "candidate": res.version,
        }
        mv = client.get_model_version("acgan-test", res.version)
        assert mv.tags["acgan.candidate_figure"] == f"{fig:.6g}"
        assert mv.tags["acgan.champion_figure"] == "0.5"
        assert mv.tags["acgan.decision"] == ("promoted" if champ is None else "kept")
        assert res.champion is (champ is None)
    assert (
        "gate failed: judge_accuracy below"
        in client.get_model_version("acgan-test", 3).tags["acgan.decision_reason"]
    )
    # the first ensemble registered again: its old version, and no alias moves back to it
    root = make_run(tmp_path / "old", tiny_trained.model_dirs, 0.5, True)
    again = do_register(root)
    assert (again.version, again.created, again.champion) == (1, False, False)
    aliases = client.get_registered_model("acgan-test").aliases
    assert {k: int(v) for k, v in aliases.items()} == {"champion": 4, "candidate": 4}
    assert json.loads((root / "register" / "registration.json").read_text())["aliases"] == []


def test_failure_after_version_creation_leaves_no_version(
    first: Any,
    do_register: Callable[..., Any],
    tiny_trained: TinyPipeline,
    tracker: Tracker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow import MlflowClient

    calls = []

    def unreachable(self: Any, *args: Any) -> None:  # the server going away mid-registration
        calls.append(args)
        raise ConnectionError("connection refused")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", unreachable)
    dirs = tuple(perturbed_copy(d, tmp_path / d.name, 0.5) for d in tiny_trained.model_dirs)
    before = tree_digest(*dirs)
    n_before = len(tracker.client.search_model_versions("name='acgan-test'"))
    root = make_run(tmp_path / "r", dirs, 0.99, True)
    with pytest.raises(RegistryError, match="set alias candidate failed after 2 attempt") as err:
        do_register(root)
    assert "\n" not in str(err.value) and len(calls) == 2  # bounded retries, one line
    assert len(tracker.client.search_model_versions("name='acgan-test'")) == n_before
    assert not (root / "register" / "registration.json").exists()
    assert tree_digest(*dirs) == before


# --- registration switched off and bad input --------------------------------------------------


def test_register_is_skipped_without_tracking(
    tiny_trained: TinyPipeline, tmp_path: Path, make_cfg: Callable[..., Config]
) -> None:
    from acgan.registry.register import register

    root = make_run(tmp_path / "r", tiny_trained.model_dirs, 0.5, True)
    res = register(make_cfg(), root / "monitor", tiny_trained.ingested, root / "reg", NullTracker())
    assert res.version is None and res.decision == "skipped"
    rec = json.loads((root / "reg" / "registration.json").read_text())
    assert rec["registered"] is False and "tracking.enabled" in rec["reason"]
    assert rec["gate"]["source"].startswith("all splits trained")


def test_bad_inputs_fail_in_one_line(
    tiny_trained: TinyPipeline, tmp_path: Path, make_cfg: Callable[..., Config]
) -> None:
    from acgan.registry.register import register

    root = make_run(tmp_path / "r", tiny_trained.model_dirs, 0.5, True)
    (root / "eval" / "gate.json").write_text('{"ok": 1}')
    with pytest.raises(AcganError, match=r"gate.json: expected"):
        register(
            make_cfg(),
            root / "monitor",
            tiny_trained.ingested,
            root / "o",
            NullTracker(),
            eval_dir=root / "eval",
        )
    with pytest.raises(AcganError, match=r"not a readable ensemble manifest"):
        register(
            make_cfg(), tmp_path / "nope.json", tiny_trained.ingested, root / "o", NullTracker()
        )
