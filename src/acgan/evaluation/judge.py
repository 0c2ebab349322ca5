"""The judge stage (``acgan judge``): train the evaluation's judge classifier once on the real
data and cache it by the data's content hash.

``out_dir/``: ``judge.pt`` (plain-dict checkpoint, ``weights_only`` loadable), ``judge.json``
(held-out real accuracy overall and per class, the data hash it was trained on, the cache key,
the per-epoch history), ``training.png`` and ``config.json``. A second run on the same data with
the same ``eval.judge_*`` settings (and the same Inception weights file) keeps the judge that is
there: the key is the data hash plus those settings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from acgan import checkpoint
from acgan.config import Config, EvalConfig
from acgan.data.ingest import load_manifest
from acgan.data.shards import read_images
from acgan.evaluation.report import training_plot
from acgan.io import atomic_write_json, file_sha256, read_json_or_none
from acgan.lineage import stage
from acgan.metrics.judge import (
    JUDGE_FILE,
    JUDGE_FORMAT,
    JUDGE_JSON,
    InceptionJudge,
    Judge,
    accuracy,
    build_judge,
    holdout_mask,
    to_float,
)
from acgan.progress import progress_bar
from acgan.tracking import NullTracker, Tracker, png_bytes

# The keys that decide what the judge learns (its cache key also covers the data hash).
JUDGE_KEYS = ("judge_epochs", "judge_holdout", "judge_seed", "inception_weights")
TRAIN_BATCH = 64
LR = 2e-3


@dataclass(frozen=True)
class JudgeResult:
    out_dir: Path
    kind: str  # "cnn" or "inception-v3"
    real_accuracy: float  # top-1 on the held-out real images
    per_class_accuracy: dict[str, float]
    data_hash: str
    cached: bool  # True: judge.json already matched the data and config; nothing trained
    run_id: str | None


def judge_key(cfg: EvalConfig, data_hash: str) -> str:
    """The judge's cache key: the data's content hash + the judge's settings (+ the
    Inception weights' content)."""
    parts: dict[str, Any] = {
        "format": JUDGE_FORMAT,  # a new judge architecture invalidates cached judges
        "data_hash": data_hash,
        **{k: getattr(cfg, k) for k in JUDGE_KEYS},
    }
    if cfg.inception_weights and Path(cfg.inception_weights).expanduser().is_file():
        parts["inception_sha256"] = file_sha256(Path(cfg.inception_weights).expanduser())
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _cached(out_dir: Path, key: str) -> JudgeResult | None:
    info = read_json_or_none(out_dir / JUDGE_JSON)
    if info is None or info.get("key") != key or not (out_dir / JUDGE_FILE).is_file():
        return None
    return JudgeResult(
        out_dir,
        str(info["kind"]),
        float(info["real_accuracy"]),
        {str(k): float(v) for k, v in info["per_class_accuracy"].items()},
        str(info["data_hash"]),
        True,
        info.get("run_id"),
    )


