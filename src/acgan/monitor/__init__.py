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

The package imports nothing of :mod:`acgan.train` (the trainer imports the hook), and this
file imports none of its modules: callers import the module they use (``from
acgan.monitor.stage import run_monitor``), so the trainer's import of the hook does not load
the stage, and the layout test (tests/test_layout.py) sees every import.
"""
