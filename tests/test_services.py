"""The real services: an S3 endpoint (moto server), an `mlflow server` storing artifacts in it,
and a DVC S3 remote on the same endpoint. Registration, alias moves and `acgan generate` from
``models:/…@champion`` all go through the server; the model files end up in S3.

The servers start once for this module (the MLflow server boots while the tiny model trains).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from conftest import SMALL_OVERRIDES, TINY_TRAIN, TinyPipeline
from services import MlflowServer, MotoS3, mlflow_server, moto_s3, s3_env
from test_registry import make_run, perturbed_copy, tree_digest

from acgan.config import Config, load
from acgan.errors import AcganError
from acgan.models.ensemble import GENERATOR_FILE

pytestmark = pytest.mark.slow
NAME = "acgan-services"
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Services:
    s3: MotoS3
    mlflow: MlflowServer
    trained: TinyPipeline


@pytest.fixture(scope="module")
def services(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Services]:
    trained: list[TinyPipeline] = []
    with (
        moto_s3() as s3,
        mlflow_server(
            tmp_path_factory.mktemp("mlflow-server"),
            s3,
            while_starting=lambda: trained.append(request.getfixturevalue("tiny_trained")),
        ) as server,
    ):
        yield Services(s3, server, trained[0])


@pytest.fixture(scope="module")
def cfg(services: Services) -> Config:
    return load(
        None,
        [
            *SMALL_OVERRIDES,
            *TINY_TRAIN,
            "tracking.enabled=true",
            f"tracking.uri={services.mlflow.url}",
            f"registry.model_name={NAME}",
            "registry.retries=2",
            "registry.retry_backoff_s=0.2",
        ],
    )


@pytest.fixture(scope="module")
def do_register(cfg: Config, services: Services) -> Callable[..., Any]:
    from acgan.registry.register import register
    from acgan.tracking import Tracker

    def _do(root: Path) -> Any:
        return register(
            cfg,
            root / "monitor" / "ensemble.json",
            services.trained.ingested,
            root / "register",
            Tracker(cfg.tracking.uri, cfg.tracking.experiment),
            monitor_dir=root / "monitor",
            eval_dir=root / "eval",
        )

    return _do


def acgan_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "acgan"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_register_promote_and_generate_through_the_server(
    services: Services, do_register: Callable[..., Any], tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    trained = services.trained
    client = MlflowClient(services.mlflow.url)
    v1 = do_register(make_run(tmp_path / "r1", trained.model_dirs, 0.5, True))
    assert (v1.version, v1.champion, v1.created) == (1, True, True)
    again = do_register(make_run(tmp_path / "r1b", trained.model_dirs, 0.5, True))
    assert (again.version, again.created) == (1, False)  # same training run: no new version
    worse = tuple(perturbed_copy(d, tmp_path / "w" / d.name, 1e-3) for d in trained.model_dirs)
    v2 = do_register(make_run(tmp_path / "r2", worse, 0.4, True))
    better = tuple(perturbed_copy(d, tmp_path / "b" / d.name, 2e-3) for d in trained.model_dirs)
    v3 = do_register(make_run(tmp_path / "r3", better, 0.7, True))
    assert (v2.version, v2.champion, v3.version, v3.champion) == (2, False, 3, True)
    aliases = client.get_registered_model(NAME).aliases  # REST gives versions as strings
    assert {k: int(v) for k, v in aliases.items()} == {"champion": 3, "candidate": 3}
    tags = client.get_model_version(NAME, 3).tags
    assert (tags["acgan.champion_figure"], tags["acgan.candidate_figure"]) == ("0.5", "0.7")
    assert len(client.search_model_versions(f"name='{NAME}'")) == 3

    # the model files live in S3 (through the server's artifact proxy), without pickles
    keys = services.s3.keys(services.mlflow.artifacts.split("/", 3)[3])
    model_id = client.get_model_version(NAME, 3).source.split("/")[-1]
    mine = [k for k in keys if model_id in k]
    assert sum(k.endswith(GENERATOR_FILE) for k in mine) == 2
    assert any(k.endswith("model_code.py") for k in mine)
    assert not [k for k in keys if k.endswith((".pkl", ".pickle"))]

    # `acgan generate` from the champion, as a user runs it: only the tracking URI is needed
    out = tmp_path / "gen"
    proc = acgan_cli(
        "generate",
        "--model",
        f"models:/{NAME}@champion",
        "--n",
        "3",
        "--out",
        str(out),
        "--grid",
        str(out / "grid.png"),
        env={"MLFLOW_TRACKING_URI": services.mlflow.url},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = json.loads((trained.ingested / "manifest.json").read_text())["class_names"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(names)
    assert all(len(list((out / n).glob("*.png"))) == 3 for n in names)
    assert (out / "grid.png").stat().st_size > 0


def _rest(server: MlflowServer, path: str, **query: str) -> dict[str, Any]:
    """GET an MLflow REST endpoint, as the UI's pages do."""
    from urllib.parse import urlencode
    from urllib.request import urlopen

    with urlopen(f"{server.url}/api/2.0/mlflow/{path}?{urlencode(query)}", timeout=30) as r:
        return dict(json.loads(r.read()))


