"""Plain-dict checkpoints: atomic save, ``weights_only=True`` load.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts (state_dicts, optimizer
states, RNG states, the config as a dict, the step, the class map) — never pickled code — so it
loads with ``torch.load(..., weights_only=True)``. Saves go to a temp file in the same directory
followed by ``os.replace``: a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from acgan.errors import AcganError, CheckpointError, one_line

_STEP_RE = re.compile(r"^step-(\d{8})\.pt$")
# Temp and set-aside names carry their writer (pid and host): a later run removes those whose
# writer is gone (a killed stage), never those of a writer still at work.
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
_OWNER_RE = re.compile(r"(\d+)\.([A-Za-z0-9]*)-")
STALE_AFTER_S = 6 * 3600  # leftovers of another host (or an older version): removed when older


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (generators, registry artifacts, weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _owner() -> str:
    return f"{os.getpid()}.{_HOST}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _stale(entry: Path, suffix: str) -> bool:
    """Whether a leftover is stale; ``suffix`` is its name after ``.NAME.`` (owner inside)."""
    m = _OWNER_RE.match(suffix.removeprefix("tmp-").removeprefix("old-"))
    if m is not None and m.group(2) == _HOST:
        return int(m.group(1)) != os.getpid() and not _alive(int(m.group(1)))
    try:
        return time.time() - entry.lstat().st_mtime > STALE_AFTER_S
    except OSError:
        return False


def clean_stale(directory: Path, name: str) -> list[Path]:
    """Remove what killed writers of ``directory/name`` left beside it: ``.NAME.tmp-*``
    directories, ``.NAME.old-*`` set-asides and ``.NAME.*.tmp`` files. Returns them."""
    if not directory.is_dir():
        return []
    removed = []
    for entry in directory.glob(f".{glob.escape(name)}.*"):
        rest = entry.name[len(name) + 2 :]
        ours = rest.startswith(("tmp-", "old-")) or rest.endswith(".tmp")
        if not ours or not _stale(entry, rest):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def blocked_by_file(path: str | Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is a file (``path`` cannot be made)."""
    for parent in Path(path).parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _mkdir(directory: Path) -> None:
    """``mkdir -p`` whose failure (a file in the way, no permission) is one line naming it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AcganError(
            f"{directory}: cannot create this directory ({exc.strerror or one_line(exc)}); "
            "choose another output path"
        ) from exc


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def share(path: str | Path, directory: bool = False) -> None:
    """Give a file made by mkstemp/mkdtemp (0600/0700) the permissions of a normal one."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _share_tree(root: Path) -> None:
    share(root, directory=True)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            share(os.path.join(dirpath, d), directory=True)
        for f in filenames:
            share(os.path.join(dirpath, f))


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temp directory beside ``target``; on success it replaces ``target``.

    On an exception the temp directory is removed and ``target`` is left as it was, so a
    reader never sees a half-written output directory.
    """
    target = Path(target)
    _mkdir(target.parent)
    if target.exists() and not target.is_dir():
        raise AcganError(f"{target}: is a file, not a directory; choose another output path")
    clean_stale(target.parent, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{_owner()}-", dir=target.parent))
    try:
        yield tmp
        _share_tree(tmp)
        old = None
        if target.exists() or target.is_symlink():
            # rename() cannot replace a non-empty directory: move the old one aside first.
            old = target.with_name(f".{target.name}.old-{_owner()}-{uuid.uuid4().hex[:8]}")
            os.rename(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            if old is not None:
                os.rename(old, target)
            raise
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _mkdir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_owner()}-", suffix=".tmp")
    share(tmp)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(
        Path(path), (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()
    )


def save(obj: dict[str, Any], path: str | Path) -> Path:
    """Save a plain dict atomically (temp file + fsync + rename)."""
    path = Path(path)
    _mkdir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_owner()}-", suffix=".tmp")
    os.close(fd)
    share(tmp)
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
