"""Iterate any configured image source as ``(item, label)`` without loading it all.

``item`` is a PIL image (synthetic, torchvision) or a file path (ImageFolder, so that a corrupt
file is reported — or skipped — by the ingest stage, which knows ``data.on_bad_image``).
``label`` indexes :attr:`SourceIter.class_names`, the dataset's class list *after*
``data.classes`` filtering (kept in the source's own order, so the labels do not depend on how
the list in params.yaml happens to be ordered).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from acgan.config import DataConfig
from acgan.data import synthetic
from acgan.errors import ConfigError, DataError
from acgan.io import one_line

Item = Image.Image | Path

# source -> (torchvision class name, name shown in messages)
_TORCHVISION = {
    "mnist": ("MNIST", "MNIST"),
    "fashion_mnist": ("FashionMNIST", "Fashion-MNIST"),
    "cifar10": ("CIFAR10", "CIFAR-10"),
    "cifar100": ("CIFAR100", "CIFAR-100"),
}


@dataclass
class SourceIter:
    """A source's class list and a one-shot iterator of ``(item, label)``."""

    class_names: list[str]
    items: Iterator[tuple[Item, int]]
    total: int | None = None  # for progress bars; None when unknown
    root: Path | None = None  # files are reported relative to this (ImageFolder)
    ignored_dirs: list[str] = field(default_factory=list)  # hidden folders (".x") of the root

    def __iter__(self) -> Iterator[tuple[Item, int]]:
        return self.items


def _select_classes(all_names: Sequence[str], wanted: Sequence[str] | None) -> list[int]:
    """Indices (in source order) of the classes ``data.classes`` keeps; all when None."""
    if wanted is None:
        return list(range(len(all_names)))
    if not wanted:
        raise ConfigError("data.classes: the list is empty; list class names or set it to null")
    seen: set[str] = set()
    for name in wanted:
        if name in seen:
            raise ConfigError(f"data.classes: '{name}' is listed twice; list each class once")
        seen.add(name)
    index = {n: i for i, n in enumerate(all_names)}
    unknown = [n for n in wanted if n not in index]
    if unknown:
        examples = ", ".join(repr(n) for n in list(all_names)[:5])
        more = ", ..." if len(all_names) > 5 else ""
        raise DataError(
            f"data.classes: unknown class {unknown[0]!r} (the source has "
            f"{len(all_names)} classes: {examples}{more}); fix the name"
        )
    return sorted(index[n] for n in wanted)


def _cap(cfg: DataConfig, n: int) -> int:
    return n if cfg.max_per_class is None else min(n, cfg.max_per_class)


def _synthetic(cfg: DataConfig) -> SourceIter:
    keep = _select_classes(synthetic.CLASS_NAMES, cfg.classes)
    remap = {c: i for i, c in enumerate(keep)}
    n = _cap(cfg, cfg.synthetic_per_class)
    gen = synthetic.generate(n, cfg.resolution, cfg.channels, cfg.synthetic_seed, classes=keep)
    return SourceIter(
        class_names=[synthetic.CLASS_NAMES[c] for c in keep],
        items=((img, remap[c]) for img, c in gen),
        total=n * len(keep),
    )


def _torchvision(cfg: DataConfig) -> SourceIter:
    import torchvision.datasets as tvd  # slow import; only when asked for

    cls_name, shown = _TORCHVISION[cfg.source]
    root = str(Path(cfg.root).expanduser())
    try:
        ds = getattr(tvd, cls_name)(root=root, train=True, download=cfg.download)
    except RuntimeError as exc:
        # torchvision raises RuntimeError("Dataset not found ...") for missing files.
        if cfg.download:
            raise DataError(
                f"data.root: {shown} under {cfg.root} is missing or corrupt even "
                f"after download ({one_line(exc)}); delete it and retry"
            ) from exc
        raise DataError(
            f"data.root: {shown} not found under {cfg.root}; set data.download: "
            "true or put the dataset there"
        ) from exc
    except OSError as exc:  # URLError, connection and disk errors during download
        raise DataError(
            f"data.download: fetching {shown} into {cfg.root} failed ({one_line(exc)}); "
            "check the network or put the dataset there"
        ) from exc

    names = [str(n) for n in ds.classes]
    keep = _select_classes(names, cfg.classes)
    remap = np.full(len(names), -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    # Choose the indices from the label array alone (no image is decoded for that), keeping
    # the first max_per_class of each class in source order.
    targets = np.asarray(ds.targets, dtype=np.int64)
    per_class = [np.flatnonzero(targets == c)[: _cap(cfg, len(targets))] for c in keep]
    wanted = np.sort(np.concatenate(per_class))

    def items() -> Iterator[tuple[Item, int]]:
        for i in wanted.tolist():
            img, target = ds[i]  # a PIL image: torchvision builds it from its uint8 array
            yield img, int(remap[int(target)])

    return SourceIter(class_names=[names[c] for c in keep], items=items(), total=len(wanted))


def _image_files(class_dir: Path, exts: set[str]) -> list[Path]:
    """Files under ``class_dir`` (recursively) whose extension Pillow knows, in a stable order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            if not fn.startswith(".") and os.path.splitext(fn)[1].lower() in exts:
                found.append(Path(dirpath) / fn)
    return sorted(found, key=lambda p: p.relative_to(class_dir).as_posix())


def _imagefolder(cfg: DataConfig) -> SourceIter:
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data.root: {cfg.root} is not a directory; point data.root at a tree "
            "of <class_name>/<image files>"
        )
    dirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    names = [d for d in dirs if not d.startswith(".")]
    if not names:
        raise DataError(
            f"data.root: {cfg.root} has no class directories; expected "
            "<class_name>/<image files> below it"
        )
    keep = _select_classes(names, cfg.classes)
    exts = {e.lower() for e in Image.registered_extensions()}
    files: list[tuple[Path, int]] = []
    for label, c in enumerate(keep):
        found = _image_files(root / names[c], exts)
        if not found:
            raise DataError(
                f"{root / names[c]}: class '{names[c]}' has no image files; add "
                "images or leave it out with data.classes"
            )
        files.extend((p, label) for p in found[: _cap(cfg, len(found))])
    return SourceIter(
        class_names=[names[c] for c in keep],
        items=iter(files),
        total=len(files),
        root=root,
        ignored_dirs=[d for d in dirs if d.startswith(".")],  # said in the ingest summary
    )


def iter_source(cfg: DataConfig) -> SourceIter:
    """The configured source's classes and a lazy iterator of ``(PIL image | path, label)``."""
    if cfg.source == "synthetic":
        return _synthetic(cfg)
    if cfg.source in _TORCHVISION:
        return _torchvision(cfg)
    if cfg.source == "imagefolder":
        return _imagefolder(cfg)
    raise ConfigError(f"data.source: unknown source {cfg.source!r}")
