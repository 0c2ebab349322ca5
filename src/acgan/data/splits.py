"""The split stage: group the dataset's classes (one AC-GAN per group) and measure real data.

``out_dir/splits.json`` records the plan, the dataset's content hash, and per class the mean
pairwise MS-SSIM of real images (``reference_msssim``, ``reference_max``) that the collapse
monitor and the evaluation compare generated samples against. ``out_dir/split_<id>/`` holds
each split's rows as shards (labels stay dataset-level). The whole directory is built beside
``out_dir`` and renamed over it, so a failure leaves the previous plan intact.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acgan.config import Config, SplitConfig
from acgan.data.ingest import load_manifest
from acgan.data.shards import RowHasher, ShardWriter, decode_pngs, read_shard
from acgan.errors import ConfigError, DataError
from acgan.io import atomic_write_json
from acgan.lineage import stage
from acgan.metrics import msssim
from acgan.progress import progress_bar

SPLITS_JSON = "splits.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SplitSpec:
    """One AC-GAN's share of the dataset: dataset-level class indices and their names."""

    id: int
    classes: list[int]
    class_names: list[str]
    counts: dict[int, int] = field(default_factory=dict)  # images per class (after splitting)


@dataclass(frozen=True)
class SplitPlan:
    root: Path  # the directory holding splits.json
    data_hash: str  # content hash of the ingested dataset
    class_names: list[str]  # dataset-level
    resolution: int
    channels: int
    splits: list[SplitSpec]
    reference_msssim: dict[int, float]  # real-image mean pairwise MS-SSIM per planned class
    reference_max: float
    protocol: str  # MS-SSIM protocol of the reference figures (acgan.metrics.msssim.PROTOCOL)

    @property
    def ids(self) -> list[int]:
        return [s.id for s in self.splits]

    def split(self, split_id: int) -> SplitSpec:
        for s in self.splits:
            if s.id == split_id:
                return s
        valid = ", ".join(str(i) for i in self.ids)
        raise DataError(
            f"split {split_id}: not in {self.root / SPLITS_JSON} (valid ids: "
            f"{valid}); use one of those or re-run `acgan split`"
        )

    def split_dir(self, split_id: int) -> Path:
        return self.root / f"split_{self.split(split_id).id}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "data_hash": self.data_hash,
            "class_names": self.class_names,
            "resolution": self.resolution,
            "channels": self.channels,
            "protocol": self.protocol,
            "reference_msssim": {str(c): v for c, v in self.reference_msssim.items()},
            "reference_max": self.reference_max,
            "splits": [
                {
                    "id": s.id,
                    "classes": s.classes,
                    "class_names": s.class_names,
                    "counts": {str(c): n for c, n in s.counts.items()},
                    "total": sum(s.counts.values()),
                    "data_dir": f"split_{s.id}",
                }
                for s in self.splits
            ],
        }


def plan_splits(class_names: Sequence[str], cfg: SplitConfig) -> list[SplitSpec]:
    """Contiguous groups of ``cfg.classes_per_split`` classes, or ``cfg.classes`` verbatim."""
    n = len(class_names)
    if n == 0:
        raise DataError("the dataset has no classes; re-run `acgan ingest`")
    if cfg.classes is not None:
        groups = []
        for i, group in enumerate(cfg.classes):
            for c in group:
                if not 0 <= c < n:
                    raise ConfigError(
                        f"split.classes[{i}]: class {c} does not exist; the "
                        f"dataset has {n} classes (0..{n - 1})"
                    )
            groups.append(sorted(group))
    else:
        k = cfg.classes_per_split
        if k > n:
            raise ConfigError(
                f"split.classes_per_split: {k} is larger than the {n} classes of "
                f"the dataset; use at most {n}"
            )
        groups = [list(range(start, min(start + k, n))) for start in range(0, n, k)]
    return [
        SplitSpec(id=i, classes=g, class_names=[class_names[c] for c in g])
        for i, g in enumerate(groups)
    ]


def check_ids(specs: Sequence[SplitSpec], ids: Sequence[int]) -> None:
    """``split.ids`` must name exactly the plan's splits: DVC's ``train@ID`` stages come from it."""
    plan_ids = [s.id for s in specs]
    if sorted(ids) != plan_ids:
        n = len(plan_ids)
        raise ConfigError(
            f"split.ids: {list(ids)} does not match the {n} split"
            f"{'s' if n != 1 else ''} of the plan; set split.ids: {plan_ids}"
        )


def _reference(
    pngs: dict[int, bytes], rows: np.ndarray, pairs: tuple[torch.Tensor, ...], source: Path
) -> float:
    """Mean MS-SSIM of the given pairs of one class, decoding only the images they use."""
    ia, ib = pairs
    used = torch.unique(torch.cat([ia, ib]))  # sorted
    images = torch.from_numpy(decode_pngs([pngs[int(rows[u])] for u in used.tolist()], source))
    images = images.permute(0, 3, 1, 2).contiguous()
    a = images[torch.searchsorted(used, ia)]
    b = images[torch.searchsorted(used, ib)]
    return float(msssim.msssim_pairs(a, b).mean())


