"""Real services for the tests, on free loopback ports, started and stopped by the tests.

- :func:`moto_s3`: an S3 endpoint (``moto`` in server mode, ``ThreadedMotoServer``) with one
  bucket, reached through boto3, the MLflow server and DVC alike.
- :func:`postgres`: a PostgreSQL server (Debian's ``postgresql`` package, which ``.ci/run``
  installs) in a throw-away data directory, listening on loopback only.
- :func:`mlflow_server`: an ``mlflow server`` subprocess with a sqlite (or the given, e.g.
  Postgres) backend store and ``--artifacts-destination s3://BUCKET/mlflow`` on that endpoint.
  Clients talk only to the server (it proxies artifacts), so they need no S3 credentials; the
  server gets them from :func:`s3_env`.
- :func:`model_server`: ``mlflow models serve`` for a registered model, loaded through the
  tracking server.

All are context managers so any test module (or a ``conftest.py``) can wrap them in fixtures
of the scope it wants; start each once per module or session, the MLflow server needs ~10 s.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
# moto accepts any credentials; real-looking dummy values keep botocore from looking elsewhere
# (~/.aws, instance metadata), which would be slow and could pick up a developer's real keys.
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen[Any] | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: server process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.URLError) as exc:
            last = exc
        time.sleep(0.25)
    raise TimeoutError(f"{url}: no answer within {timeout:.0f} s ({last})")


@dataclass(frozen=True)
class S3Endpoint:
    url: str  # http://127.0.0.1:PORT
    bucket: str

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=DUMMY_AWS["AWS_DEFAULT_REGION"],
            aws_access_key_id=DUMMY_AWS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=DUMMY_AWS["AWS_SECRET_ACCESS_KEY"],
        )

    def keys(self, prefix: str = "") -> list[str]:
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


def s3_env(s3: S3Endpoint) -> dict[str, str]:
    """What a process needs to reach the endpoint: dummy credentials + the endpoint URL."""
    return {**DUMMY_AWS, "MLFLOW_S3_ENDPOINT_URL": s3.url, "AWS_ENDPOINT_URL": s3.url}


class MotoS3(S3Endpoint):
    """An :class:`S3Endpoint` served by an in-process moto server that a test can take down."""

    def __init__(self, url: str, bucket: str, server: Any) -> None:
        super().__init__(url, bucket)
        object.__setattr__(self, "_server", server)

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """Stop answering (connection refused) inside the block; the data survives, because
        moto keeps its state in this process, and the endpoint comes back on the same port."""
        self._server.stop()
        try:
            yield
        finally:
            self._server.start()
            wait_http(f"{self.url}/{self.bucket}", 30)


@contextlib.contextmanager
def moto_s3(bucket: str = "acgan") -> Iterator[MotoS3]:
    """An S3 endpoint on a free loopback port with ``bucket`` created; stopped on exit."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port, verbose=False)
    server.start()
    try:
        s3 = MotoS3(f"http://{LOOPBACK}:{port}", bucket, server)
        s3.client().create_bucket(Bucket=bucket)
        yield s3
    finally:
        server.stop()


@dataclass(frozen=True)
class MlflowServer:
    url: str  # the tracking URI clients use
    s3: S3Endpoint
    artifacts: str  # s3://bucket/prefix the server stores artifacts under
    log: Path  # the server's stdout + stderr
    pid: int = 0  # leads the server's process group (a fault test kills it)


def _stop(proc: subprocess.Popen[Any], grace: float = 3.0) -> None:
    """Stop the server and its workers: it leads its own process group (start_new_session).
    The grace is short: uvicorn waits for idle keep-alive connections of the test's clients,
    and a throw-away sqlite store loses nothing to a SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


@contextlib.contextmanager
def mlflow_server(
    workdir: Path,
    s3: S3Endpoint,
    prefix: str = "mlflow",
    timeout: float = 120.0,
    while_starting: Callable[[], Any] | None = None,
    port: int | None = None,
    backend_store_uri: str | None = None,
    workers: int = 1,
) -> Iterator[MlflowServer]:
    """``mlflow server`` (by default a sqlite store in ``workdir``; artifacts in S3) on a free
    port (or on ``port``: a server restarted on the same store and address).

    ``while_starting`` runs after the process is launched and before it is polled: the ~10 s
    the server needs to come up can be spent on other set-up (training a tiny model)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    artifacts = f"s3://{s3.bucket}/{prefix}"
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(mlflow_bin),
        "server",
        "--backend-store-uri",
        backend_store_uri or f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        artifacts,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        str(workers),  # 2 cores shared with the test process: one worker is plenty
    ]
    # The server's boto3 would retry a dead endpoint for ~10 s per request; one retry keeps
    # outage tests short (the client side has its own bounded retries under test).
    env = {**os.environ, **s3_env(s3), "AWS_MAX_ATTEMPTS": "2", "AWS_RETRY_MODE": "standard"}
    env.pop("MLFLOW_TRACKING_URI", None)
    # MLflow 3's server starts four job-runner processes (GenAI jobs) beside a database-backed
    # store; nothing here uses them, and on 2 cores they slow every start-up
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    url = f"http://{LOOPBACK}:{port}"
    log_path = workdir / "server.log"
    with _process(cmd, env, log_path, f"{url}/health", timeout, while_starting) as proc:
        yield MlflowServer(url, s3, artifacts, log_path, proc.pid)


