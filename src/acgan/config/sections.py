"""The configuration's sections: one frozen dataclass per ``params.yaml`` section, each field
with its default, its documentation (``acgan config --list``) and its validation rules
(``choices``, ``min``/``max``), and :class:`Config`, the whole of them. Loading, layering and
validating a file is :mod:`acgan.config` (the package)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from acgan.errors import mask_credentials

SOURCES = ("synthetic", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder")


def _f(default: Any, doc: str, **rules: Any) -> Any:
    """A dataclass field with a default, a doc string and validation rules."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"doc": doc, **rules})
    return field(default=default, metadata={"doc": doc, **rules})


@dataclass(frozen=True)
class DataConfig:
    source: str = _f("synthetic", "dataset source", choices=SOURCES)
    root: str = _f("data/raw", "where torchvision datasets / the ImageFolder tree live")
    download: bool = _f(False, "let torchvision download the dataset into data.root")
    resolution: int = _f(32, "image size in pixels (square)", choices=(32, 64, 128))
    channels: int = _f(3, "1 (grayscale) or 3 (RGB); sources are converted", choices=(1, 3))
    on_bad_image: str = _f(
        "error", "corrupt image file: fail, or skip and count it", choices=("error", "skip")
    )
    classes: list[str] | None = _f(None, "keep only these class names (e.g. an ImageNet subset)")
    max_per_class: int | None = _f(None, "cap on images per class (first N in source order)", min=1)
    synthetic_per_class: int = _f(600, "images per class of the synthetic source", min=10)
    synthetic_seed: int = _f(0, "seed of the synthetic source", min=0)
    shard_rows: int = _f(4096, "images per Parquet shard", min=64)
    max_image_pixels: int = _f(
        8_000_000,
        "largest image decoded (width x height, after JPEG's reduced-size decoding); "
        "a bigger one stops ingest naming it",
        min=1024,
    )


@dataclass(frozen=True)
class SplitConfig:
    classes_per_split: int = _f(5, "classes per AC-GAN (the paper: 10)", min=1)
    classes: list[list[int]] | None = _f(
        None, "explicit class groups (lists of class indices); overrides classes_per_split"
    )
    ids: list[int] = _f(
        [0, 1], "split ids dvc repro trains as train@ID (acgan split checks them)", min=0
    )
    reference_pairs: int = _f(
        100, "image pairs per class for the real-data MS-SSIM reference", min=2
    )
    seed: int = _f(0, "seed for choosing the reference pairs", min=0)


