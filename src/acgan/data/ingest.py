"""The ingest stage: any source -> Parquet shards of PNG bytes + ``manifest.json``.

Everything is built in a temp directory beside ``out_dir`` and renamed over it at the end, so
a failed run leaves the previous output untouched. Same configuration -> byte-identical shards
and the same ``content_hash`` (the hash covers rows, not files, so ``data.shard_rows`` does not
change it).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from acgan import __version__
from acgan.config import DataConfig
from acgan.data.shards import ShardInfo, ShardWriter, encode_png
from acgan.data.sources import Item, iter_source
from acgan.errors import DataError
from acgan.io import atomic_write_json, one_line
from acgan.lineage import stage
from acgan.progress import progress_bar

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    """What an ingested directory holds; ``manifest.json`` on disk."""

    source: str
    resolution: int
    channels: int
    mode: str  # "L" or "RGB"
    class_names: list[str]
    counts: dict[str, int]  # images per class name
    total: int
    skipped_bad_images: int
    skipped_files: list[str]  # relative to data.root where possible
    shards: list[ShardInfo]
    content_hash: str
    created_by: str
    format_version: int = FORMAT_VERSION
    ignored_dirs: list[str] = dataclasses.field(default_factory=list)  # hidden folders of root

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str | Path) -> Manifest:
        try:
            shards = [
                ShardInfo(str(s["file"]), int(s["rows"]), str(s["sha256"])) for s in raw["shards"]
            ]
            return cls(
                source=str(raw["source"]),
                resolution=int(raw["resolution"]),
                channels=int(raw["channels"]),
                mode=str(raw["mode"]),
                class_names=[str(n) for n in raw["class_names"]],
                counts={str(k): int(v) for k, v in raw["counts"].items()},
                total=int(raw["total"]),
                skipped_bad_images=int(raw["skipped_bad_images"]),
                skipped_files=[str(f) for f in raw["skipped_files"]],
                shards=shards,
                content_hash=str(raw["content_hash"]),
                created_by=str(raw["created_by"]),
                format_version=int(raw.get("format_version", FORMAT_VERSION)),
                ignored_dirs=[str(d) for d in raw.get("ignored_dirs", [])],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(
                f"{where}: not a valid manifest (bad or missing {exc}); re-run `acgan ingest`"
            ) from exc


def load_manifest(directory: str | Path) -> Manifest:
    """Read ``directory/manifest.json``; DataError telling to run ``acgan ingest`` if absent."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: not found; run `acgan ingest` first")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); re-run `acgan ingest`") from exc
    if not isinstance(raw, dict):
        raise DataError(f"{path}: not a valid manifest; re-run `acgan ingest`")
    return Manifest.from_dict(raw, path)


class _TooLarge(Exception):
    """An image file whose decoded size would exceed ``data.max_image_pixels``."""


def _load_image(item: Item, resolution: int, max_pixels: int) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    with Image.open(item) as im:
        # JPEG can decode at 1/2, 1/4, 1/8 scale: far faster for ImageNet-size photos, and we
        # keep at least 2x the target so the LANCZOS resample still antialiases.
        im.draft(None, (2 * resolution, 2 * resolution))
        w, h = im.size  # from the header: nothing is decoded yet
        if w * h > max_pixels:
            raise _TooLarge(f"{w}x{h} = {w * h / 1e6:.1f} megapixels")
        im.load()
        return im


def _describe(item: Item, root: Path | None) -> str:
    if isinstance(item, Path) and root is not None:
        try:
            return item.relative_to(root).as_posix()
        except ValueError:
            pass
    return str(item)


def ingest(cfg: DataConfig, out_dir: Path, progress: bool = True) -> Manifest:
    """Read ``cfg``'s source into ``out_dir`` (shards, ``manifest.json``, ``config.json``)."""
    out_dir = Path(out_dir)
    src = iter_source(cfg)
    names = src.class_names
    counts = [0] * len(names)
    skipped: list[str] = []
    mode = "L" if cfg.channels == 1 else "RGB"
    with (
        stage("ingest", {"data": dataclasses.asdict(cfg)}, out_dir, data_hash=None) as st,
        st.output() as tmp,
    ):
        bar = progress_bar(
            total=src.total, desc=f"ingest {cfg.source}", unit="img", disable=not progress
        )
        with bar, ShardWriter(tmp, cfg.shard_rows, class_names=names) as writer:
            for item, label in src:
                bar.update(1)
                try:
                    png = encode_png(
                        _load_image(item, cfg.resolution, cfg.max_image_pixels),
                        cfg.resolution,
                        cfg.channels,
                    )
                except MemoryError:
                    raise
                except _TooLarge as exc:
                    if cfg.on_bad_image == "skip":
                        skipped.append(_describe(item, src.root))
                        continue
                    raise DataError(
                        f"{item}: too large to decode ({exc}, data.max_image_pixels is "
                        f"{cfg.max_image_pixels}); shrink it, raise the limit, or set "
                        "data.on_bad_image: skip"
                    ) from exc
                except Exception as exc:
                    # Pillow signals a corrupt file with many exception types (OSError,
                    # SyntaxError, ValueError, EOFError, struct.error, ...): anything raised
                    # while decoding one file means that file is bad.
                    if isinstance(item, Image.Image):
                        raise  # an in-memory image from a library: a bug, keep the traceback
                    if cfg.on_bad_image == "skip":
                        skipped.append(_describe(item, src.root))
                        continue
                    raise DataError(
                        f"{item}: not a readable image ({one_line(exc)}); fix or remove it, "
                        "or set data.on_bad_image: skip"
                    ) from exc
                writer.add(png, label, names[label])
                counts[label] += 1
        for name, n in zip(names, counts, strict=True):
            if n == 0:
                raise DataError(
                    f"class '{name}': no readable images ({len(skipped)} bad files "
                    "skipped in all); add images or leave it out with data.classes"
                )
        manifest = Manifest(
            source=cfg.source,
            resolution=cfg.resolution,
            channels=cfg.channels,
            mode=mode,
            class_names=list(names),
            counts=dict(zip(names, counts, strict=True)),
            total=sum(counts),
            skipped_bad_images=len(skipped),
            skipped_files=skipped,
            shards=list(writer.shards),
            content_hash=writer.content_hash,
            created_by=f"acgan {__version__}",
            ignored_dirs=list(src.ignored_dirs),
        )
        atomic_write_json(tmp / MANIFEST, manifest.to_dict())
        st.data_hash = manifest.content_hash  # in config.json, written when the block ends
    return manifest
