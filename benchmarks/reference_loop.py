"""The baseline: an AC-GAN training loop written the way typical public scripts are.

Modelled on the widely copied PyTorch-GAN ``acgan.py`` (and the PyTorch DCGAN example): a
torchvision ``ImageFolder`` of PNG files decoded every step through a ``DataLoader`` (no
workers by default, as there), noise and labels drawn with NumPy on the host and copied to the
device, default Adam, and ``.item()`` on the losses every step for the progress print. It trains
*the same model* (:mod:`acgan.models.acgan`, the same losses, one D and one G update per step
with the same fake batch) so that the comparison measures the training loop, not the network.
No EMA, no checkpoints, no tracking: everything it does, the project's trainer does too.

What the project changed in the network's *implementation* (not its function) stays out of the
reference: its D uses ``nn.Dropout`` as the public scripts do (the project's
:class:`acgan.models.acgan.Dropout` draws the same Bernoulli masks faster on the CPU), and its G
update computes D's weight gradients as they do (the trainer skips those, see
:func:`acgan.train.state.frozen`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from acgan.models.acgan import Discriminator, Generator


def export_imagefolder(split_dir: Path, out: Path) -> Path:
    """Write a split's images as ``out/<class name>/<n>.png`` (the shards' PNG bytes as they
    are: the reference decodes exactly the files the project decoded once)."""
    import pyarrow.parquet as pq

    from acgan.data.shards import shard_files

    if (out / ".done").is_file():
        return out
    n = 0
    for f in shard_files(split_dir):
        t = pq.read_table(f, columns=["png", "class_name"])
        for png, name in zip(t["png"].to_pylist(), t["class_name"].to_pylist(), strict=True):
            d = out / name
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{n:06d}.png").write_bytes(png)
            n += 1
    (out / ".done").write_text(str(n))
    return out


def public_discriminator(n_classes: int, device: torch.device) -> nn.Module:
    """The paper's D with ``torch.nn.Dropout`` layers, as a public script writes it."""
    D = Discriminator(n_classes, 32, 3)
    for i, m in enumerate(D.features):
        if isinstance(m, nn.Dropout):
            D.features[i] = nn.Dropout(m.p)
    return D.to(device)


def training_steps(
    root: Path,
    device: torch.device,
    batch_size: int,
    workers: int = 0,
    latent_dim: int = 100,
    seed: int = 0,
) -> Iterator[tuple[float, float, float]]:
    """The script's training loop, yielding after each step (its printed figures: D loss,
    G loss, D's class accuracy on the real batch), so a benchmark can run it for as many steps
    as it likes, or interleave it with another loop."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])]
    )
    dataset = datasets.ImageFolder(str(root), transform=transform)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True
    )
    n_classes = len(dataset.classes)
    G = Generator(n_classes, latent_dim, 32, 3).to(device)
    D = public_discriminator(n_classes, device)
    opt_G = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    adversarial, auxiliary = nn.BCEWithLogitsLoss(), nn.CrossEntropyLoss()

    while True:
        for imgs, labels in loader:
            real = imgs.to(device)
            labels = labels.to(device)
            b = real.shape[0]
            valid = torch.ones(b, device=device)
            fake = torch.zeros(b, device=device)
            z = torch.tensor(np.random.normal(0, 1, (b, latent_dim)), dtype=torch.float32)
            z = z.to(device)
            gen_labels = torch.tensor(np.random.randint(0, n_classes, b)).to(device)

            gen_imgs = G(z, gen_labels)
            opt_D.zero_grad()
            real_src, real_cls = D(real)
            fake_src, fake_cls = D(gen_imgs.detach())
            d_loss = (
                adversarial(real_src, valid)
                + adversarial(fake_src, fake)
                + auxiliary(real_cls, labels)
                + auxiliary(fake_cls, gen_labels)
            )
            d_loss.backward()
            opt_D.step()

            opt_G.zero_grad()
            src, cls = D(gen_imgs)
            g_loss = adversarial(src, valid) + auxiliary(cls, gen_labels)
            g_loss.backward()
            opt_G.step()

            d_acc = (real_cls.argmax(1) == labels).float().mean().item()
            yield d_loss.item(), g_loss.item(), d_acc  # the per-step print's figures


def run_reference(
    root: Path,
    device: torch.device,
    batch_size: int,
    warmup: int,
    steps: int,
    workers: int = 0,
) -> dict[str, Any]:
    """Train ``warmup + steps`` steps; time the last ``steps``. Returns images/s and losses."""
    loop = training_steps(root, device, batch_size, workers)
    for _ in range(warmup):
        next(loop)
    t0 = time.perf_counter()  # each step's .item() already waited for the device
    for _ in range(steps):
        last = next(loop)
    seconds = time.perf_counter() - t0
    return {
        "images_per_s": steps * batch_size / seconds,
        "seconds": seconds,
        "last_loss_d": last[0],
        "last_loss_g": last[1],
    }
