"""The collapse monitor: detection during training and the monitor stage after it.

* :mod:`acgan.monitor.detector`: per-class MS-SSIM of samples from fixed latent codes and the
  collapse rule (threshold, arming, patience);
* :mod:`acgan.monitor.decision`: what a step hook returns to the trainer (continue / stop /
  rollback, with its reason) and the monitor's typed record of a split;
* :mod:`acgan.monitor.hook`: :class:`CollapseMonitor`, the trainer's step hook: it detects
  and decides, the trainer acts;
* :mod:`acgan.monitor.stage`: :func:`run_monitor`, the ``acgan monitor`` stage (monitor.json,
  plots, report.html, the ensemble manifest);
* :mod:`acgan.monitor.report`: the per-split plots and the HTML report.

The package imports nothing of :mod:`acgan.train` (the trainer imports the hook). Names are
loaded on first use, so that the trainer's import of the hook does not load the stage.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CollapseMonitor": "acgan.monitor.hook",
    "MonitorResult": "acgan.monitor.stage",
    "run_monitor": "acgan.monitor.stage",
    "sample_msssim": "acgan.monitor.detector",
    "thresholds_for": "acgan.monitor.detector",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'acgan.monitor' has no attribute {name!r}")
