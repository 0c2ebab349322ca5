"""Where the trainer's step time goes: one training step of the paper's 32x32 model at batch 64,
with the trainer's two step-level changes switched on one at a time (the data path, EMA and
logging are outside this table; ``benchmarks.train_throughput`` measures the whole loop).

    python -m benchmarks.step_ablation             # 15 interleaved rounds of 3 steps each
    python -m benchmarks.step_ablation --quick     # 3 rounds of 2 steps

Variants, all in one process, timed round-robin (a b c a b c ...) so that a change in machine
load hits each alike; the table shows the median ms per step over the rounds:

- public: ``nn.Dropout`` in D, D's weight gradients computed during G's update (what a typical
  public script's step does);
- + D frozen in G's update (:func:`acgan.train.state.frozen`);
- + the project's dropout masks (:class:`acgan.models.acgan.Dropout`): the trainer's step.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from acgan.devices import resolve_device
from acgan.models.acgan import Discriminator, Generator
from acgan.models.losses import d_loss, g_loss
from acgan.train.state import frozen
from benchmarks.common import load_average, machine, sync, table

BATCH, CLASSES, LATENT = 64, 10, 100


def make_step(freeze: bool, project_dropout: bool, device: torch.device) -> Callable[[], None]:
    torch.manual_seed(0)
    G = Generator(CLASSES, LATENT, 32, 3).to(device)
    D = Discriminator(CLASSES, 32, 3)
    if not project_dropout:
        for i, m in enumerate(D.features):
            if isinstance(m, nn.Dropout):
                D.features[i] = nn.Dropout(m.p)
    D = D.to(device)
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999), fused=True)
    opt_d = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999), fused=True)
    real = torch.rand(BATCH, 3, 32, 32, device=device) * 2 - 1
    y_real = torch.randint(0, CLASSES, (BATCH,), device=device)

    def step() -> None:
        z = torch.randn(BATCH, LATENT, device=device)
        y_fake = torch.randint(0, CLASSES, (BATCH,), device=device)
        fake = G(z, y_fake)
        src_r, cls_r = D(real)
        src_f, cls_f = D(fake.detach())
        loss_d, _, _ = d_loss(src_r, cls_r, y_real, src_f, cls_f, y_fake)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        with frozen([D]) if freeze else contextlib.nullcontext():
            src_g, cls_g = D(fake)
        loss_g, _, _ = g_loss(src_g, cls_g, y_fake)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()

    return step


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.step_ablation")
    p.add_argument("--quick", action="store_true", help="3 rounds of 2 steps")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 15)")
    p.add_argument("--steps", type=int, default=None, help="steps per round (default 3)")
    a = p.parse_args(argv)
    device = resolve_device(a.device)
    rounds, steps = a.rounds or (3 if a.quick else 15), a.steps or (2 if a.quick else 3)
    variants = {
        "public: nn.Dropout, D weight grads in G's update": make_step(False, False, device),
        "+ D frozen in G's update": make_step(True, False, device),
        "+ the project's dropout masks (the trainer's step)": make_step(True, True, device),
    }
    for step in variants.values():  # warm-up: allocator, oneDNN primitives
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in variants}
    print(f"step ablation: {len(variants)} variants x {rounds} rounds ...", file=sys.stderr)
    for _ in range(rounds):
        for name, step in variants.items():
            sync(device)
            t = time.perf_counter()
            for _ in range(steps):
                step()
            sync(device)
            times[name].append((time.perf_counter() - t) / steps)
    base = statistics.median(times[next(iter(variants))])
    rows, out = [], []
    for name, ts in times.items():
        ms = statistics.median(ts)
        rows.append([name, 1000 * ms, BATCH / ms, f"{base / ms:.2f}x"])
        out.append({"variant": name, "ms_per_step": 1000 * ms, "images_per_s": BATCH / ms})
    print(
        table(
            f"One training step, 32x32, batch {BATCH}, {device.type} - {machine(device)}\n"
            f"median of {rounds} interleaved rounds of {steps} steps; "
            f"load average {load_average()}",
            ["variant", "ms/step", "images/s", "speed-up"],
            rows,
        ),
        flush=True,
    )
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
