"""Parquet shards of PNG bytes: the on-disk format between ingest, split and train.

One row per image: ``png`` (binary, PNG bytes), ``label`` (int32, index into the *dataset's*
class list — split shards keep dataset-level labels) and ``class_name``. The dataset's class
list also travels in each shard's schema metadata, so a shard directory is self-describing.

PNG keeps shards lossless and compact, and pillow decodes 32x32 PNGs fast enough that the
trainer decodes a split once into one uint8 tensor (:func:`read_images`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageOps

from acgan.errors import DataError
from acgan.io import one_line
from acgan.progress import progress_bar

SCHEMA = pa.schema([("png", pa.binary()), ("label", pa.int32()), ("class_name", pa.string())])
SHARD_GLOB = "shard-*.parquet"
_META_CLASSES = b"acgan.class_names"
# Small row groups let ``label`` statistics skip whole groups when reading a class subset
# (the data is written class by class for most sources).
_ROW_GROUP = 1024
_RERUN = "re-run `acgan ingest` (and `acgan split`)"


@dataclass(frozen=True)
class ShardInfo:
    file: str
    rows: int
    sha256: str


class RowHasher:
    """sha256 over rows in order: (label, PNG length, PNG bytes). Independent of how the rows
    are cut into shards and of when they were written, so equal data gives an equal hash."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, png: bytes, label: int) -> None:
        self._h.update(int(label).to_bytes(4, "little", signed=True))
        self._h.update(len(png).to_bytes(8, "little"))
        self._h.update(png)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