def make_splits(ingested_dir: Path, out_dir: Path, cfg: Config, progress: bool = True) -> SplitPlan:
    """Write ``out_dir/splits.json`` and ``out_dir/split_<id>/`` shards; return the plan."""
    ingested_dir, out_dir = Path(ingested_dir), Path(out_dir)
    manifest = load_manifest(ingested_dir)
    specs = plan_splits(manifest.class_names, cfg.split)
    check_ids(specs, cfg.split.ids)
    try:
        protocol = msssim.protocol(manifest.resolution)
    except ValueError as exc:
        raise DataError(
            f"{ingested_dir}: {exc}; re-ingest at data.resolution 32, 64 or 128"
        ) from exc
    files = [ingested_dir / s.file for s in manifest.shards]
    for f in files:
        if not f.is_file():
            raise DataError(f"{f}: listed in manifest.json but missing; re-run `acgan ingest`")

    # Pass 1: labels only (cheap), to count and to pick the reference pairs up front, so that
    # pass 2 keeps just the PNGs those pairs use instead of the whole dataset.
    labels = np.concatenate([read_shard(f, ["label"]).column("label").to_numpy() for f in files])
    if len(labels) != manifest.total:
        raise DataError(
            f"{ingested_dir}: shards hold {len(labels)} rows, manifest.json says "
            f"{manifest.total}; re-run `acgan ingest`"
        )
    planned = sorted(c for s in specs for c in s.classes)
    rows_of = {c: np.flatnonzero(labels == c) for c in planned}
    pairs: dict[int, tuple[torch.Tensor, ...]] = {}
    for c in planned:
        if len(rows_of[c]) < 2:
            raise DataError(
                f"class {c} ('{manifest.class_names[c]}'): only 1 image; "
                "the MS-SSIM reference needs at least 2; add images or drop the class"
            )
        gen = msssim.class_generator(cfg.split.seed, c)
        pairs[c] = msssim.sample_pairs(len(rows_of[c]), cfg.split.reference_pairs, gen)
    # The rows each class's pairs use; a class's reference is computed as soon as its last
    # such row has been seen, and its PNGs dropped (memory stays bounded for class-ordered
    # sources such as an ImageNet folder).
    wanted = {c: {int(rows_of[c][i]) for i in torch.cat(pairs[c]).tolist()} for c in planned}
    remaining = {c: len(rows) for c, rows in wanted.items()}
    split_of = {c: s.id for s in specs for c in s.classes}
    reference: dict[int, float] = {}

    with (
        stage("split", cfg, out_dir, data_hash=manifest.content_hash) as st,
        st.output() as tmp,
    ):
        kept: dict[int, bytes] = {}
        hasher = RowHasher()
        with contextlib.ExitStack() as stack:
            writers = {
                s.id: stack.enter_context(
                    ShardWriter(
                        tmp / f"split_{s.id}", cfg.data.shard_rows, class_names=manifest.class_names
                    )
                )
                for s in specs
            }
            bar = stack.enter_context(
                progress_bar(total=len(labels), desc="split", unit="img", disable=not progress)
            )
            row = 0
            for f in files:
                t = read_shard(f, ["png", "label", "class_name"])
                for png, label, name in zip(
                    t.column("png").to_pylist(),
                    t.column("label").to_pylist(),
                    t.column("class_name").to_pylist(),
                    strict=True,
                ):
                    hasher.update(png, label)
                    sid = split_of.get(label)
                    if sid is not None:
                        writers[sid].add(png, label, name)
                        if row in wanted[label]:
                            kept[row] = png
                            remaining[label] -= 1
                            if remaining[label] == 0:
                                value = _reference(kept, rows_of[label], pairs[label], f)
                                reference[label] = round(value, 6)
                                for r in wanted[label]:
                                    del kept[r]
                    row += 1
                bar.update(t.num_rows)
        if hasher.hexdigest() != manifest.content_hash:
            raise DataError(
                f"{ingested_dir}: the shards do not match manifest.json's content "
                "hash (changed after ingest?); re-run `acgan ingest`"
            )

        reference = {c: reference[c] for c in planned}
        counts = {c: int(len(rows_of[c])) for c in planned}
        plan = SplitPlan(
            root=out_dir,
            data_hash=manifest.content_hash,
            class_names=manifest.class_names,
            resolution=manifest.resolution,
            channels=manifest.channels,
            splits=[
                SplitSpec(s.id, s.classes, s.class_names, {c: counts[c] for c in s.classes})
                for s in specs
            ],
            reference_msssim=reference,
            reference_max=max(reference.values()),
            protocol=protocol,
        )
        atomic_write_json(tmp / SPLITS_JSON, plan.to_dict())
    return plan


def load_plan(splits_dir: str | Path) -> SplitPlan:
    """Read ``splits_dir/splits.json`` (DataError telling to run ``acgan split`` if absent)."""
    root = Path(splits_dir)
    path = root / SPLITS_JSON
    if not path.is_file():
        raise DataError(f"{path}: not found; run `acgan split` first")
    try:
        raw = json.loads(path.read_text())
        splits = [
            SplitSpec(
                id=int(s["id"]),
                classes=[int(c) for c in s["classes"]],
                class_names=[str(n) for n in s["class_names"]],
                counts={int(c): int(n) for c, n in s.get("counts", {}).items()},
            )
            for s in raw["splits"]
        ]
        return SplitPlan(
            root=root,
            data_hash=str(raw["data_hash"]),
            class_names=[str(n) for n in raw["class_names"]],
            resolution=int(raw["resolution"]),
            channels=int(raw["channels"]),
            splits=splits,
            reference_msssim={int(c): float(v) for c, v in raw["reference_msssim"].items()},
            reference_max=float(raw["reference_max"]),
            protocol=str(raw["protocol"]),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(
            f"{path}: not a valid split plan ({type(exc).__name__}: {exc}); re-run `acgan split`"
        ) from exc
