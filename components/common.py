"""How every component is declared: its image, no pip install at run time, embedded helpers."""

from collections.abc import Callable
from typing import Any

from kfp import dsl

from components.images import STEP_IMAGE, TRAINER_IMAGE


def component(*helpers: Callable[..., Any], gpu: bool = False) -> Callable[..., Any]:
    """``@dsl.component`` on one of our images. The image already holds the ``acgan`` package
    and kfp, so nothing is installed when a pod starts (``install_kfp_package=False``); the
    ``helpers`` from :mod:`components._runtime` are embedded into the component's source (the
    component modules also import them by name, so the bodies read as plain Python)."""
    return dsl.component(
        base_image=TRAINER_IMAGE if gpu else STEP_IMAGE,
        install_kfp_package=False,
        additional_funcs=list(helpers),
    )


__all__ = ["component"]
