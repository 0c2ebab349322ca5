"""The collapse monitor: detection during training and the monitor stage after it.

* :mod:`acgan.monitor.detector`: per-class MS-SSIM of samples from fixed latent codes and the
  collapse rule (threshold, arming, patience);
* :mod:`acgan.monitor.hook`: :class:`CollapseMonitor`, the trainer's step hook (warn / stop /
  rollback);
* :mod:`acgan.monitor.stage`: :func:`run_monitor`, the ``acgan monitor`` stage (monitor.json,
  plots, report.html, the ensemble manifest, retraining of collapsed splits);
* :mod:`acgan.monitor.report`: the per-split plots and the HTML report.
"""

from __future__ import annotations

from acgan.monitor.detector import sample_msssim, thresholds_for
from acgan.monitor.hook import CollapseMonitor
from acgan.monitor.stage import MonitorResult, run_monitor

__all__ = ["CollapseMonitor", "MonitorResult", "run_monitor", "sample_msssim", "thresholds_for"]