@dataclass(frozen=True)
class ModelConfig:
    """The networks. The defaults are the project's recipe (docs/quality.md: the paper's
    networks without D's dropout, with nearest-neighbour upsampling and a G two thirds as wide);
    ``recipe: paper`` restores Tables 1-2 exactly."""

    latent_dim: int = _f(100, "noise dimensions; G's input is one-hot(classes) + noise", min=1)
    g_widths: list[int] | None = _f(
        None,
        "G's maps: the Linear layer's, then one per upsampling block (null: the paper's, "
        "384, 192, 96 at 32 px)",
        min=1,
    )
    g_width_scale: float = _f(
        0.667,
        "multiplies the paper's G widths when g_widths is null (2/3: 256, 128, 64 at 32 px)",
        min=0.05,
        max=4.0,
    )
    g_upsample: str = _f(
        "nearest",
        "G's doubling: the paper's 5x5 stride-2 transposed conv, a 4x4 one, or "
        "nearest-neighbour + 3x3 conv (no checkerboards)",
        choices=("transposed5", "transposed4", "nearest"),
    )
    g_norm: str = _f(
        "batch",
        "G's normalisation: BatchNorm (paper), ProGAN's pixelwise, none",
        choices=("batch", "pixel", "none"),
    )
    d_widths: list[int] | None = _f(
        None, "D's six convolutions' maps (null: the paper's 16 ... 512)", min=1
    )
    d_norm: str = _f(
        "batch", "D's normalisation: BatchNorm (paper) or none", choices=("batch", "none")
    )
    d_spectral_norm: bool = _f(False, "spectral normalisation of every D weight (Miyato 2018)")
    d_dropout: float = _f(
        0.0,
        "dropout after each D layer (the paper: 0.5; short runs learn faster with less)",
        min=0.0,
        max=0.9,
    )
    d_mbstd: bool = _f(False, "ProGAN's minibatch standard-deviation map before D's heads")
    d_noise_std: float = _f(
        0.0,
        "Gaussian noise on D's activations while training (the paper's grid: 0, 0.1, 0.2)",
        min=0.0,
        max=1.0,
    )
    equalized_lr: bool = _f(False, "ProGAN's equalised learning rate in G and D")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = _f(400, "optimisation steps per split (one D and one G update each)", min=1)
    batch_size: int = _f(64, "images per step", min=2, max=65536)
    lr: float = _f(2e-4, "Adam learning rate (G and D unless lr_g / lr_d)", min=1e-7, max=1.0)
    lr_g: float | None = _f(None, "G's learning rate (null: train.lr)", min=1e-7, max=1.0)
    lr_d: float | None = _f(
        None, "D's learning rate (null: train.lr; two-timescale: lr_d > lr_g)", min=1e-7, max=1.0
    )
    d_steps: int = _f(1, "D updates per G update", min=1, max=16)
    loss: str = _f(
        "bce",
        "source loss: the paper's log-likelihood (non-saturating G) or hinge",
        choices=("bce", "hinge"),
    )
    fake_class_loss: bool = _f(
        False, "D's class loss includes G's samples (paper); false: real images only (ACGAN-Mod)"
    )
    class_weight: float = _f(
        1.0, "weight of the class loss in D's and G's objectives", min=0.0, max=100.0
    )
    mode_seeking: float = _f(
        0.0,
        "weight of the mode-seeking term in G's loss (MSGAN, Mao et al. 2019): pairs of samples "
        "of one class from different noise are pushed apart; 0: off",
        min=0.0,
        max=100.0,
    )
    mode_seeking_ref: str = _f(
        "noise",
        "what the mode-seeking term measures a class's sample spread against: noise (MSGAN: "
        "image distance over noise distance, always pushing apart) or data (only until the "
        "samples of a class are as far apart, in mean pixel distance, as its real images in "
        "the batch)",
        choices=("noise", "data"),
    )
    augment: list[str] = _f(
        [],
        "DiffAugment policies applied alike to D's real and fake inputs: color, translation, "
        "cutout",
        choices=("color", "translation", "cutout"),
    )
    d_joint_batch: bool = _f(
        False, "real and fake images through D as one batch (one set of BatchNorm statistics)"
    )
    beta1: float = _f(0.5, "Adam beta1", min=0.0, max=0.999999)
    beta2: float = _f(0.999, "Adam beta2", min=0.0, max=0.999999)
    seed: int = _f(0, "base seed; each split derives its own", min=0)
    device: str = _f("auto", "auto | cpu | cuda", choices=("auto", "cpu", "cuda"))
    amp: bool = _f(
        False, "bf16 autocast where the device has fast bf16 (GPU, AVX512-BF16/AMX CPU), else fp32"
    )
    ema_decay: float = _f(
        0.999, "EMA decay of G's weights (0 disables the EMA copy)", min=0.0, max=0.999999
    )
    checkpoint_every: int = _f(100, "steps between checkpoints", min=1)
    keep_checkpoints: int = _f(3, "newest checkpoints kept per split", min=1)
    log_every: int = _f(25, "steps between logged metrics (the only host sync)", min=1)
    sample_every: int = _f(200, "steps between logged sample grids", min=1)
    pack: int = _f(
        1,
        "splits trained together as one batched model on one device (1: one per process)",
        min=1,
        max=1024,
    )


@dataclass(frozen=True)
class MonitorConfig:
    enabled: bool = _f(True, "run the collapse monitor during training")
    every: int = _f(100, "steps between collapse checks", min=1)
    pairs: int = _f(50, "sample pairs per class for MS-SSIM (>= 50 recommended)", min=2)
    margin: float = _f(
        0.05, "a class's threshold = its own real-image MS-SSIM + margin", min=0.0, max=1.0
    )
    rise: float = _f(
        0.1,
        "a collapse also needs the class's MS-SSIM this far above its own best (the trend)",
        min=0.0,
        max=1.0,
    )
    warmup: float = _f(
        0.5,
        "fraction of train.steps whose checks neither arm the collapse rule nor set a class's "
        "best (a generator still learning its classes scores as diverse: noise is)",
        min=0.0,
        max=1.0,
    )
    threshold: float | None = _f(
        None, "explicit MS-SSIM threshold (overrides margin)", min=0.0, max=1.0
    )
    patience: int = _f(2, "consecutive checks above threshold before a class collapses", min=1)
    action: str = _f("warn", "what a collapse does", choices=("warn", "stop", "rollback"))
    max_rollbacks: int = _f(2, "rollbacks allowed per split", min=0)
    rollback_lr_factor: float = _f(
        0.5, "learning-rate factor applied at each rollback", min=1e-3, max=1.0
    )
    retrain_collapsed: bool = _f(
        True,
        "a split whose collapse monitor leaves classes collapsed at the end of training is "
        "trained once more from scratch with a new seed (by the trainer, into the same output)",
    )


