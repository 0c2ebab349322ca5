"""The team stack's start-up and a served request's latency, on loopback.

    python -m benchmarks.serving                 # 20 requests of 64 images at 32x32
    python -m benchmarks.serving --requests 50 --images 256

Starts what ``tests/test_team_stack.py`` starts (``tests/services.py``): PostgreSQL, a moto S3
endpoint, ``mlflow server`` on that database (timed on the empty database, where it creates
its schema, and again on the migrated one), registers a two-split ensemble of the default
32x32 generator (trained for a few steps: the cost of a request does not depend on training),
then ``mlflow models serve -m models:/NAME@champion --env-manager local`` and times ``POST
/invocations`` for one row of ``--images`` images (the default PNG answer, and pixel arrays).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from acgan.devices import resolve_device
from benchmarks.common import REPO, load_average, machine, table

sys.path.insert(0, str(REPO / "tests"))  # the loopback services the tests start
from services import mlflow_server, model_server, moto_s3, postgres  # noqa: E402

MODULE = "benchmarks.serving"
NAME = "acgan-bench-serving"
OVERRIDES = [
    "data.source=synthetic",
    "data.resolution=32",
    "data.synthetic_per_class=20",
    "split.classes_per_split=5",
    "split.ids=[0, 1]",
    "split.reference_pairs=10",
    "train.steps=2",
    "train.batch_size=16",
    "train.device=cpu",
    "tracking.enabled=false",
]


def prepare(work: Path) -> dict[str, Path]:
    """Data, splits, two briefly trained splits and an evaluation that passes the gate."""
    from acgan.config import load
    from acgan.data.ingest import ingest
    from acgan.data.splits import make_splits
    from acgan.models.ensemble import write_manifest
    from acgan.train import train_split

    cfg = load(None, OVERRIDES)
    root = work / f"serving-{cfg.fingerprint('data', 'split', 'train')}"
    paths = {"data": root / "ingested", "monitor": root / "monitor", "eval": root / "eval"}
    if not (root / "splits" / "splits.json").is_file():
        ingest(cfg.data, paths["data"], progress=False)
        make_splits(paths["data"], root / "splits", cfg, progress=False)
    members = []
    for sid in cfg.split.ids:
        out = root / f"split_{sid}"
        if not (out / "train.json").is_file():
            train_split(cfg, sid, root / "splits", out, root / "checkpoints", progress=False)
        members.append({"split_id": sid, "model_dir": str(out), "status": "healthy"})
    write_manifest(paths["monitor"], members)
    paths["eval"].mkdir(parents=True, exist_ok=True)
    (paths["eval"] / "metrics.json").write_text(json.dumps({"judge_accuracy": 0.5}))
    (paths["eval"] / "gate.json").write_text(json.dumps({"passed": True, "reasons": []}))
    return paths


def register(paths: dict[str, Path], uri: str, max_images: int) -> float:
    from acgan.config import load
    from acgan.registry.register import register as run_register
    from acgan.tracking import Tracker

    cfg = load(
        None,
        [
            *OVERRIDES,
            "tracking.enabled=true",
            f"tracking.uri={uri}",
            f"registry.model_name={NAME}",
            f"registry.serve_max_images={max_images}",
        ],
    )
    t = time.perf_counter()
    run_register(
        cfg,
        paths["monitor"] / "ensemble.json",
        paths["data"],
        paths["monitor"].parent / "register",
        Tracker(uri, cfg.tracking.experiment),
        monitor_dir=paths["monitor"],
        eval_dir=paths["eval"],
    )
    return time.perf_counter() - t


def time_requests(url: str, images: int, requests_n: int, fmt: str) -> dict[str, float]:
    import requests

    body: dict[str, Any] = {
        "dataframe_split": {"columns": ["class_label", "n", "seed"], "data": [[0, images, 0]]}
    }
    if fmt != "png":
        body["params"] = {"format": fmt}
    times, size = [], 0
    for i in range(requests_n + 1):  # the first one warms the server up, not timed
        body["dataframe_split"]["data"][0][2] = i
        t = time.perf_counter()
        resp = requests.post(f"{url}/invocations", json=body, timeout=600)
        elapsed = time.perf_counter() - t
        resp.raise_for_status()
        size = len(resp.content)
        if i:
            times.append(elapsed)
    times.sort()
    return {
        "median": statistics.median(times),
        "p90": times[min(len(times) - 1, int(0.9 * len(times)))],
        "min": times[0],
        "kib": size / 1024,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=64, help="images per request (one row)")
    p.add_argument("--requests", type=int, default=20, help="timed requests per format")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "acgan-bench")
    a = p.parse_args(argv)
    paths = prepare(a.work)
    rows: list[list[Any]] = []
    t = time.perf_counter()
    with postgres() as pg:
        rows.append(["PostgreSQL: initdb + start", time.perf_counter() - t])
        with moto_s3() as s3, tempfile.TemporaryDirectory(prefix="acgan-serving-") as tmp:
            work = Path(tmp)
            t = time.perf_counter()
            with mlflow_server(work / "cold", s3, backend_store_uri=pg.sqlalchemy_uri):
                rows.append(
                    ["mlflow server, empty database (creates schema)", time.perf_counter() - t]
                )
            t = time.perf_counter()
            with mlflow_server(work / "warm", s3, backend_store_uri=pg.sqlalchemy_uri) as server:
                rows.append(["mlflow server, migrated database", time.perf_counter() - t])
                rows.append(["acgan register (in process)", register(paths, server.url, a.images)])
                t = time.perf_counter()
                with model_server(f"models:/{NAME}@champion", server.url, work / "serve") as ms:
                    rows.append(["mlflow models serve (download + load)", time.perf_counter() - t])
                    figures = {
                        fmt: time_requests(ms.url, a.images, a.requests, fmt)
                        for fmt in ("png", "array")
                    }
    print(table("Start-up (seconds, until the readiness URL answers)", ["what", "s"], rows))
    title = (
        f"POST /invocations: one row of {a.images} images at 32x32, {a.requests} requests each\n"
        f"{machine(resolve_device('cpu'))}; load average {load_average()}"
    )
    header = ["format", "median s", "p90 s", "min s", "response KiB"]
    lines = [[fmt, f["median"], f["p90"], f["min"], f["kib"]] for fmt, f in figures.items()]
    print(table(title, header, lines), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