def test_rest_api_shows_what_the_ui_pages_show(
    services: Services, cfg: Config, tmp_path: Path
) -> None:
    """The pages of docs/user-guide.md, through the REST API the UI reads: the pipeline's
    parent run FINISHED with the headline figures, the version and its logged model linked
    both ways, the aliases, the runs' source and the experiment's model-training view."""
    from acgan.lineage import make_tracker
    from acgan.registry.register import register

    dirs = tuple(
        perturbed_copy(d, tmp_path / "m" / d.name, 7e-3) for d in services.trained.model_dirs
    )
    # 0.75: above the champion of the test before, below the outage test's 0.8 after it
    root = make_run(tmp_path / "r", dirs, 0.75, True)
    tracker = make_tracker(cfg.tracking, "t")
    res = register(
        cfg, root / "monitor", services.trained.ingested, root / "register", tracker,
        monitor_dir=root / "monitor", eval_dir=root / "eval",
    )  # fmt: skip
    rec = json.loads((root / "register" / "registration.json").read_text())
    figures = json.loads((root / "eval" / "metrics.json").read_text())

    parent = _rest(services.mlflow, "runs/get", run_id=rec["pipeline_run_id"])["run"]
    assert parent["info"]["status"] == "FINISHED" and parent["info"]["end_time"]
    metrics = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
    assert metrics["judge_accuracy"] == 0.75 and metrics["fid"] == figures["fid"]
    tags = {t["key"]: t["value"] for t in parent["data"]["tags"]}
    assert tags["acgan.model_uri"] == f"models:/{NAME}/{res.version}"
    assert tags["acgan.gate"] == "passed" and "champion" in tags["acgan.aliases"]

    version = _rest(services.mlflow, "model-versions/get", name=NAME, version=str(res.version))
    mv = version["model_version"]
    assert mv["run_id"] == res.run_id and mv["source"].startswith("models:/m-")
    assert f"--model models:/{NAME}/{res.version} " in mv["description"]
    logged = _rest(services.mlflow, f"logged-models/{mv['source'].removeprefix('models:/')}")
    model = logged["model"]
    assert model["info"]["source_run_id"] == res.run_id
    linked = {t["key"]: t["value"] for t in model["info"]["tags"]}["mlflow.modelVersions"]
    # MLflow's own entry (a server that knows the version's model id) has a number, ours text
    assert (NAME, str(res.version)) in {(e["name"], str(e["version"])) for e in json.loads(linked)}

    registered = _rest(services.mlflow, "registered-models/get", name=NAME)["registered_model"]
    aliases = {a["alias"]: a["version"] for a in registered["aliases"]}
    assert aliases == {"candidate": str(res.version), "champion": str(res.version)}

    run = _rest(services.mlflow, "runs/get", run_id=res.run_id)["run"]
    run_tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert run["info"]["status"] == "FINISHED" and run_tags["mlflow.source.name"] == "t"
    exp = _rest(services.mlflow, "experiments/get", experiment_id=run["info"]["experiment_id"])
    exp_tags = {t["key"]: t["value"] for t in exp["experiment"]["tags"]}
    assert exp_tags["mlflow.experimentKind"] == "custom_model_development"


