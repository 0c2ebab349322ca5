"""How every component is declared: its image, and no pip install at run time."""

from collections.abc import Callable
from typing import Any

from kfp import dsl

from components.images import STEP_IMAGE, TRAINER_IMAGE


def component(*, gpu: bool = False) -> Callable[..., Any]:
    """``@dsl.component`` on one of our images. The image already holds the ``acgan`` package
    and kfp, so nothing is installed when a pod starts (``install_kfp_package=False``), and a
    component's body imports what it needs from ``acgan`` (the glue: :mod:`acgan.kfp_runtime`).
    """
    return dsl.component(
        base_image=TRAINER_IMAGE if gpu else STEP_IMAGE,
        install_kfp_package=False,
    )


__all__ = ["component"]
