"""The judge: a classifier of the real data that scores generated samples.

The paper scores samples with an ImageNet-trained Inception network: its top-1 accuracy on
samples ("Inception accuracy"), its logits (Inception Score) and its pool features (FID). Our
datasets are not ImageNet and nothing may be downloaded, so by default the judge is a small
CNN trained once on the real training data at the dataset's resolution (:class:`JudgeNet`);
its held-out accuracy on real images says how far its verdicts can be trusted.

When the user supplies local torchvision Inception-v3 weights (``eval.inception_weights``), the
judge is that network, frozen, with a linear probe trained on our classes for the accuracy
figures; FID uses its 2048-d pool features and the Inception Score its own 1000-way logits
(the standard protocol).

Every judge maps uint8 images (N, C, H, W) to an :class:`Embedding`. ``Judge.forward`` returns
the features, so a judge is directly a torchmetrics feature extractor
(``FrechetInceptionDistance(feature=judge)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from acgan import checkpoint
from acgan.errors import CheckpointError
from acgan.io import one_line
from acgan.metrics.msssim import class_generator
from acgan.progress import progress_bar

JUDGE_FILE = "judge.pt"
JUDGE_JSON = "judge.json"
JUDGE_FORMAT = "acgan.judge/3"  # bump when JudgeNet changes: old judges then retrain
INCEPTION_SIZE = 299
_INCEPTION_FEATURES = 2048


class Embedding(NamedTuple):
    """What the judge sees in a batch of images (CPU float32 tensors)."""

    features: Tensor  # (N, D): the FID space
    logits: Tensor  # (N, dataset classes): the accuracy figures
    score_logits: Tensor  # (N, K): the Inception Score (the class logits, or ImageNet's)


def _block(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class JudgeNet(nn.Module):
    """A 5x5 stride-2 stem (32 maps), then 3x3 stride-2 convs (64, 128, 128, ...) down to 4x4,
    a global max pool (the 128-d features) and a linear head: ~3.6M multiply-adds per 32x32
    image. The judge must be cheap, it sees every sample several times (resolution
    discriminability); a full-size first layer cost 4x more for a few points of accuracy.

    The input is the image next to a per-image standardised copy of it, and the pool is a max:
    the synthetic shapes (random colours, positions, scales) are learnt in a few hundred steps
    that way, about twice as fast as from raw pixels with an average pool; the raw copy keeps
    brightness and contrast visible to the features (FID must see a washed-out generator).
    """

    kind = "cnn"

    def __init__(self, num_classes: int, resolution: int, channels: int) -> None:
        super().__init__()
        stem = nn.Conv2d(2 * channels, 32, 5, stride=2, padding=2, bias=False)
        layers: list[nn.Module] = [stem, nn.BatchNorm2d(32), nn.ReLU(inplace=True)]
        width, side = 32, resolution // 2
        while side > 4:
            nxt = min(width * 2, 128)
            layers += _block(width, nxt, 2)
            width, side = nxt, side // 2
        self.trunk = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)
        self.num_features = width

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x``: float images in [-1, 1]."""
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        h = self.trunk(torch.cat([x, (x - mean) / (std + 1e-3)], dim=1))
        logits = self.head(h)
        return h, logits, logits


