"""The images, checked statically (no Docker engine here): both pipeline Dockerfiles install
this package at pyproject's version with the pinned torch pair and run `acgan`; the MLflow
server image has the PostgreSQL driver; `make images` builds and pushes exactly the tags the
components run (and the server's); the build context leaves data out."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

from components import images  # noqa: E402

DOCKERFILES = {
    "trainer": ROOT / "docker" / "Dockerfile.cuda",
    "step": ROOT / "docker" / "Dockerfile",
}
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _pins() -> dict[str, str]:
    lines = (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_installs_the_package_at_its_version(name: str) -> None:
    ins = _instructions(DOCKERFILES[name])
    assert ins[0][0] == "FROM"
    assert ("ARG", f"ACGAN_VERSION={VERSION}") in ins
    copies = [args for word, args in ins if word == "COPY"]
    assert "pyproject.toml README.md /src/" in copies and "src /src/src" in copies
    runs = " ".join(args for word, args in ins if word == "RUN")
    # the package itself, with CI's pins; the build fails when the installed version differs
    assert "pip install -c /tmp/constraints.txt /src" in runs
    assert 'test "$(acgan --version | awk \'{print $NF}\')" = "${ACGAN_VERSION}"' in runs
    pins = _pins()
    for pkg in ("torch", "torchvision"):
        assert f'"{pkg}=={pins[pkg]}"' in runs, f"{DOCKERFILES[name]}: {pkg} pin != constraints"
    assert ("ENTRYPOINT", '["acgan"]') in ins
    assert ("CMD", '["--help"]') in ins


def test_trainer_image_has_cuda_and_step_image_does_not() -> None:
    trainer = DOCKERFILES["trainer"].read_text()
    step = DOCKERFILES["step"].read_text()
    assert "download.pytorch.org/whl/cpu" in step
    assert "download.pytorch.org/whl/cpu" not in trainer
    assert any(p.startswith("nvidia-cuda-runtime") for p in _pins())  # PyPI torch's CUDA
    assert "NVIDIA_VISIBLE_DEVICES=all" in trainer


def test_entrypoint_runs() -> None:
    """What `docker run IMAGE` runs: `acgan --help` (the console script the images install)."""
    script = Path(sys.executable).with_name("acgan")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "submit" in out.stdout and "compile" in out.stdout


def test_make_images_builds_the_tags_the_components_use() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY", "TAG"))}
    out = subprocess.run(
        ["make", "-n", "images"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    commands = [shlex.split(c) for c in out.stdout.replace("\\\n", " ").splitlines() if c]
    builds = {
        c[c.index("-f") + 1]: c[c.index("-t") + 1] for c in commands if c[:2] == ["docker", "build"]
    }
    pushes = {c[2] for c in commands if c[:2] == ["docker", "push"]}
    assert images.DEFAULT_TAG == VERSION
    default_trainer = f"{images.DEFAULT_REGISTRY}/acgan-trainer:{images.DEFAULT_TAG}"
    default_step = f"{images.DEFAULT_REGISTRY}/acgan-step:{images.DEFAULT_TAG}"
    default_server = f"{images.DEFAULT_REGISTRY}/acgan-mlflow:{images.DEFAULT_TAG}"
    assert builds == {
        "docker/Dockerfile.cuda": default_trainer,
        "docker/Dockerfile": default_step,
        "docker/Dockerfile.mlflow": default_server,
    }
    assert pushes == {default_trainer, default_step, default_server}
    for c in commands:
        if c[:2] == ["docker", "build"]:
            assert f"ACGAN_VERSION={VERSION}" in c
    # what the compiled pipeline runs (tests run without ACGAN_IMAGE_REGISTRY/_TAG set)
    assert default_trainer == images.TRAINER_IMAGE
    assert default_step == images.STEP_IMAGE


def test_mlflow_server_image_has_the_postgres_driver_at_ci_pins() -> None:
    """The team tracking server: mlflow, boto3 (S3 artifacts) and psycopg 3 (the PostgreSQL
    backend store of tests/test_team_stack.py), installed with CI's constraints."""
    path = ROOT / "docker" / "Dockerfile.mlflow"
    ins = _instructions(path)
    assert ins[0][0] == "FROM" and ("ARG", f"ACGAN_VERSION={VERSION}") in ins
    assert "requirements/constraints.txt /tmp/constraints.txt" in [a for w, a in ins if w == "COPY"]
    runs = " ".join(args for word, args in ins if word == "RUN")
    assert 'pip install -c /tmp/constraints.txt mlflow boto3 "psycopg[binary]"' in runs
    assert "import_dbapi()" in runs  # the build fails if SQLAlchemy cannot load the driver
    pins = _pins()
    assert {"mlflow", "boto3", "psycopg", "psycopg-binary"} <= set(pins)
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("psycopg[binary]") for d in dev["dev"])  # what the tests run
    assert ("ENTRYPOINT", '["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]') in ins
    assert ("USER", "mlflow") in ins


def test_dockerignore_keeps_what_the_images_copy_and_drops_the_rest() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "data", "models", "mlflow.db", "checkpoints"} <= ignored
    for needed in ("src", "pyproject.toml", "README.md", "requirements"):
        assert needed not in ignored
        assert (ROOT / needed).exists()
