"""The ensemble: one generator per split, each class label routed to its split's generator.

A domain object shared by evaluation, ``acgan generate`` and the registry's pyfunc wrapper.
Members are loaded from the trainer's ``generator.pt`` files (plain dicts, ``weights_only``);
a member that fails to load is reported by split and file, never papered over.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from acgan import checkpoint
from acgan.errors import AcganError, CheckpointError
from acgan.io import atomic_write_json, file_sha256, one_line
from acgan.models.acgan import GArch, Generator
from acgan.models.sampling import generate, latents

GENERATOR_FILE = "generator.pt"
GENERATOR_FORMAT = "acgan.generator/1"  # written by acgan.train.state.generator_record


@dataclass
class Member:
    split_id: int
    classes: list[int]  # dataset-level class indices
    class_names: list[str]
    G: Generator
    path: Path
    step: int


def write_generator(rec: dict[str, Any], directory: Path) -> str:
    """Save a split's generator file into ``directory``; returns its SHA-256, which the
    trainer records in ``train.json`` and every :func:`load_member` checks."""
    return file_sha256(checkpoint.save(rec, Path(directory) / GENERATOR_FILE))


def _recorded(path: Path) -> tuple[str | None, str]:
    """The SHA-256 that ``train.json`` beside a generator file recorded, and its split's name."""
    try:
        train = json.loads((path.parent / "train.json").read_text())
    except (OSError, ValueError):
        return None, path.parent.name
    if not isinstance(train, dict):
        return None, path.parent.name
    sha = train.get("generator_sha256")
    return (sha if isinstance(sha, str) else None), f"split {train.get('split_id', '?')}"


def verify_sha256(path: Path, expected: str | None = None) -> None:
    """Check a generator file against the SHA-256 recorded when it was written (``expected``,
    else its ``train.json``): a damaged or modified file is an error naming its split."""
    recorded, split = _recorded(path)
    want = expected or recorded
    if want is None:  # written before hashes were recorded
        return
    actual = file_sha256(path)
    if actual != want:
        raise CheckpointError(
            f"{split}: {path} does not match the SHA-256 recorded when it was written "
            f"({actual[:12]} != {want[:12]}): damaged or modified; retrain the split "
            "or restore the file"
        )


def load_member(
    path: str | Path, device: torch.device | str = "cpu", sha256: str | None = None
) -> Member:
    """Load one split's generator from its output directory or ``generator.pt`` file, after
    checking its SHA-256 (``sha256``, else the one its ``train.json`` recorded)."""
    path = Path(path)
    if path.is_dir():
        path = path / GENERATOR_FILE
    if path.is_file():
        verify_sha256(path, sha256)
    rec = checkpoint.load(
        path,
        map_location="cpu",
        fix=f"the file is damaged; retrain the split in {path.parent} or restore the file",
    )
    if rec.get("format") != GENERATOR_FORMAT:
        raise CheckpointError(
            f"{path}: not a generator file (format {rec.get('format')!r}); "
            "point at a split's training output (models/split_<id>)"
        )
    try:
        G = Generator(
            int(rec["num_classes"]),
            int(rec["latent_dim"]),
            int(rec["resolution"]),
            int(rec["channels"]),
            GArch.from_record(rec.get("arch")),
        )
        G.load_state_dict(rec["state_dict"])
        classes, names = [int(c) for c in rec["classes"]], [str(n) for n in rec["class_names"]]
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: generator weights are damaged or do not match "
            f"({str(exc).splitlines()[0][:160]}); retrain split "
            f"{rec.get('split_id', '?')}"
        ) from exc
    if len(classes) != G.num_classes:
        raise CheckpointError(
            f"{path}: {len(classes)} classes listed but G has "
            f"{G.num_classes}; retrain split {rec.get('split_id', '?')}"
        )
    for name, t in G.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(
                f"{path}: non-finite values in {name}; retrain split {rec.get('split_id', '?')}"
            )
    G.to(device).eval().requires_grad_(False)
    return Member(int(rec["split_id"]), classes, names, G, path, int(rec.get("step", 0)))


