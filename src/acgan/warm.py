"""A warm ``acgan`` server: the stages of one ``dvc repro`` skip the interpreter start and the
heavy imports.

``dvc repro`` runs every stage of ``dvc.yaml`` as a new ``acgan`` process, and each one spends
about 10 s on a 2-core CPU importing torch, torchvision, torchmetrics and MLflow before it does
any work (``python -m benchmarks.pipeline_overhead`` shows it per stage). ``acgan warm --socket
S`` imports them once, listens on the Unix socket S and forks a child per request. An ``acgan``
command started with ``ACGAN_WARM=S`` in its environment hands the server its arguments,
working directory, environment and stdin/stdout/stderr (the file descriptors themselves, so
progress bars, pipes and redirections behave as in a process of its own), forwards SIGINT and
SIGTERM to the child and exits with the child's status. Without the variable, or with nothing
listening at S, the command runs in its own process as always. ``make demo`` starts a server
around ``dvc repro``.

Forking is safe because the server only imports: it runs no tensor operation (no OpenMP or
CUDA state exists yet to be copied) and opens no tracking store; each child configures logging,
reads its environment and opens its stores as a fresh process would.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ENV = "ACGAN_WARM"
# What the stages import, in the order they would (a failed optional import is skipped).
PRELOAD = (
    "torch",
    "torchvision",
    "torchmetrics",
    "mlflow",
    "pyarrow.parquet",
    "acgan.data.ingest",
    "acgan.data.splits",
    "acgan.train",
    "acgan.monitor",
    "acgan.evaluation.stage",
    "acgan.registry.register",
    "acgan.registry.generate",
    "acgan.tracking",
)
_HEADER = struct.Struct("!Q")  # length of the JSON request that follows


def _log(msg: str) -> None:
    print(f"acgan warm: {msg}", file=sys.stderr, flush=True)


def _read_exact(conn: socket.socket, n: int, head: bytes = b"") -> bytes:
    buf = bytearray(head)
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("client went away")
        buf += chunk
    return bytes(buf)


# --- server -------------------------------------------------------------------------------


def serve(path: Path, idle_timeout: float, run: Callable[[list[str]], None]) -> None:
    """Listen at ``path`` (replacing a stale socket), import :data:`PRELOAD`, then fork one
    child per request that calls ``run(argv)``. Returns after ``idle_timeout`` seconds without
    a request, or on SIGTERM/SIGINT; the socket file is removed either way."""
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)  # clients that come while the imports run wait in the backlog
    try:
        t0 = time.perf_counter()
        for name in PRELOAD:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                _log(f"skipping {name} ({exc})")
        _log(f"ready at {path} (imports {time.perf_counter() - t0:.1f} s)")
        _accept_loop(sock, idle_timeout, run)
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _accept_loop(sock: socket.socket, idle_timeout: float, run: Callable[[list[str]], None]):
    stop = {"now": False}

    def _stop(*_: Any) -> None:
        stop["now"] = True
        sock.close()  # wakes accept()

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps finished children
    sock.settimeout(idle_timeout)
    try:
        while not stop["now"]:
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                _log(f"no request for {idle_timeout:.0f} s, exiting")
                return
            except OSError:
                if stop["now"]:
                    return
                raise
            pid = os.fork()
            if pid == 0:  # the child: never returns into the loop
                sock.close()
                for s in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(s, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                os._exit(_child(conn, run))
            conn.close()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def _child(conn: socket.socket, run: Callable[[list[str]], None]) -> int:
    code = 1
    try:
        head, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
        (n,) = _HEADER.unpack(_read_exact(conn, _HEADER.size, head))
        req = json.loads(_read_exact(conn, n))
        conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        _log(f"pid {os.getpid()}: acgan {' '.join(req['argv'])}")  # in the server's log
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        sys.argv = ["acgan", *req["argv"]]
        code = _call(run, req["argv"])
    except BaseException:  # the server must learn nothing from a child's failure
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            atexit._run_exitfuncs()  # what a process's normal exit runs (logging, MLflow)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
    return code


def _call(run: Callable[[list[str]], None], argv: list[str]) -> int:
    """``run(argv)`` with a process's exit semantics: SystemExit's code, 1 on an exception."""
    try:
        run(argv)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


# --- client -------------------------------------------------------------------------------


def delegate(argv: list[str]) -> int | None:
    """Run ``acgan argv`` in the warm server named by ``$ACGAN_WARM``; returns its exit status,
    or None when there is no server to ask (the caller then runs the command itself)."""
    path = os.environ.get(ENV)
    if not path:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    with sock, _forwarding_signals() as child:
        req = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        socket.send_fds(sock, [_HEADER.pack(len(req))], [0, 1, 2])
        sock.sendall(req)
        reader = sock.makefile("rb")
        for line in reader:
            msg = json.loads(line)
            if "pid" in msg:
                child["pid"] = msg["pid"]
            elif "exit" in msg:
                return int(msg["exit"])
    print(f"acgan: error: the warm server at {path} lost the command", file=sys.stderr)
    return 1


@contextlib.contextmanager
def _forwarding_signals() -> Iterator[dict[str, int | None]]:
    child: dict[str, int | None] = {"pid": None}

    def forward(signum: int, _: Any) -> None:
        if child["pid"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child["pid"], signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield child
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
