"""The container images every component runs in: one place, kept equal to the Makefile.

``make images`` builds and pushes ``$(REGISTRY)/acgan-trainer:$(TAG)`` (``docker/Dockerfile.cuda``)
and ``$(REGISTRY)/acgan-step:$(TAG)`` (``docker/Dockerfile``); the defaults here equal the
Makefile's (``tests/test_docker.py`` checks it, and that the tag is the package version).
Images pushed elsewhere: set ``ACGAN_IMAGE_REGISTRY`` / ``ACGAN_IMAGE_TAG`` when compiling,
e.g. ``ACGAN_IMAGE_REGISTRY=registry.example.com/ml acgan compile --out my-acgan.yaml``.
"""

from __future__ import annotations

import os

DEFAULT_REGISTRY = "ghcr.io/acgan-pipeline"
DEFAULT_TAG = "0.1.0"  # = pyproject's version (a release bumps both)

REGISTRY = os.environ.get("ACGAN_IMAGE_REGISTRY") or DEFAULT_REGISTRY
TAG = os.environ.get("ACGAN_IMAGE_TAG") or DEFAULT_TAG

# CUDA + torch: the tasks that run networks (train, judge, evaluate, monitor's retraining).
TRAINER_IMAGE = f"{REGISTRY}/acgan-trainer:{TAG}"
# CPU-only torch: ingest, split, register.
STEP_IMAGE = f"{REGISTRY}/acgan-step:{TAG}"
