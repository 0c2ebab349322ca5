"""Synthetic source, sources, PNG encoding, Parquet shards and the ingest stage."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from acgan.config import Config
from acgan.data import ingest as ingest_mod
from acgan.data import synthetic
from acgan.data.ingest import ingest, load_manifest
from acgan.data.shards import ShardWriter, encode_png, read_images
from acgan.data.sources import iter_source
from acgan.errors import ConfigError, DataError

# ----------------------------------------------------------------------------- synthetic


def _pixels(items: list[tuple[Image.Image, int]]) -> list[bytes]:
    return [im.tobytes() for im, _ in items]


def test_synthetic_is_deterministic_per_seed_and_class() -> None:
    a = list(synthetic.generate(3, 32, 3, seed=7))
    b = list(synthetic.generate(3, 32, 3, seed=7))
    assert _pixels(a) == _pixels(b)
    assert [c for _, c in a] == [c for c in range(10) for _ in range(3)]
    assert _pixels(list(synthetic.generate(3, 32, 3, seed=8))) != _pixels(a)
    # A subset of classes yields the very images the full run gives for those classes.
    sub = list(synthetic.generate(3, 32, 3, seed=7, classes=[4, 8]))
    assert _pixels(sub) == _pixels([x for x in a if x[1] in (4, 8)])


@pytest.mark.parametrize(("channels", "mode"), [(1, "L"), (3, "RGB")])
@pytest.mark.parametrize("resolution", [32, 64])
def test_synthetic_images_have_the_asked_shape_and_are_unique(
    channels: int, mode: str, resolution: int
) -> None:
    items = list(synthetic.generate(8, resolution, channels, seed=0))
    assert all(im.size == (resolution, resolution) and im.mode == mode for im, _ in items)
    assert len(set(_pixels(items))) == len(items)


@pytest.mark.parametrize("channels", [1, 3])
def test_synthetic_classes_are_distinct(channels: int) -> None:
    """A nearest-class-mean classifier on (polarity-normalised) pixels beats chance clearly."""
    items = list(synthetic.generate(60, 32, channels, seed=0))
    x = np.stack([np.asarray(im.convert("L"), dtype=np.float32).ravel() for im, _ in items])
    y = np.array([c for _, c in items])
    x = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)
    # Colours are random, so make the background (the border) negative in every image.
    border = np.zeros((32, 32), bool)
    border[:2] = border[-2:] = True
    border[:, :2] = border[:, -2:] = True
    x *= np.where(x[:, border.ravel()].mean(1) > 0, -1.0, 1.0)[:, None]
    test = np.arange(len(y)) % 3 == 0
    means = np.stack([x[~test & (y == c)].mean(0) for c in range(10)])
    dist = ((x[test][:, None, :] - means[None]) ** 2).sum(-1)
    accuracy = (dist.argmin(1) == y[test]).mean()
    assert accuracy > 0.3, accuracy  # chance is 0.1


# ----------------------------------------------------------------------------- encoding


def _decode(png: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(png))
    im.load()
    return im


def _modes() -> dict[str, Image.Image]:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8))
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal_t = pal.copy()
    pal_t.info["transparency"] = 0
    return {
        "RGB": rgb,
        "L": rgb.convert("L"),
        "1": rgb.convert("1"),
        "P": pal,
        "P+t": pal_t,
        "RGBA": rgb.convert("RGBA"),
        "LA": rgb.convert("LA"),
        "CMYK": rgb.convert("CMYK"),
        "I;16": Image.fromarray(np.full((50, 30), 65535, dtype=np.uint16)),
        "F": Image.fromarray(np.full((30, 30), 0.5, dtype=np.float32)),
    }


@pytest.mark.parametrize("name", sorted(_modes()))
@pytest.mark.parametrize(("channels", "mode"), [(1, "L"), (3, "RGB")])
def test_encode_png_converts_any_mode_and_size(name: str, channels: int, mode: str) -> None:
    im = _decode(encode_png(_modes()[name], 32, channels))
    assert im.format == "PNG" and im.size == (32, 32) and im.mode == mode


def test_encode_png_composites_transparency_on_white_and_scales_16_bit() -> None:
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    assert np.asarray(_decode(encode_png(clear, 32, 3))).min() == 255
    half = Image.fromarray(np.full((32, 32), 32896, dtype=np.uint16))  # 128 * 257
    assert np.asarray(_decode(encode_png(half, 32, 1))).tolist()[0][0] == 128
    unit = Image.fromarray(np.full((32, 32), 1.0, dtype=np.float32))
    assert np.asarray(_decode(encode_png(unit, 32, 1))).min() == 255


def test_encode_png_resizes_shorter_side_and_crops_the_centre() -> None:
    # 96x32: left third black, middle white, right third black -> the centre crop is white.
    arr = np.zeros((32, 96), dtype=np.uint8)
    arr[:, 32:64] = 255
    out = np.asarray(_decode(encode_png(Image.fromarray(arr), 32, 1)))
    assert out.shape == (32, 32) and out[:, 4:28].min() > 200


# ----------------------------------------------------------------------------- ingest


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("shard-*.parquet"))}


def test_ingest_synthetic_writes_shards_manifest_and_config(
    tmp_path: Path, small_cfg: Config
) -> None:
    out = tmp_path / "ingested"
    m = ingest(small_cfg.data, out, progress=False)
    assert m.total == 200 and m.counts == dict.fromkeys(synthetic.CLASS_NAMES, 20)
    assert m.class_names == list(synthetic.CLASS_NAMES) and m.mode == "RGB"
    assert [s.rows for s in m.shards] == [64, 64, 64, 8]
    assert m.skipped_bad_images == 0 and m.created_by.startswith("acgan ")
    assert load_manifest(out) == m
    assert json.loads((out / "config.json").read_text())["config"]["data"]["shard_rows"] == 64
    table = pq.read_table(out / "shard-00000.parquet")
    assert table.schema.field("png").type == "binary"
    assert str(table.schema.field("label").type) == "int32"
    assert table.column("class_name")[0].as_py() == "circle"

    data = read_images(out)
    assert data.images.shape == (200, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.images.is_contiguous() and data.labels.dtype == torch.int64
    assert data.labels.tolist() == [c for c in range(10) for _ in range(20)]
    assert data.class_names == list(synthetic.CLASS_NAMES)
    # The decoded pixels are the rendered ones (lossless PNG round trip).
    first = next(synthetic.generate(1, 32, 3, seed=0))[0]
    assert np.array_equal(data.images[0].permute(1, 2, 0).numpy(), np.asarray(first))


def test_ingest_is_deterministic_and_hash_ignores_shard_boundaries(
    tmp_path: Path, make_cfg: Callable[..., Config]
) -> None:
    a = ingest(make_cfg().data, tmp_path / "a", progress=False)
    b = ingest(make_cfg().data, tmp_path / "b", progress=False)
    assert _files(tmp_path / "a") == _files(tmp_path / "b") and a.content_hash == b.content_hash
    assert a.shards == b.shards
    c = ingest(make_cfg("data.shard_rows=4096").data, tmp_path / "c", progress=False)
    assert len(c.shards) == 1 and c.content_hash == a.content_hash
    d = ingest(make_cfg("data.synthetic_seed=1").data, tmp_path / "d", progress=False)
    assert d.content_hash != a.content_hash


def test_ingest_grayscale_subset_and_cap(tmp_path: Path, make_cfg: Callable[..., Config]) -> None:
    cfg = make_cfg("data.channels=1", "data.classes=[star, circle]", "data.max_per_class=12")
    m = ingest(cfg.data, tmp_path / "out", progress=False)
    # Kept classes stay in the source's order, whatever the order in data.classes.
    assert m.class_names == ["circle", "star"] and m.counts == {"circle": 12, "star": 12}
    data = read_images(tmp_path / "out")
    assert data.images.shape == (24, 1, 32, 32) and set(data.labels.tolist()) == {0, 1}


def test_read_images_class_filter(synthetic_ingested: Path) -> None:
    data = read_images(synthetic_ingested, classes=[2, 5])
    assert data.labels.tolist() == [2] * 20 + [5] * 20
    assert data.images.shape == (40, 3, 32, 32) and len(data.class_names) == 10
    with pytest.raises(DataError, match="class 12 does not exist"):
        read_images(synthetic_ingested, classes=[12])


def test_read_images_reports_a_corrupt_shard(tmp_path: Path, synthetic_ingested: Path) -> None:
    for f in synthetic_ingested.glob("shard-*.parquet"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    bad = tmp_path / "shard-00001.parquet"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DataError, match=r"shard-00001\.parquet.*acgan ingest"):
        read_images(tmp_path)
    with pytest.raises(DataError, match="acgan ingest"):
        read_images(tmp_path / "nothing-here")


def test_shard_writer_writes_nothing_on_error(tmp_path: Path) -> None:
    png = encode_png(Image.new("L", (32, 32)), 32, 1)
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, 4) as w:
        for _ in range(6):
            w.add(png, 0, "a")
        raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["shard-00000.parquet"]


def test_load_manifest_missing_or_invalid(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run `acgan ingest`"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"source": "synthetic"}')
    with pytest.raises(DataError, match="not a valid manifest"):
        load_manifest(tmp_path)


# ----------------------------------------------------------------------------- ImageFolder


def _save(path: Path, img: Image.Image, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)


def _rgb(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """root/<class>/ with mixed sizes, modes and formats, a nested folder and non-images."""
    root = tmp_path / "raw"
    _save(root / "cat" / "a.png", _rgb(50, 40, 0))
    _save(root / "cat" / "b.jpg", _rgb(64, 64, 1), "JPEG")
    _save(root / "cat" / "nested" / "c.png", _rgb(20, 90, 2).convert("RGBA"))
    _save(root / "dog" / "d.png", _rgb(33, 33, 3).convert("L"))
    _save(root / "dog" / "e.gif", _rgb(70, 30, 4).convert("P"))
    _save(root / "dog" / "f.bmp", _rgb(128, 100, 5))
    (root / "dog" / "notes.txt").write_text("not an image")
    _save(root / "dog" / ".hidden.png", _rgb(10, 10, 6))
    (root / "README.md").write_text("files at the root are not a class")
    return root


@pytest.mark.parametrize(("channels", "mode"), [(1, "L"), (3, "RGB")])
def test_imagefolder_mixed_files_are_converted(
    folder: Path, tmp_path: Path, make_cfg: Callable[..., Config], channels: int, mode: str
) -> None:
    cfg = make_cfg("data.source=imagefolder", f"data.root={folder}", f"data.channels={channels}")
    m = ingest(cfg.data, tmp_path / "out", progress=False)
    assert m.class_names == ["cat", "dog"] and m.counts == {"cat": 3, "dog": 3}
    assert m.mode == mode
    data = read_images(tmp_path / "out")
    assert data.images.shape == (6, channels, 32, 32)
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_imagefolder_source_lists_paths_in_a_stable_order(
    folder: Path, make_cfg: Callable[..., Config]
) -> None:
    src = iter_source(make_cfg("data.source=imagefolder", f"data.root={folder}").data)
    rel = [(p.relative_to(folder).as_posix(), label) for p, label in src]
    assert rel == [
        ("cat/a.png", 0),
        ("cat/b.jpg", 0),
        ("cat/nested/c.png", 0),
        ("dog/d.png", 1),
        ("dog/e.gif", 1),
        ("dog/f.bmp", 1),
    ]


@pytest.mark.parametrize("garbage", [b"this is not a png", "truncated"])
def test_corrupt_file_fails_naming_it_or_is_skipped_and_counted(
    folder: Path, tmp_path: Path, make_cfg: Callable[..., Config], garbage: bytes | str
) -> None:
    bad = folder / "dog" / "zz_bad.png"
    if garbage == "truncated":
        buf = io.BytesIO()
        _rgb(32, 32, 9).save(buf, format="PNG")
        bad.write_bytes(buf.getvalue()[:200])
    else:
        bad.write_bytes(garbage)
    base = ("data.source=imagefolder", f"data.root={folder}")
    with pytest.raises(DataError, match=r"zz_bad\.png: not a readable image.*on_bad_image: skip"):
        ingest(make_cfg(*base).data, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    m = ingest(make_cfg(*base, "data.on_bad_image=skip").data, tmp_path / "out", progress=False)
    assert m.skipped_bad_images == 1 and m.skipped_files == ["dog/zz_bad.png"]
    assert m.counts == {"cat": 3, "dog": 3}


def test_empty_class_fails_naming_it(
    folder: Path, tmp_path: Path, make_cfg: Callable[..., Config]
) -> None:
    (folder / "emu").mkdir()
    (folder / "emu" / "readme.txt").write_text("no images here")
    cfg = make_cfg("data.source=imagefolder", f"data.root={folder}")
    with pytest.raises(DataError, match="class 'emu' has no image files"):
        ingest(cfg.data, tmp_path / "out", progress=False)
    # Leaving the class out with data.classes works.
    cfg = make_cfg("data.source=imagefolder", f"data.root={folder}", "data.classes=[cat, dog]")
    assert ingest(cfg.data, tmp_path / "out", progress=False).total == 6


def test_class_with_only_bad_files_fails_naming_it(
    folder: Path, tmp_path: Path, make_cfg: Callable[..., Config]
) -> None:
    (folder / "emu").mkdir()
    (folder / "emu" / "x.png").write_bytes(b"garbage")
    cfg = make_cfg("data.source=imagefolder", f"data.root={folder}", "data.on_bad_image=skip")
    with pytest.raises(DataError, match="class 'emu': no readable images"):
        ingest(cfg.data, tmp_path / "out", progress=False)


def test_imagefolder_root_missing(tmp_path: Path, make_cfg: Callable[..., Config]) -> None:
    cfg = make_cfg("data.source=imagefolder", f"data.root={tmp_path / 'nope'}")
    with pytest.raises(DataError, match="^data.root: .*nope is not a directory"):
        iter_source(cfg.data)


def test_unknown_class_in_data_classes(folder: Path, make_cfg: Callable[..., Config]) -> None:
    cfg = make_cfg("data.source=imagefolder", f"data.root={folder}", "data.classes=[cat, cow]")
    with pytest.raises(DataError, match=r"data.classes: unknown class 'cow'.*'cat', 'dog'"):
        iter_source(cfg.data)
    with pytest.raises(DataError, match=r"unknown class 'dragon'.*'circle'"):
        iter_source(make_cfg("data.classes=[dragon]").data)
    with pytest.raises(ConfigError, match="listed twice"):
        iter_source(make_cfg("data.classes=[star, star]").data)


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("mnist", "MNIST"),
        ("fashion_mnist", "Fashion-MNIST"),
        ("cifar10", "CIFAR-10"),
        ("cifar100", "CIFAR-100"),
    ],
)
def test_torchvision_source_missing_without_download(
    tmp_path: Path, make_cfg: Callable[..., Config], source: str, shown: str
) -> None:
    cfg = make_cfg(f"data.source={source}", f"data.root={tmp_path}", "data.download=false")
    with pytest.raises(
        DataError,
        match=f"^data.root: {shown} not found under .*data.download: "
        "true or put the dataset there$",
    ):
        iter_source(cfg.data)


# ----------------------------------------------------------------------------- atomicity


def test_failed_ingest_leaves_previous_output_untouched(
    tmp_path: Path, make_cfg: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ingested"
    ingest(make_cfg().data, out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    calls = {"n": 0}
    real = ingest_mod.encode_png

    def flaky(img: Image.Image, resolution: int, channels: int) -> bytes:
        calls["n"] += 1
        if calls["n"] == 150:  # after two shards have been written
            raise RuntimeError("simulated crash mid-ingest")
        return real(img, resolution, channels)

    monkeypatch.setattr(ingest_mod, "encode_png", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ingest(make_cfg("data.synthetic_seed=3").data, out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ingested"]  # no temp dir left


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format torchvision's MNIST reads (magic: 0x08 = uint8, then the rank)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_source_iterates_a_local_copy(
    tmp_path: Path, make_cfg: Callable[..., Config]
) -> None:
    """The real torchvision code path on a tiny MNIST-format copy made here (no network)."""
    raw = tmp_path / "root" / "MNIST" / "raw"
    labels = np.array([3, 1, 3, 0, 3, 1, 9, 3], dtype=np.uint8)
    images = np.stack([np.full((28, 28), 20 * i, dtype=np.uint8) for i in range(len(labels))])
    for split in ("train", "t10k"):
        _write_idx(raw / f"{split}-images-idx3-ubyte", images)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    cfg = make_cfg(
        "data.source=mnist",
        f"data.root={tmp_path / 'root'}",
        "data.classes=['3 - three', '1 - one']",
        "data.max_per_class=2",
    )
    m = ingest(cfg.data, tmp_path / "out", progress=False)
    assert m.class_names == ["1 - one", "3 - three"]
    assert m.counts == {"1 - one": 2, "3 - three": 2}
    data = read_images(tmp_path / "out")
    assert data.images.shape == (4, 3, 32, 32)
    # Source order, first two of each class: rows 0 (3), 1 (1), 2 (3), 5 (1).
    assert data.labels.tolist() == [1, 0, 1, 0]
    assert data.images[:, 0, 16, 16].tolist() == [0, 20, 40, 100]
