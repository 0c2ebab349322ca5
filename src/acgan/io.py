"""General file helpers for every stage: atomic writes (files, directories, JSON), JSON
reading with one-line errors, SHA-256 of files, and one-line error text.

Writes go to a temp file (or directory) beside the target followed by a rename: a reader sees
the old output or the new one, never half of one, and a killed writer's leftovers are removed by
the next writer (:func:`clean_stale`). No heavy imports here: every command loads this module.
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

from acgan.errors import AcganError, mask_credentials

# Temp and set-aside names carry their writer (pid and host): a later run removes those whose
# writer is gone (a killed stage), never those of a writer still at work.
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
_OWNER_RE = re.compile(r"(\d+)\.([A-Za-z0-9]*)-")
STALE_AFTER_S = 6 * 3600  # leftovers of another host (or an older version): removed when older


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


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temp file's path beside ``path``; when the block succeeds the file is synced
    and renamed over ``path``, on an exception it is removed (``path`` left as it was)."""
    path = Path(path)
    _mkdir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_owner()}-", suffix=".tmp")
    os.close(fd)
    share(tmp)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(
        Path(path), (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()
    )


def one_line(exc: BaseException) -> str:
    """An exception's text for an error line: one line, at most 200 characters, credentials
    in any URI it quotes masked."""
    text = mask_credentials(" ".join(str(exc).split())) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (generators, registry artifacts, weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(
    path: str | Path,
    fix: str,
    what: str = "JSON file",
    error: type[AcganError] = AcganError,
    expect: type = dict,
) -> Any:
    """Read a JSON file; a missing, unreadable or wrong-shaped one is one ``error`` line
    naming the file and saying ``fix`` (what to do)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise error(f"{path}: {what} not found; {fix}") from exc
    except (OSError, ValueError) as exc:
        raise error(f"{path}: unreadable {what} ({one_line(exc)}); {fix}") from exc
    if not isinstance(obj, expect):
        kind = "a JSON object" if expect is dict else f"JSON {expect.__name__}"
        raise error(f"{path}: {what} is not {kind}; {fix}")
    return obj


def read_json_or_none(path: str | Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when it is missing, unreadable or not an object
    (an optional record: a cache entry, a lineage file another stage may not have written)."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None