@dataclass(frozen=True)
class EvalConfig:
    samples_per_class: int = _f(
        200, "generated samples per class (>= 2: MS-SSIM needs pairs)", min=2
    )
    batch_size: int = _f(500, "generation / feature-extraction batch", min=1)
    seed: int = _f(1234, "seed of the evaluation latents", min=0)
    judge_epochs: int = _f(8, "epochs of the judge classifier", min=1)
    judge_holdout: float = _f(
        0.1, "fraction of real images held out to score the judge", min=0.01, max=0.5
    )
    judge_seed: int = _f(0, "seed of the judge's initialisation, hold-out and batches", min=0)
    inception_weights: str | None = _f(
        None, "local torchvision Inception-v3 state_dict (.pth): judge with it, never download"
    )
    msssim_pairs: int = _f(100, "pairs per class for MS-SSIM diversity", min=2)
    memorisation_samples: int = _f(
        100, "samples per class searched for their nearest training image (pixel L1)", min=1
    )
    grid_classes: int = _f(10, "classes (rows) in the interpolation and class-swap grids", min=1)
    min_skill: float | None = _f(
        0.5,
        "gate: judge accuracy of samples as a fraction of the judge's skill on real images, "
        "(acc - chance) / (real acc - chance), at least this (null: no such gate)",
        min=0.0,
        max=2.0,
    )
    max_fid_ratio: float | None = _f(
        10.0,
        "gate: FID at most this many times the real-vs-real FID floor (null: no such gate)",
        min=1.0,
    )
    min_diverse_fraction: float = _f(
        0.3,
        "gate: fraction of classes at least as diverse as the least diverse real class",
        min=0.0,
        max=1.0,
    )
    require_all_classes: bool = _f(
        True, "gate: the ensemble must serve every class of the dataset (no excluded split)"
    )
    min_accuracy: float | None = _f(
        None,
        "gate: absolute judge accuracy of samples at least this (null: no such gate)",
        min=0.0,
        max=1.0,
    )
    max_fid: float | None = _f(
        None, "gate: absolute FID at most this (null: no such gate)", min=0.0
    )


@dataclass(frozen=True)
class RegistryConfig:
    enabled: bool = _f(True, "register the ensemble in the MLflow model registry")
    model_name: str | None = _f(None, "registered model name (default acgan-<data.source>)")
    primary_metric: str = _f(
        "judge_accuracy", "figure of reports/eval/metrics.json that decides the champion"
    )
    greater_is_better: bool = _f(True, "direction of the primary figure")
    retries: int = _f(
        4, "attempts per registry call (server / S3 hiccups) before a clean failure", min=1, max=20
    )
    retry_backoff_s: float = _f(
        1.0, "delay before the first retry, doubled at each further one", min=0.0, max=60.0
    )
    serve_max_images: int = _f(
        1024,
        "most images one predict call / POST /invocations of the registered model may ask for "
        "(refused with HTTP 400 before generating)",
        min=1,
        max=1_000_000,
    )
    turn_timeout_s: float = _f(
        60.0,
        "how long a registration waits for an older version still being registered (another "
        "`acgan register`) before going ahead",
        min=0.0,
        max=3600.0,
    )


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = _f(True, "log to MLflow (false: a no-op tracker)")
    uri: str = _f("sqlite:///mlflow.db", "MLflow tracking URI (MLFLOW_TRACKING_URI overrides)")
    experiment: str = _f("acgan", "MLflow experiment name")
    deadline_s: float = _f(
        30.0,
        "seconds one MLflow or registry call may take, retries included, before one error line",
        min=1.0,
        max=3600.0,
    )


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # The preset the values were layered on (recorded; its values are already in the sections).
    recipe: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Every key, as given (credentials included: what a later task needs to connect)."""
        return dataclasses.asdict(self)

    def record(self) -> dict[str, Any]:
        """:meth:`to_dict` for writing down (config.json, checkpoints, ``acgan config``): the
        user-info of URIs masked, so a tracking URI's credentials never reach a file."""
        d = self.to_dict()
        d["tracking"]["uri"] = mask_credentials(d["tracking"]["uri"])
        return d

    def flat(self) -> dict[str, Any]:
        """``{"train.steps": 400, ..., "recipe": "paper"}`` — the shape MLflow params want
        (credentials masked)."""
        out: dict[str, Any] = {}
        for s, sec in self.record().items():
            if isinstance(sec, dict):
                out.update({f"{s}.{k}": v for k, v in sec.items()})
            else:
                out[s] = sec
        return out

    def fingerprint(self, *sections: str, exclude: tuple[str, ...] = ()) -> str:
        """Short content hash of the given sections (all when none), minus ``exclude`` keys."""
        d = self.to_dict()
        picked = {s: d[s] for s in (sections or d.keys())}
        for key in exclude:
            sec, _, name = key.partition(".")
            picked.get(sec, {}).pop(name, None)
        blob = json.dumps(picked, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def model_name(self) -> str:
        return self.registry.model_name or f"acgan-{self.data.source.replace('_', '-')}"