@contextlib.contextmanager
def _process(
    cmd: list[str],
    env: dict[str, str],
    log_path: Path,
    ready_url: str,
    timeout: float,
    while_starting: Callable[[], Any] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` (output appended to ``log_path``: a restarted server keeps the first one's
    lines) until ``ready_url`` answers; stop it on exit."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=log_path.parent,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        if while_starting is not None:
            while_starting()
        try:
            wait_http(ready_url, timeout, proc)
        except (RuntimeError, TimeoutError) as exc:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{Path(cmd[0]).name} did not start: {exc}\n{tail}") from exc
        yield proc
    finally:
        _stop(proc)


@dataclass(frozen=True)
class ModelServer:
    url: str  # POST {url}/invocations
    pid: int
    log: Path


@contextlib.contextmanager
def model_server(
    model_uri: str, tracking_uri: str, workdir: Path, timeout: float = 180.0
) -> Iterator[ModelServer]:
    """``mlflow models serve -m MODEL_URI --env-manager local`` on a free loopback port; the
    model is downloaded through the tracking server at start-up."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        *("models", "serve", "-m", model_uri, "--env-manager", "local"),
        *("--host", LOOPBACK, "--port", str(port), "--workers", "1"),
    ]
    # it execs `uvicorn` by name: the virtual environment's bin/ must be on PATH
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path}
    url = f"http://{LOOPBACK}:{port}"
    with _process(cmd, env, workdir / "serve.log", f"{url}/ping", timeout) as proc:
        yield ModelServer(url, proc.pid, workdir / "serve.log")


# --- PostgreSQL -------------------------------------------------------------------------------

PG_USER = "mlflow"  # the database superuser initdb creates (trust auth on loopback only)


@dataclass(frozen=True)
class Postgres:
    port: int
    database: str

    @property
    def sqlalchemy_uri(self) -> str:
        """What ``mlflow server --backend-store-uri`` takes (psycopg 3 driver)."""
        return f"postgresql+psycopg://{PG_USER}@{LOOPBACK}:{self.port}/{self.database}"

    def connect(self) -> Any:
        """A psycopg connection (autocommit) to the database, to look at what is stored."""
        import psycopg

        dsn = f"postgresql://{PG_USER}@{LOOPBACK}:{self.port}/{self.database}"
        return psycopg.connect(dsn, autocommit=True)


def postgres_bindir() -> Path:
    """Where ``initdb`` and ``postgres`` live: Debian keeps them off PATH, per major version."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    raise FileNotFoundError(
        "PostgreSQL server binaries (initdb, postgres) not found; install them with "
        "`apt-get install postgresql` (.ci/run does)"
    )


@contextlib.contextmanager
def postgres(database: str = "mlflow", timeout: float = 30.0) -> Iterator[Postgres]:
    """A fresh PostgreSQL cluster on a free loopback port with ``database`` created; stopped
    and deleted on exit. Durability is switched off (fsync): a test database needs speed.

    PostgreSQL refuses to run as root; as root the server runs as Debian's ``postgres`` user,
    in a data directory outside pytest's root-only temporary tree."""
    import psycopg

    bindir = postgres_bindir()
    as_user: dict[str, Any] = {}
    root = Path(tempfile.mkdtemp(prefix="acgan-pg-"))
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    data, log_path = root / "data", root / "postgres.log"
    proc = None
    try:
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust"]
            + ["--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
            **as_user,
        )
        port = free_port()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [str(bindir / "postgres"), "-D", str(data), "-h", LOOPBACK, "-p", str(port)]
                + ["-k", str(root), "-c", "fsync=off", "-c", "synchronous_commit=off"]
                + ["-c", "full_page_writes=off", "-c", "max_connections=200"],
                cwd=root,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **as_user,
            )
        dsn = f"postgresql://{PG_USER}@{LOOPBACK}:{port}/postgres"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
                    conn.execute(f'CREATE DATABASE "{database}"')
                break
            except psycopg.OperationalError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"postgres did not start: {exc}\n{tail}") from exc
                time.sleep(0.1)
        yield Postgres(port, database)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # "fast" shutdown: disconnect clients, stop
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
        shutil.rmtree(root, ignore_errors=True)
