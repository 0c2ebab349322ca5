"""Plain-dict checkpoints: atomic save, ``weights_only=True`` load.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts (state_dicts, optimizer
states, RNG states, the config as a dict, the step, the class map) — never pickled code — so it
loads with ``torch.load(..., weights_only=True)``. Saves go to a temp file in the same directory
followed by ``os.replace``: a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from acgan.errors import CheckpointError
from acgan.io import atomic_file

_STEP_RE = re.compile(r"^step-(\d{8})\.pt$")


def save(obj: dict[str, Any], path: str | Path) -> Path:
    """Save a plain dict atomically (temp file + fsync + rename)."""
    path = Path(path)
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)
    return path


RETRAIN_HINT = "delete it to fall back to an older one, or retrain"


def load(
    path: str | Path, map_location: str | torch.device = "cpu", fix: str = RETRAIN_HINT
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; any failure names the file and says
    ``fix`` (for a training checkpoint: there are older ones to fall back to)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: checkpoint not found; train the split first "
            "(acgan train --split ID) or pass the right path"
        )
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/tampered files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: checkpoint failed to load ({first[:160]}); {fix}") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not an acgan checkpoint (expected a dict)")
    return obj


def step_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step-{step:08d}.pt"


def list_steps(directory: str | Path) -> list[tuple[int, Path]]:
    """``[(step, path), ...]`` of the checkpoints in ``directory``, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _STEP_RE.match(p.name))]
    return sorted(found)


def iter_newest(directory: str | Path, max_step: int | None = None) -> Iterator[tuple[int, Path]]:
    """Checkpoints newest first, optionally only those at or below ``max_step``."""
    for step, p in reversed(list_steps(directory)):
        if max_step is None or step <= max_step:
            yield step, p


def prune(directory: str | Path, keep: int, protect: set[Path] | None = None) -> None:
    """Delete all but the newest ``keep`` checkpoints (never those in ``protect``)."""
    protect = {Path(p).resolve() for p in (protect or set())}
    steps = list_steps(directory)
    for _, p in steps[: max(0, len(steps) - keep)]:
        if p.resolve() not in protect:
            p.unlink(missing_ok=True)