class InceptionJudge(nn.Module):
    """torchvision's Inception-v3 (frozen, user-supplied weights) + a linear probe."""

    kind = "inception-v3"

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.probe = nn.Linear(_INCEPTION_FEATURES, num_classes)
        self.num_features = _INCEPTION_FEATURES

    def train(self, mode: bool = True) -> InceptionJudge:
        super().train(mode)
        self.backbone.eval()  # frozen: its BatchNorm statistics never move
        return self

    def pool(self, x: Tensor) -> Tensor:
        """Pool features and ImageNet logits of float images in [-1, 1] (any size)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        # torchvision's IMAGENET1K_V1 pipeline (normalize + transform_input=True) amounts to
        # feeding [-1, 1] images at 299x299 to the network with transform_input=False.
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear")
        m = self.backbone
        for name in _INCEPTION_TRUNK:
            x = getattr(m, name)(x)
        h = torch.flatten(m.avgpool(x), 1)
        return h, m.fc(h)

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h, imagenet = self.pool(x)
        return h, self.probe(h), imagenet


_INCEPTION_TRUNK = (
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "maxpool1",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    "maxpool2",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
    "Mixed_7a",
    "Mixed_7b",
    "Mixed_7c",
)


def _inception_from_state(sd: dict[str, Any], where: str) -> nn.Module:
    from torchvision.models import inception_v3

    try:
        fc_rows = int(sd["fc.weight"].shape[0])
        net = inception_v3(
            weights=None,
            aux_logits=any(k.startswith("AuxLogits.") for k in sd),
            init_weights=False,
            num_classes=fc_rows,
            transform_input=False,
        )
        net.load_state_dict(sd, strict=True)
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{where}: does not fit torchvision's Inception-v3 "
            f"({one_line(exc)[:160]}); supply the IMAGENET1K_V1 state_dict"
        ) from exc
    return net


def load_inception(path: str | Path) -> nn.Module:
    """torchvision's Inception-v3 with the weights of a local ``state_dict`` file."""
    path = Path(path).expanduser()
    where = f"eval.inception_weights {path}"
    if not path.is_file():
        raise CheckpointError(
            f"{where}: file not found; point it at a local Inception-v3 state_dict "
            "(nothing is downloaded) or set eval.inception_weights: null"
        )
    try:
        sd = checkpoint.load(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: not a loadable state_dict; {exc}") from exc
    if isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    return _inception_from_state(sd, where)


class Judge(nn.Module):
    """A judge network plus what it was trained on; uint8 images in, figures out."""

    def __init__(
        self, net: JudgeNet | InceptionJudge, class_names: list[str], resolution: int, channels: int
    ) -> None:
        super().__init__()
        self.net = net
        self.class_names, self.resolution, self.channels = class_names, resolution, channels
        self.num_features = net.num_features  # read by torchmetrics' FID

    @property
    def kind(self) -> str:
        return self.net.kind

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_images(self, images: Tensor, what: str) -> None:
        shape = (self.channels, self.resolution, self.resolution)
        if images.ndim != 4 or tuple(images.shape[1:]) != shape:
            raise CheckpointError(
                f"{what}: images are {tuple(images.shape[1:])}, the judge was trained on "
                f"{shape}; re-run `acgan judge` on this data"
            )

    def forward(self, images: Tensor) -> Tensor:
        """Features of uint8 images: the torchmetrics ``feature=`` contract."""
        return self.net.embed(to_float(images.to(self.device)))[0]

    @torch.inference_mode()
    def embed(
        self, images: Tensor, batch_size: int = 500, progress: bool = False, desc: str = "judge"
    ) -> Embedding:
        """Features and logits of uint8 images, in batches, in eval mode."""
        was = self.training
        self.eval()
        parts: list[tuple[Tensor, ...]] = []
        bar = progress_bar(
            total=len(images), desc=desc, unit="img", disable=not progress, leave=False
        )
        with bar:
            for i in range(0, len(images), batch_size):
                x = to_float(images[i : i + batch_size].to(self.device))
                parts.append(tuple(t.float().cpu() for t in self.net.embed(x)))
                bar.update(len(x))
        self.train(was)
        if not parts:
            k = len(self.class_names)
            return Embedding(torch.empty(0, self.num_features), torch.empty(0, k), torch.empty(0))
        return Embedding(*(torch.cat(p) for p in zip(*parts, strict=True)))

    def record(self) -> dict[str, Any]:
        """The plain-dict checkpoint (``weights_only`` loadable)."""
        return {
            "format": JUDGE_FORMAT,
            "kind": self.kind,
            "class_names": list(self.class_names),
            "resolution": self.resolution,
            "channels": self.channels,
            "state_dict": self.net.state_dict(),
        }


def to_float(images: Tensor) -> Tensor:
    if images.dtype != torch.uint8:
        raise ValueError(f"the judge takes uint8 images, got {images.dtype}")
    return images.float().div_(127.5).sub_(1.0)


def build_judge(
    class_names: list[str], resolution: int, channels: int, inception_weights: str | None = None
) -> Judge:
    """A fresh CNN judge, or Inception-v3 from local weights with an untrained probe."""
    net: JudgeNet | InceptionJudge
    if inception_weights:
        net = InceptionJudge(load_inception(inception_weights), len(class_names))
    else:
        net = JudgeNet(len(class_names), resolution, channels)
    return Judge(net, list(class_names), resolution, channels)


def load_judge(path: str | Path, device: torch.device | str = "cpu") -> Judge:
    """Load ``judge.pt`` (or the directory holding it)."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / JUDGE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path}: judge not found; run `acgan judge --data data/ingested --out "
            f"{path.parent}` first"
        )
    rec = checkpoint.load(path)
    if rec.get("format") != JUDGE_FORMAT:
        raise CheckpointError(
            f"{path}: not a judge file (format {rec.get('format')!r}); re-run `acgan judge`"
        )
    try:
        names = [str(n) for n in rec["class_names"]]
        res, ch, sd = int(rec["resolution"]), int(rec["channels"]), rec["state_dict"]
        net: JudgeNet | InceptionJudge
        if rec["kind"] == InceptionJudge.kind:
            backbone_sd = {k[9:]: v for k, v in sd.items() if k.startswith("backbone.")}
            net = InceptionJudge(_inception_from_state(backbone_sd, str(path)), len(names))
        else:
            net = JudgeNet(len(names), res, ch)
        net.load_state_dict(sd)
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: judge weights are damaged or do not match "
            f"({one_line(exc)[:160]}); re-run `acgan judge`"
        ) from exc
    return Judge(net, names, res, ch).to(device).eval()


def holdout_mask(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Rows held out to score the judge: ``fraction`` of each class (at least one image of any
    class with two or more), chosen per (seed, class). The choice depends only on a class's
    own rows in their stored order, so reading a subset of classes gives the same rows."""
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for c in torch.unique(labels).tolist():
        rows = (labels == c).nonzero().flatten()
        n = len(rows)
        k = min(n - 1, max(1, round(n * fraction))) if n >= 2 else 0
        pick = torch.randperm(n, generator=class_generator(seed, int(c)))[:k]
        mask[rows[pick]] = True
    return mask


def accuracy(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else float("nan")