def train_judge(
    cfg: Config,
    ingested_dir: Path,
    out_dir: Path,
    tracker: Tracker | None = None,
    *,
    parent_run_id: str | None = None,
    progress: bool = True,
) -> JudgeResult:
    """Train the judge on the real data (hold-out ``eval.judge_holdout`` per class to score
    it) and write ``out_dir``; a judge already there for the same data and settings is kept."""
    e, out_dir = cfg.eval, Path(out_dir)
    manifest = load_manifest(ingested_dir)
    key = judge_key(e, manifest.content_hash)
    hit = _cached(out_dir, key)
    if hit is not None:
        return hit
    data = read_images(Path(ingested_dir), progress=progress)
    hold = holdout_mask(data.labels, e.judge_holdout, e.judge_seed)
    judge = build_judge(
        manifest.class_names, manifest.resolution, manifest.channels, e.inception_weights
    )
    with stage(
        "judge",
        cfg,
        out_dir,
        data_hash=manifest.content_hash,
        tracker=tracker or NullTracker(),
        parent_run_id=parent_run_id,
        tags={"acgan.judge_key": key},
        params={f"eval.{k}": getattr(e, k) for k in JUDGE_KEYS},
    ) as st:
        run = st.run
        history = fit_judge(
            judge,
            data.images[~hold],
            data.labels[~hold],
            e.judge_epochs,
            e.judge_seed,
            holdout=(data.images[hold], data.labels[hold]),
            progress=progress,
            on_epoch=lambda row: run.log_metrics(
                {k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"])
            ),
        )
        logits = judge.embed(data.images[hold], e.batch_size).logits
        y = data.labels[hold]
        per_class = {
            name: accuracy(logits[y == c], y[y == c]) for c, name in enumerate(manifest.class_names)
        }
        info = {
            "kind": judge.kind,
            "key": key,
            "data_hash": manifest.content_hash,
            "real_accuracy": accuracy(logits, y),
            "per_class_accuracy": per_class,
            "holdout_fraction": e.judge_holdout,
            "seed": e.judge_seed,
            "train_images": int((~hold).sum()),
            "holdout_images": int(hold.sum()),
            "class_names": manifest.class_names,
            "resolution": manifest.resolution,
            "channels": manifest.channels,
            "num_features": judge.num_features,
            "history": history,
            "run_id": run.run_id,
        }
        plot = training_plot(history)
        with st.output(judge_key=key) as tmp:
            checkpoint.save(
                {**judge.record(), "key": key, "data_hash": manifest.content_hash},
                tmp / JUDGE_FILE,
            )
            atomic_write_json(tmp / JUDGE_JSON, info)
            (tmp / "training.png").write_bytes(png_bytes(plot))
        run.log_metrics({"real_accuracy": info["real_accuracy"]})
        run.log_image(plot, "judge/training.png")
        run.log_artifact(out_dir / JUDGE_JSON, "judge")
    return JudgeResult(
        out_dir,
        judge.kind,
        info["real_accuracy"],
        per_class,
        manifest.content_hash,
        False,
        run.run_id,
    )


def fit_judge(
    judge: Judge,
    images: Tensor,
    labels: Tensor,
    epochs: int,
    seed: int,
    holdout: tuple[Tensor, Tensor] | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train the judge's classifier (the CNN, or Inception's probe) with Adam and
    cross-entropy; returns per-epoch ``loss``, ``train_accuracy``, ``holdout_accuracy``."""
    device = judge.device
    gen = torch.Generator().manual_seed(int(seed))
    model: nn.Module
    if isinstance(judge.net, InceptionJudge):
        # The backbone is frozen: embed the training images once, then fit the probe alone.
        inputs = judge.embed(images, progress=progress, desc="inception features").features
        model = judge.net.probe
        step_logits: Callable[[Tensor], Tensor] = model
    else:
        inputs, model = images, judge.net
        step_logits = lambda x: judge.net.embed(to_float(x))[1]  # noqa: E731
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for m in model.modules():  # a reproducible initialisation, whatever ran before
            if isinstance(m, nn.Conv2d | nn.Linear | nn.BatchNorm2d):
                m.reset_parameters()
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    history: list[dict[str, float]] = []
    n = len(labels)
    for epoch in range(1, epochs + 1):
        model.train()
        judge.net.train()
        perm = torch.randperm(n, generator=gen)
        total, correct, seen = 0.0, 0, 0
        bar = progress_bar(
            range(0, n, TRAIN_BATCH),
            desc=f"judge epoch {epoch}/{epochs}",
            unit="batch",
            disable=not progress,
            leave=False,
        )
        for i in bar:
            idx = perm[i : i + TRAIN_BATCH]
            x, y = inputs[idx].to(device), labels[idx].to(device)
            logits = step_logits(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
        sched.step()
        row = {"epoch": float(epoch), "loss": total / seen, "train_accuracy": correct / seen}
        if holdout is not None and len(holdout[1]):
            row["holdout_accuracy"] = accuracy(judge.embed(holdout[0]).logits, holdout[1])
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    judge.eval()
    return history
