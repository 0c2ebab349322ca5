"""``acgan warm``: commands run with ``ACGAN_WARM`` fork from a real server process and behave
as in a process of their own (output, exit status, working directory); without a server they
run in their own process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ACGAN = str(Path(sys.executable).parent / "acgan")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("warm")
    sock, log = root / "s.sock", root / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [ACGAN, "warm", "--socket", str(sock), "--idle-timeout", "600"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 180
    while "ready at" not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the warm server did not get ready"
        time.sleep(0.2)
    yield sock, log
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not sock.exists()  # it removes its socket


def _acgan(args: list[str], cwd: Path, sock: Path | str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ACGAN_WARM"}
    if sock is not None:
        env["ACGAN_WARM"] = str(sock)
    return subprocess.run(
        [ACGAN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_a_command_runs_in_the_server_with_its_own_cwd(server, tmp_path: Path) -> None:
    sock, log = server
    (tmp_path / "params.yaml").write_text("train:\n  steps: 11\n")
    res = _acgan(["config", "--set", "train.batch_size=7"], tmp_path, sock)
    assert res.returncode == 0, res.stderr
    assert '"steps": 11' in res.stdout  # read params.yaml from the client's directory
    assert '"batch_size": 7' in res.stdout
    assert "acgan config --set train.batch_size=7" in log.read_text()  # ran in the server


def test_bad_input_keeps_its_exit_status_and_message(server, tmp_path: Path) -> None:
    sock, log = server
    res = _acgan(["config", "--set", "nosuch.key=1"], tmp_path, sock)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("acgan: error:") and "nosuch" in lines[0]
    assert "acgan config --set nosuch.key=1" in log.read_text()
    usage = _acgan(["train"], tmp_path, sock)  # click's usage error: its own status, 2
    assert usage.returncode == 2 and "Missing option '--split'" in usage.stderr


def test_without_a_server_the_command_runs_itself(tmp_path: Path) -> None:
    res = _acgan(["config", "--set", "train.steps=3"], tmp_path, tmp_path / "nothing.sock")
    assert res.returncode == 0 and '"steps": 3' in res.stdout
