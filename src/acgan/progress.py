"""Progress bars that suit where they are read.

On a terminal: tqdm's live bar. Anywhere else (``dvc repro > log``, a Kubeflow pod's log, CI)
a redraw per step would flood the log with carriage-return updates, so the bar prints one
whole line at most every :data:`LOG_INTERVAL_S` seconds, and its final state when it closes.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm

LOG_INTERVAL_S = 5.0


class _Lines:
    """A file for tqdm that turns its in-place redraws (``\r`` + text + padding) into whole
    lines, at most one per ``interval`` seconds (a postfix update redraws at once otherwise);
    the bar's final state is written when it closes."""

    def __init__(self, stream: TextIO, interval: float) -> None:
        self._stream, self._interval = stream, interval
        self._last, self._shown = -float("inf"), ""
        self._pending: str | None = None

    def _emit(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._last, self._shown, self._pending = time.monotonic(), line, None

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip()
        if line and time.monotonic() - self._last >= self._interval:
            self._emit(line)
        elif line:
            self._pending = line
        # tqdm closes a kept bar with a newline after redrawing its final count, which may be
        # on a line already (only the rate would differ)
        elif "\n" in text and self._pending and _count(self._pending) != _count(self._shown):
            self._emit(self._pending)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()


def _count(line: str) -> str:
    """A bar's line without its timing part (``[elapsed<left, rate]``)."""
    return line.split("[")[0]


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(*args: Any, **kwargs: Any) -> tqdm:
    """``tqdm(*args, **kwargs)`` on a terminal; line by line every few seconds elsewhere."""
    stream = kwargs.pop("file", None) or sys.stderr
    if _is_terminal(stream):
        return tqdm(*args, file=stream, **kwargs)
    kwargs["mininterval"] = max(float(kwargs.get("mininterval", 0.0)), LOG_INTERVAL_S)
    kwargs["dynamic_ncols"] = False  # there is no screen to measure
    kwargs.setdefault("ncols", 100)
    return tqdm(*args, file=_Lines(stream, LOG_INTERVAL_S), **kwargs)


__all__ = ["LOG_INTERVAL_S", "progress_bar"]
