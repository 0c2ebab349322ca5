"""Screenshots of what a user sees after `make demo`, taken with headless Chromium.

    python scripts/screenshots.py            # or: make screenshots
    python scripts/screenshots.py --out docs/screenshots --repo .

Starts `mlflow server` on loopback against the demo's store (sqlite:///mlflow.db), opens the
pages the user guide (docs/user-guide.md) describes, and writes one PNG per page:

    runs.png, pipeline-run.png, split-run.png, evaluate-run.png, logged-model.png,
    registered-model.png, model-version.png, monitor-report.png, eval-report.png

Without a Chromium binary it says so and exits 0 (CI has none; nothing depends on these files).
Chromium runs with a fresh profile and with its background networking off: nothing leaves
the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUMS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
# The MLflow UI is a single-page app: give it time to fetch and draw before the shot.
UI_BUDGET_MS = 20_000


HOST = "127.0.0.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"screenshots: mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"screenshots: {url} did not answer within {timeout:.0f} s")


def shoot(chromium: str, url: str, out: Path, size: tuple[int, int], budget_ms: int) -> None:
    with tempfile.TemporaryDirectory(prefix="acgan-chromium-") as profile:
        cmd = [
            chromium,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            f"--virtual-time-budget={budget_ms}",
            f"--screenshot={out}",
            url,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"screenshots: chromium failed on {url}:\n{proc.stderr[-2000:]}")
    print(f"  {out}  <- {url}")


def pages(client: object, repo: Path, ui: str) -> list[tuple[str, str, tuple[int, int]]]:
    """(file name, URL, window size) of every page, found through the demo's records."""
    reg = json.loads((repo / "reports/register/registration.json").read_text())
    name, version = reg["model_name"], reg["version"]
    mv = client.get_model_version(name, version)  # type: ignore[attr-defined]
    parent = client.get_run(reg["pipeline_run_id"])  # type: ignore[attr-defined]
    exp = parent.info.experiment_id
    children = client.search_runs(  # type: ignore[attr-defined]
        [exp], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    split = next(r for r in children if r.data.tags.get("acgan.split") is not None)
    evaluate = next(r for r in children if r.data.tags.get("acgan.stage") == "evaluate")
    run, view = f"{ui}/#/experiments/{exp}/runs", "?workflowType=machine_learning"
    model_id = mv.source.removeprefix("models:/")
    wide, tall = (1440, 1000), (1440, 1300)
    return [
        ("runs.png", f"{run}{view}", wide),
        ("pipeline-run.png", f"{run}/{parent.info.run_id}{view}", tall),
        ("split-run.png", f"{run}/{split.info.run_id}{view}", tall),
        (
            "split-run-samples.png",
            f"{run}/{split.info.run_id}/artifactPath/samples/final.png{view}",
            tall,
        ),
        ("evaluate-run.png", f"{run}/{evaluate.info.run_id}{view}", tall),
        ("logged-model.png", f"{ui}/#/experiments/{exp}/models/{model_id}{view}", wide),
        ("registered-model.png", f"{ui}/#/models/{name}{view}", wide),
        ("model-version.png", f"{ui}/#/models/{name}/versions/{version}{view}", tall),
        ("monitor-report.png", (repo / "reports/monitor/report.html").resolve().as_uri(), tall),
        ("eval-report.png", (repo / "reports/eval/report.html").resolve().as_uri(), (1280, 2400)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("."), help="a finished `make demo`")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    parser.add_argument("--chromium", default=None, help="the browser binary [default: PATH]")
    args = parser.parse_args(argv)

    chromium = args.chromium or next(filter(None, map(shutil.which, CHROMIUMS)), None)
    if chromium is None:
        print(
            "screenshots: skipped, no Chromium found (on Debian: apt-get install chromium); "
            "nothing else needs these pictures"
        )
        return 0
    repo = args.repo.resolve()
    needed = ["mlflow.db", "reports/register/registration.json", "reports/eval/report.html"]
    missing = [n for n in needed if not (repo / n).is_file()]
    if missing:
        print(f"screenshots: {repo} has no {', '.join(missing)}; run `make demo` first")
        return 2

    from mlflow import MlflowClient

    port = free_port()
    # Loopback, but not 127.0.0.1: on a fresh profile the UI opens its Assistant panel over a
    # third of every page when the server's host is 127.0.0.1/localhost (a user closes it
    # once); the server must then accept that host and origin.
    host = f"{HOST}:{port}"
    ui = f"http://{host}"
    store = f"sqlite:///{repo / 'mlflow.db'}"
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [str(mlflow_bin), "server", "--backend-store-uri", store, "--host", HOST]
    cmd += ["--allowed-hosts", host, "--cors-allowed-origins", ui]
    server = subprocess.Popen(
        [*cmd, "--port", str(port), "--workers", "1"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_http(f"{ui}/health", 120, server)
        args.out.mkdir(parents=True, exist_ok=True)
        print(f"screenshots of {repo} (MLflow UI at {ui}) -> {args.out}")
        for file, url, size in pages(MlflowClient(store), repo, ui):
            budget = UI_BUDGET_MS if url.startswith("http") else 2_000
            shoot(chromium, url, args.out / file, size, budget)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