class Ensemble:
    """Routes each dataset class to the generator of the split that holds it."""

    def __init__(self, members: Sequence[Member]) -> None:
        if not members:
            raise AcganError("ensemble: no split generators given; train at least one split")
        first = members[0].G
        self.members = sorted(members, key=lambda m: m.split_id)
        self.resolution, self.channels = first.resolution, first.channels
        self.latent_dim = first.latent_dim
        self._route: dict[int, tuple[Member, int]] = {}
        self.class_names: dict[int, str] = {}
        for m in self.members:
            if (m.G.resolution, m.G.channels, m.G.latent_dim) != (
                self.resolution,
                self.channels,
                self.latent_dim,
            ):
                raise AcganError(
                    f"{m.path}: split {m.split_id} is "
                    f"{m.G.resolution}px/{m.G.channels}ch, the ensemble "
                    f"{self.resolution}px/{self.channels}ch; retrain it"
                )
            for local, (c, name) in enumerate(zip(m.classes, m.class_names, strict=True)):
                if c in self._route:
                    raise AcganError(
                        f"{m.path}: class {c} ({name}) is already served by split "
                        f"{self._route[c][0].split_id}; each class needs one split"
                    )
                self._route[c] = (m, local)
                self.class_names[c] = name

    @classmethod
    def load(
        cls,
        paths: Sequence[str | Path],
        device: torch.device | str = "cpu",
        sha256s: Sequence[str | None] | None = None,
    ) -> Ensemble:
        hashes = list(sha256s) if sha256s is not None else [None] * len(paths)
        return cls([load_member(p, device, h) for p, h in zip(paths, hashes, strict=True)])

    @classmethod
    def from_manifest(cls, path: str | Path, device: torch.device | str = "cpu") -> Ensemble:
        """The ensemble an ensemble manifest lists, each file checked against its SHA-256."""
        return cls.load(read_manifest(path), device, manifest_hashes(path))

    @property
    def classes(self) -> list[int]:
        return sorted(self._route)

    @property
    def device(self) -> torch.device:
        return next(self.members[0].G.parameters()).device

    def describe_classes(self) -> str:
        return ", ".join(f"{c}={n}" for c, n in sorted(self.class_names.items()))

    def resolve(self, label: Any) -> int:
        """A class index or name -> the dataset class index; unknown -> error listing all."""
        if isinstance(label, str) and not label.strip().lstrip("-").isdigit():
            for c, n in self.class_names.items():
                if n == label:
                    return c
        else:
            try:
                c = int(label)
            except (TypeError, ValueError):
                c = None
            if c in self._route:
                return c
        raise AcganError(
            f"class_label {label!r} is not in this ensemble; valid classes: "
            f"{self.describe_classes()}"
        )

    def member_for(self, label: Any) -> Member:
        return self._route[self.resolve(label)][0]

    def generate(
        self, label: Any, n: int, seed: int = 0, batch_size: int = 1000, z: Tensor | None = None
    ) -> Tensor:
        """``n`` uint8 images (n, C, H, W) of one class; the same seed gives the same images
        (and the same noise for every class, which is what class-swap grids rely on)."""
        if n < 1:
            raise AcganError(f"n: {n} samples requested; ask for at least 1")
        member, local = self._route[self.resolve(label)]
        if z is None:
            z = latents(n, self.latent_dim, seed, self.device)
        labels = torch.full((n,), local, dtype=torch.long, device=self.device)
        return generate(member.G, labels, z.to(self.device), batch_size)

    def to(self, device: torch.device | str) -> Ensemble:
        for m in self.members:
            m.G.to(device)
        return self


# The ensemble manifest: which split directories make up the ensemble (written by the monitor
# stage after it has dropped or retrained collapsed splits; read by evaluate, register, KFP).
ENSEMBLE_JSON = "ensemble.json"
# Marks a manifest whose member paths are relative to the manifest's own directory, so the
# manifest and its members can move together (a DVC checkout, a KFP artifact) and any working
# directory reads it. A manifest without it (written before) holds paths relative to the
# working directory it was written from; those are read as such.
PATHS_KEY, PATHS_RELATIVE = "paths", "relative to this file"


def _manifest_file(path: str | Path) -> Path:
    path = Path(path)
    return path / ENSEMBLE_JSON if path.is_dir() or not path.suffix else path


def write_manifest(
    path: str | Path, members: Sequence[dict[str, Any]], excluded: Sequence[dict[str, Any]] = ()
) -> Path:
    """``members``: ``{"split_id", "model_dir", "status", ...}``; ``excluded``: ``{"split_id",
    "reason", ...}``. Each ``model_dir`` (a relative one: relative to the working directory)
    is stored relative to the manifest's directory, so the manifest reads the same from any
    working directory and after its tree has moved as a whole."""
    path = _manifest_file(path)
    here = path.parent.absolute()

    def rel(entry: dict[str, Any]) -> dict[str, Any]:
        if entry.get("model_dir") is None:
            return dict(entry)
        return {**entry, "model_dir": os.path.relpath(Path(entry["model_dir"]).absolute(), here)}

    atomic_write_json(
        path,
        {
            PATHS_KEY: PATHS_RELATIVE,
            "members": [rel(m) for m in members],
            "excluded": [rel(e) for e in excluded],
        },
    )
    return path


def manifest_hashes(path: str | Path) -> list[str | None]:
    """Each member's generator SHA-256 as the manifest records it (None where it does not),
    in the order of :func:`read_manifest`."""
    path = Path(path)
    if path.is_dir():
        path = path / ENSEMBLE_JSON
    members = json.loads(path.read_text())["members"]
    return [m.get("sha256") if isinstance(m.get("sha256"), str) else None for m in members]


def read_manifest(path: str | Path) -> list[Path]:
    """The member directories listed in an ensemble manifest, resolved against the manifest's
    own directory (a manifest written before that rule: against the working directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / ENSEMBLE_JSON
    try:
        raw = json.loads(path.read_text())
        dirs = [Path(m["model_dir"]) for m in raw["members"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AcganError(
            f"{path}: not a readable ensemble manifest ({one_line(exc)}); re-run `acgan monitor`"
        ) from exc
    if not dirs:
        excluded = "; ".join(
            f"split {e.get('split_id')}: {e.get('reason')}" for e in raw.get("excluded", [])
        )
        raise AcganError(f"{path}: every split was excluded ({excluded}); retrain them")
    if raw.get(PATHS_KEY) != PATHS_RELATIVE:
        return dirs
    # normpath: "reports/monitor/../../models/split_0" reads as "models/split_0"
    return [Path(os.path.normpath(path.parent / d)) for d in dirs]


def find_split_dirs(root: str | Path, split_ids: Sequence[int]) -> list[Path]:
    """The training output of each split under ``root``: ``root/split_<id>`` (one process per
    split) or ``root/<group>/split_<id>`` (packed training writes a group directory).
    A split with no ``train.json`` is an error naming it."""
    root = Path(root)
    found = []
    for sid in split_ids:
        candidates = [root / f"split_{sid}", *sorted(root.glob(f"*/split_{sid}"))]
        hit = next((c for c in candidates if (c / "train.json").is_file()), None)
        if hit is None:
            raise AcganError(
                f"{root}: no training output for split {sid} (split_{sid}/train.json); "
                f"run `acgan train --split {sid}` (or `dvc repro`) first"
            )
        found.append(hit)
    return found
