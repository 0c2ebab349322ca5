"""The team stack on loopback: a real PostgreSQL server, `mlflow server` on it with its artifacts
in S3 (moto), `mlflow models serve` for the champion, and concurrent `acgan register` runs.

The services start once for this module: PostgreSQL (~1 s), the MLflow server (its schema
migrations on an empty database take ~15-20 s, spent training the tiny model when this module
runs first) and the serving process (~10 s). Tests run in file order: the round trip registers
the champion that the serving test serves.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import SMALL_OVERRIDES, TINY_TRAIN, TinyPipeline
from PIL import Image
from services import (
    MlflowServer,
    ModelServer,
    MotoS3,
    Postgres,
    mlflow_server,
    model_server,
    moto_s3,
    postgres,
)
from test_registry import make_run, perturbed_copy, register_run

from acgan.config import Config, load

pytestmark = pytest.mark.slow
NAME = "acgan-team"
BIN = Path(sys.executable).parent
MAX_IMAGES = 64  # registry.serve_max_images of the served versions


@dataclass(frozen=True)
class Stack:
    pg: Postgres
    s3: MotoS3
    mlflow: MlflowServer
    trained: TinyPipeline


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    trained: list[TinyPipeline] = []
    with (
        postgres() as pg,
        moto_s3() as s3,
        mlflow_server(
            tmp_path_factory.mktemp("mlflow-pg"),
            s3,
            backend_store_uri=pg.sqlalchemy_uri,
            workers=2,  # two server processes: concurrent clients really race in the database
            while_starting=lambda: trained.append(request.getfixturevalue("tiny_trained")),
        ) as server,
    ):
        yield Stack(pg, s3, server, trained[0])


def overrides(stack: Stack, name: str) -> list[str]:
    return [
        f"tracking.uri={stack.mlflow.url}",
        f"registry.model_name={name}",
        "registry.retries=3",
        "registry.retry_backoff_s=0.2",
        f"registry.serve_max_images={MAX_IMAGES}",
        "registry.turn_timeout_s=300",  # a loaded CI machine can stall a racer for a while
    ]


@pytest.fixture(scope="module")
def cfg(stack: Stack) -> Config:
    return load(
        None, [*SMALL_OVERRIDES, *TINY_TRAIN, "tracking.enabled=true", *overrides(stack, NAME)]
    )


@pytest.fixture(scope="module")
def do_register(cfg: Config, stack: Stack) -> Callable[..., Any]:
    from acgan.tracking import Tracker

    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment)
    return lambda root: register_run(cfg, root, stack.trained.ingested, tracker)


def aliases(client: Any, name: str) -> dict[str, int]:
    return {k: int(v) for k, v in client.get_registered_model(name).aliases.items()}


# --- the round trip of the sqlite services test, on Postgres ----------------------------------


def test_registration_aliases_and_generate_on_postgres(
    stack: Stack, do_register: Callable[..., Any], tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(stack.mlflow.url)
    dirs = stack.trained.model_dirs
    v1 = do_register(make_run(tmp_path / "r1", dirs, 0.5, True))
    again = do_register(make_run(tmp_path / "r1b", dirs, 0.5, True))
    assert (v1.version, v1.champion, again.version, again.created) == (1, True, 1, False)
    worse = tuple(perturbed_copy(d, tmp_path / "w" / d.name, 1e-3) for d in dirs)
    v2 = do_register(make_run(tmp_path / "r2", worse, 0.4, True))
    assert (v2.version, v2.champion) == (2, False)
    assert aliases(client, NAME) == {"champion": 1, "candidate": 2}
    mv = client.get_model_version(NAME, 2)
    assert mv.tags["acgan.registration_complete"] == "true"
    assert mv.tags["acgan.decision"] == "kept" and mv.tags["acgan.champion_figure"] == "0.5"
    with stack.pg.connect() as conn:  # the registry's rows are in Postgres
        rows = conn.execute("SELECT version FROM model_versions WHERE name = %s", [NAME])
        assert sorted(r[0] for r in rows) == [1, 2]

    out = tmp_path / "gen"
    proc = subprocess.run(
        [str(BIN / "acgan"), "generate", "--model", f"models:/{NAME}@champion"]
        + ["--classes", "0", "--n", "2", "--out", str(out)],
        env={**os.environ, "MLFLOW_TRACKING_URI": stack.mlflow.url},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list(out.rglob("*.png"))) == 2


# --- serving the champion over HTTP -----------------------------------------------------------


@pytest.fixture(scope="module")
def served(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    """`mlflow models serve -m models:/NAME@champion --env-manager local`, as a user runs it."""
    with model_server(
        f"models:/{NAME}@champion", stack.mlflow.url, tmp_path_factory.mktemp("serve")
    ) as server:
        yield server


def invoke(server: ModelServer, rows: list[list[Any]], **extra: Any) -> requests.Response:
    body = {"dataframe_split": {"columns": ["class_label", "n", "seed"], "data": rows}, **extra}
    return requests.post(f"{server.url}/invocations", json=body, timeout=120)


def _tree_rss(pid: int) -> int:
    import psutil

    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


def test_serving_the_champion_answers_pngs_and_refuses_bad_requests(
    stack: Stack, served: ModelServer
) -> None:
    from acgan.models.ensemble import Ensemble
    from acgan.tracking import png_bytes

    names = json.loads((stack.trained.ingested / "manifest.json").read_text())["class_names"]
    resp = invoke(served, [[0, 3, 7], [names[7], 2, 7]])
    assert resp.status_code == 200, resp.text[:500]
    rows = resp.json()["predictions"]
    assert [(r["class_label"], r["class_name"], r["index"]) for r in rows] == [
        (0, names[0], 0),
        (0, names[0], 1),
        (0, names[0], 2),
        (7, names[7], 0),
        (7, names[7], 1),
    ]
    pngs = [base64.b64decode(r["png_base64"]) for r in rows]
    assert Image.open(io.BytesIO(pngs[0])).size == (32, 32)
    # the same seed gives the same bytes: again, and as the champion's files give them locally
    assert [
        r["png_base64"] for r in invoke(served, [[0, 3, 7], [names[7], 2, 7]]).json()["predictions"]
    ] == [r["png_base64"] for r in rows]
    local = Ensemble.load(stack.trained.model_dirs).generate(0, 3, seed=7)
    assert [png_bytes(a) for a in local.permute(0, 2, 3, 1).numpy()] == pngs[:3]
    other = invoke(served, [[0, 3, 8]]).json()["predictions"]
    assert other[0]["png_base64"] != rows[0]["png_base64"]
    arrays = invoke(served, [[0, 3, 7]], params={"format": "array"}).json()["predictions"]
    assert np.array_equal(np.asarray(arrays["images"], np.uint8), local.permute(0, 2, 3, 1))
    assert arrays["labels"] == [0, 0, 0]

    # an unknown class: 400 naming the valid classes
    bad = invoke(served, [["unicorn", 1, 0]])
    assert bad.status_code == 400
    assert bad.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert (
        f"'unicorn' is not in this ensemble; valid classes: 0={names[0]}" in bad.json()["message"]
    )
    # too many images: 400 at once, nothing generated (no memory growth), still serving
    before = _tree_rss(served.pid)
    for rows_asked in ([[0, 10**9, 0]], [[0, MAX_IMAGES, 0], [1, 1, 0]]):
        start = time.monotonic()
        big = invoke(served, rows_asked)
        assert big.status_code == 400 and time.monotonic() - start < 10
        assert f"this model serves at most {MAX_IMAGES} per request" in big.json()["message"]
    assert _tree_rss(served.pid) - before < 50 * 2**20
    for field, value in (("n", 0), ("seed", -1)):
        row = {"class_label": 0, "n": 1, "seed": 0, field: value}
        answer = invoke(served, [[row["class_label"], row["n"], row["seed"]]])
        assert answer.status_code == 400 and f"{field}={value}" in answer.json()["message"]
    full = invoke(served, [[c, MAX_IMAGES // 2, 1] for c in (0, 7)])
    assert full.status_code == 200 and len(full.json()["predictions"]) == MAX_IMAGES


# --- concurrent registrations -----------------------------------------------------------------


def _race(stack: Stack, name: str, runs: list[Path], delays: list[float]) -> list[dict[str, Any]]:
    """Start one `acgan register` per run root, each ``delays[i]`` seconds after the first;
    their registration records, in the order of ``runs``."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": stack.mlflow.url}
    sets = [x for o in overrides(stack, name) for x in ("--set", o)]
    procs: dict[Path, subprocess.Popen[str]] = {}
    t0 = time.monotonic()
    for root, delay in sorted(zip(runs, delays, strict=True), key=lambda t: t[1]):
        time.sleep(max(0.0, t0 + delay - time.monotonic()))
        cmd = [str(BIN / "acgan"), "register", *sets, "--ensemble", str(root / "monitor")]
        cmd += ["--data", str(stack.trained.ingested), "--monitor", str(root / "monitor")]
        cmd += ["--eval", str(root / "eval"), "--out", str(root / "register")]
        procs[root] = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    for proc in procs.values():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    return [json.loads((root / "register" / "registration.json").read_text()) for root in runs]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_concurrent_registrations_make_one_version_and_the_better_champion(
    stack: Stack, tmp_path: Path, seed: int
) -> None:
    """Two `acgan register` of one ensemble and one of another, started together (the order,
    start offsets and which ensemble scores better drawn from ``seed``): exactly one version
    per ensemble, @champion on the better one, @candidate on the newest version."""
    from mlflow import MlflowClient

    rng = random.Random(seed)
    name = f"{NAME}-race-{seed}"
    figures = rng.sample([0.6, 0.7], 2)  # ensemble a's and ensemble b's judge accuracy
    dirs_a = stack.trained.model_dirs
    dirs_b = tuple(perturbed_copy(d, tmp_path / "b" / d.name, 3e-3) for d in dirs_a)
    runs = [
        make_run(tmp_path / "a1", dirs_a, figures[0], True),
        make_run(tmp_path / "a2", dirs_a, figures[0], True),
        make_run(tmp_path / "b", dirs_b, figures[1], True),
    ]
    records = _race(stack, name, runs, [rng.uniform(0.0, 0.3) for _ in runs])

    client = MlflowClient(stack.mlflow.url)
    by_hash: dict[str, list[int]] = {}
    for mv in client.search_model_versions(f"name='{name}'"):
        by_hash.setdefault(mv.tags["acgan.ensemble_hash"], []).append(int(mv.version))
        assert mv.tags["acgan.registration_complete"] == "true"
    hash_a, hash_b = records[0]["ensemble_hash"], records[2]["ensemble_hash"]
    assert sorted(by_hash) == sorted([hash_a, hash_b])
    assert all(len(v) == 1 for v in by_hash.values()), by_hash  # one version per ensemble
    version = {h: v[0] for h, v in by_hash.items()}
    assert {r["version"] for r in records[:2]} == {version[hash_a]}  # both runs agree
    better = hash_a if figures[0] > figures[1] else hash_b
    assert aliases(client, name) == {
        "champion": version[better],
        "candidate": max(version.values()),
    }
    with stack.pg.connect() as conn:  # versions ever created, the removed duplicates included
        created = conn.execute("SELECT count(*) FROM model_versions WHERE name = %s", [name])
        print(f"seed {seed}: {created.fetchone()[0]} versions created for 2 ensembles")