def test_outages_fail_cleanly_and_leave_no_version(
    services: Services,
    do_register: Callable[..., Any],
    cfg: Config,
    tmp_path: Path,
) -> None:
    from mlflow import MlflowClient

    from acgan.lineage import make_tracker
    from acgan.registry.register import register

    client = MlflowClient(services.mlflow.url)
    n_before = len(client.search_model_versions(f"name='{NAME}'"))
    dirs = tuple(
        perturbed_copy(d, tmp_path / "m" / d.name, 5e-3) for d in services.trained.model_dirs
    )
    before = tree_digest(*dirs)
    root = make_run(tmp_path / "r", dirs, 0.8, True)
    with services.s3.outage(), pytest.raises(AcganError, match=r"failed after \d attempt") as err:
        do_register(root)  # the server is up, its artifact store is not
    assert "\n" not in str(err.value)
    assert len(client.search_model_versions(f"name='{NAME}'")) == n_before
    assert tree_digest(*dirs) == before and not (root / "register").exists()

    # the MLflow server itself unreachable: one clear line, nothing written
    dead = load(None, [*SMALL_OVERRIDES, "tracking.uri=http://127.0.0.1:9"])
    with pytest.raises(AcganError, match=r"http://127.0.0.1:9"):
        tracker = make_tracker(replace(dead.tracking, enabled=True, deadline_s=3.0))
        register(dead, root / "monitor", services.trained.ingested, root / "register", tracker)
    assert not (root / "register").exists()

    # with S3 back, the same registration goes through
    res = do_register(root)
    assert res.created and res.version == n_before + 1 and res.champion


def test_tampered_file_in_s3_is_named_by_generate(
    services: Services,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mlflow import MlflowClient

    from acgan.cli import main

    client = MlflowClient(services.mlflow.url)
    try:
        mv = client.get_model_version_by_alias(NAME, "champion")
    except Exception:
        pytest.skip("needs the registrations of the tests above")
    model_id = mv.source.split("/")[-1]
    s3 = services.s3.client()
    keys = [k for k in services.s3.keys() if model_id in k]  # noqa: SIM118 (a method)
    key = sorted(k for k in keys if k.endswith(GENERATOR_FILE))[-1]
    original = s3.get_object(Bucket=services.s3.bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=services.s3.bucket, Key=key, Body=original[: len(original) // 3])
    members_key = next(k for k in keys if k.endswith("members.json"))
    members = json.loads(s3.get_object(Bucket=services.s3.bucket, Key=members_key)["Body"].read())
    digest = hashlib.sha256(original).hexdigest()
    sid = next(m["split_id"] for m in members if m["sha256"] == digest)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", services.mlflow.url)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["generate", "--model", f"models:/{NAME}@champion", "--out", str(tmp_path / "g")])
    finally:
        s3.put_object(Bucket=services.s3.bucket, Key=key, Body=original)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2
    assert last.startswith(f"acgan: error: split {sid}: generator file")
    assert "tampered or truncated" in last
    assert not (tmp_path / "g").exists()


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_dvc_s3_remote_round_trip(services: Services, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, **s3_env(services.s3), "GIT_AUTHOR_NAME": "t", "GIT_COMMITTER_NAME": "t"}
    env.update({"GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_EMAIL": "t@example.com"})

    def run(*cmd: str) -> str:
        proc = subprocess.run(
            list(cmd), cwd=repo, env=env, capture_output=True, text=True, timeout=180
        )
        assert proc.returncode == 0, f"{cmd}: {proc.stdout[-1500:]}{proc.stderr[-1500:]}"
        return proc.stdout

    dvc = str(BIN / "dvc")
    run("git", "init", "-q")
    run(dvc, "init", "-q")
    shutil.copytree(services.trained.ingested, repo / "data" / "ingested")
    shutil.copytree(services.trained.model_dirs[0], repo / "models" / "split_0")
    want = {d: _digests(repo / d) for d in ("data/ingested", "models/split_0")}
    run(dvc, "add", "-q", "data/ingested", "models/split_0")
    run(dvc, "remote", "add", "-d", "storage", f"s3://{services.s3.bucket}/dvc")
    run(dvc, "remote", "modify", "storage", "endpointurl", services.s3.url)
    run(dvc, "push", "-q")
    assert any(k.startswith("dvc/files/md5/") for k in services.s3.keys("dvc/"))

    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data" / "ingested")
    shutil.rmtree(repo / "models" / "split_0")
    run(dvc, "pull", "-q")
    assert {d: _digests(repo / d) for d in want} == want