# ---------------------------------------------------------------------------------- encoding


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float images to 8-bit "L" by scaling (PIL's convert would clip at 255)."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
        arr = arr.astype(np.float64) / 257.0
    elif img.mode == "F" and arr.size and np.nanmax(arr) <= 1.0:
        arr = arr.astype(np.float64) * 255.0  # floats in [0, 1]
    arr = np.clip(np.nan_to_num(np.rint(arr)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "L")


def _normalise_mode(img: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode -> "L" (1 channel) or "RGB" (3); transparency is composited on white."""
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        img = _to_8bit(img)
    elif mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
    elif mode in ("LAB", "HSV", "YCbCr", "CMYK"):
        img = img.convert("RGB")  # Pillow converts these to RGB only, not straight to "L"
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img).convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def encode_png(img: Image.Image, resolution: int, channels: int) -> bytes:
    """``img`` (any size and mode) as PNG bytes of a ``resolution`` square in "L" or "RGB".

    The shorter side is resized to ``resolution`` and the centre cropped (one LANCZOS resample,
    which antialiases when shrinking); EXIF orientation is applied first.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    img = ImageOps.exif_transpose(img)
    img = _normalise_mode(img, channels)
    if img.size != (resolution, resolution):
        img = ImageOps.fit(img, (resolution, resolution), method=Image.Resampling.LANCZOS)
    # A fresh image drops img.info (ICC profiles, text chunks, gamma): PNG bytes then depend
    # on pixels only, which keeps shards byte-identical across sources and runs.
    clean = Image.frombytes(img.mode, img.size, img.tobytes())
    buf = io.BytesIO()
    clean.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


# ----------------------------------------------------------------------------------- writing


class ShardWriter:
    """Write rows into ``out_dir/shard-00000.parquet``, ... of ``rows_per_shard`` rows each.

    Use as a context manager: leaving the block normally writes the last partial shard; an
    exception leaves it unwritten (callers build into a temp directory, see :func:`atomic_dir`).
    """

    def __init__(
        self, out_dir: str | Path, rows_per_shard: int, *, class_names: Sequence[str] | None = None
    ) -> None:
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.rows_per_shard = rows_per_shard
        self.shards: list[ShardInfo] = []
        self.rows = 0
        self._hasher = RowHasher()
        self._png: list[bytes] = []
        self._label: list[int] = []
        self._name: list[str] = []
        self._closed = False
        meta = {_META_CLASSES: json.dumps(list(class_names)).encode()} if class_names else None
        self._schema = SCHEMA.with_metadata(meta) if meta else SCHEMA

    @property
    def content_hash(self) -> str:
        """Hash of the rows added so far (see :class:`RowHasher`)."""
        return self._hasher.hexdigest()

    def add(self, png: bytes, label: int, class_name: str) -> None:
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        self._png.append(png)
        self._label.append(int(label))
        self._name.append(class_name)
        self._hasher.update(png, label)
        self.rows += 1
        if len(self._png) >= self.rows_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._png:
            return
        table = pa.Table.from_arrays(
            [
                pa.array(self._png, pa.binary()),
                pa.array(self._label, pa.int32()),
                pa.array(self._name, pa.string()),
            ],
            schema=self._schema,
        )
        name = f"shard-{len(self.shards):05d}.parquet"
        path = self.out_dir / name
        fd, tmp = tempfile.mkstemp(dir=self.out_dir, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            # PNG bytes do not compress further; labels and names compress very well.
            pq.write_table(
                table,
                tmp,
                row_group_size=_ROW_GROUP,
                compression={"png": "none", "label": "zstd", "class_name": "zstd"},
                use_dictionary=["class_name"],
                write_statistics=["label"],
            )
            digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.shards.append(ShardInfo(name, table.num_rows, digest))
        self._png, self._label, self._name = [], [], []

    def close(self) -> list[ShardInfo]:
        if not self._closed:
            self._flush()
            self._closed = True
        return self.shards

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True


# ----------------------------------------------------------------------------------- reading


def shard_files(directory: str | Path) -> list[Path]:
    """The shard files of a directory, in order; DataError when there are none."""
    d = Path(directory)
    files = sorted(d.glob(SHARD_GLOB)) if d.is_dir() else []
    if not files:
        raise DataError(f"{d}: no {SHARD_GLOB} files; {_RERUN}")
    return files


def read_shard(
    path: Path, columns: Sequence[str] | None = None, classes: Sequence[int] | None = None
) -> pa.Table:
    """One shard as a table (optionally only rows whose label is in ``classes``)."""
    filters = [("label", "in", sorted({int(c) for c in classes}))] if classes is not None else None
    try:
        table = pq.read_table(path, columns=list(columns) if columns else None, filters=filters)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable shard ({one_line(exc)}); {_RERUN}") from exc
    missing = {"png", "label"}.intersection(columns or SCHEMA.names) - set(table.column_names)
    if missing:
        raise DataError(f"{path}: not an acgan shard (no {sorted(missing)[0]!r} column); {_RERUN}")
    return table


@dataclass
class ImageSet:
    """Decoded images: uint8 (N, C, H, W), dataset-level int64 labels, dataset class names."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def decode_pngs(pngs: Sequence[bytes], source: str | Path) -> np.ndarray:
    """PNG bytes of equal size/mode -> uint8 array (N, H, W, C); ``source`` names the origin
    in errors."""
    out: np.ndarray | None = None
    for i, data in enumerate(pngs):
        try:
            with Image.open(io.BytesIO(data)) as im:
                arr = np.asarray(im)
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(
                f"{source}: row {i} is not a readable PNG ({one_line(exc)}); {_RERUN}"
            ) from exc
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if out is None:
            out = np.empty((len(pngs), *arr.shape), dtype=np.uint8)
        if arr.shape != out.shape[1:] or arr.dtype != np.uint8:
            raise DataError(
                f"{source}: row {i} is {arr.shape} {arr.dtype}, unlike row 0 "
                f"{out.shape[1:]} uint8; {_RERUN}"
            )
        out[i] = arr
    return out if out is not None else np.empty((0, 0, 0, 0), dtype=np.uint8)


def _dataset_class_names(files: Sequence[Path], tables: Sequence[pa.Table]) -> list[str]:
    """The class list from the shards' schema metadata, or rebuilt from (label, class_name)
    pairs for shards written without it."""
    raw = {(t.schema.metadata or {}).get(_META_CLASSES) for t in tables}
    if len(raw) > 1:
        raise DataError(f"{files[0].parent}: shards disagree on the class list; {_RERUN}")
    (meta,) = raw
    if meta is not None:
        return [str(n) for n in json.loads(meta)]
    pairs: dict[int, str] = {}
    for f in files:
        t = read_shard(f, ["label", "class_name"])
        labels, names = t["label"].to_pylist(), t["class_name"].to_pylist()
        pairs.update(zip(labels, names, strict=True))
    return [str(pairs.get(i, f"class_{i}")) for i in range(max(pairs, default=-1) + 1)]


def read_images(
    directory: Path, classes: Sequence[int] | None = None, progress: bool = False
) -> ImageSet:
    """Decode a shard directory (optionally only ``classes``, dataset-level indices) into memory.

    Rows keep their stored order. A requested class without rows here is a DataError, since
    training on it would silently learn nothing.
    """
    files = shard_files(directory)
    tables = [read_shard(f, ["png", "label"], classes) for f in files]
    class_names = _dataset_class_names(files, tables)
    if classes is not None:
        for c in classes:
            if not 0 <= int(c) < len(class_names):
                raise DataError(
                    f"{directory}: class {c} does not exist (the dataset has "
                    f"{len(class_names)} classes, 0..{len(class_names) - 1})"
                )
    total = sum(t.num_rows for t in tables)
    chunks: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    with progress_bar(
        total=total, desc=f"decode {Path(directory).name}", unit="img", disable=not progress
    ) as bar:
        for f, t in zip(files, tables, strict=True):
            if t.num_rows == 0:
                continue
            chunks.append(decode_pngs(t.column("png").to_pylist(), f))
            labels.append(t.column("label").to_numpy().astype(np.int64))
            bar.update(t.num_rows)
    label_arr = np.concatenate(labels) if labels else np.empty(0, dtype=np.int64)
    if classes is not None:
        present = set(np.unique(label_arr).tolist())
        for c in classes:
            if int(c) not in present:
                # Error path only: read the labels unfiltered to say what is there.
                held = np.unique(
                    np.concatenate([read_shard(f, ["label"])["label"].to_numpy() for f in files])
                )
                raise DataError(
                    f"{directory}: no images of class {c} ({class_names[int(c)]!r}); "
                    f"it holds classes {held.tolist()}"
                )
    if not chunks:
        raise DataError(f"{directory}: the shards hold no images; {_RERUN}")
    shapes = {c.shape[1:] for c in chunks}
    if len(shapes) > 1:
        raise DataError(
            f"{directory}: shards hold images of different sizes {sorted(shapes)}; {_RERUN}"
        )
    arr = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    images = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images=images, labels=torch.from_numpy(label_arr), class_names=class_names)
