"""What the collapse monitor costs training: one check vs ``monitor.every`` training steps.

    python -m benchmarks.monitor_overhead                       # 32 px, 5 classes, 50 pairs
    python -m benchmarks.monitor_overhead --classes 10 --every 100 --device cuda

One check generates ``2 * pairs`` samples per class from fixed codes and computes ``pairs``
MS-SSIM values per class (``acgan.monitor.detector.sample_msssim``). The training step is the
trainer's own (``acgan.train.step.step_split``) on random images of the same shape. Figures are
medians of repeats; they are printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from acgan.config import load
from acgan.data.splits import SplitSpec
from acgan.devices import resolve_device
from acgan.monitor.detector import sample_msssim
from acgan.train.state import build_state
from acgan.train.step import SplitData, StepRecipe, step_split


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, repeats: int, device: torch.device) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--pairs", type=int, default=50)
    p.add_argument("--every", type=int, default=100, help="monitor.every")
    p.add_argument("--resolution", type=int, default=32, choices=(32, 64, 128))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="training steps timed per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    a = p.parse_args(argv)

    cfg = load(
        None,
        [
            "tracking.enabled=false",
            f"data.resolution={a.resolution}",
            f"train.batch_size={a.batch_size}",
        ],
    )
    device = resolve_device(a.device)  # auto | cpu | cuda
    state = build_state(cfg, a.classes, device, seed=0)
    n = 64 * a.classes
    images = torch.randint(0, 256, (n, 3, a.resolution, a.resolution), dtype=torch.uint8)
    labels = torch.arange(a.classes).repeat_interleave(64)
    spec = SplitSpec(0, list(range(a.classes)), [f"c{i}" for i in range(a.classes)])
    data = SplitData(spec, images.to(device), labels.to(device))

    step_split(state, data, StepRecipe(a.batch_size, False))  # warm-up
    sample_msssim(state.sampler, a.pairs, seed=0)
    step_s = (
        _median_seconds(
            lambda: [
                step_split(state, data, StepRecipe(a.batch_size, False)) for _ in range(a.steps)
            ],
            a.repeats,
            device,
        )
        / a.steps
    )
    check_s = _median_seconds(lambda: sample_msssim(state.sampler, a.pairs, 0), a.repeats, device)
    overhead = check_s / (a.every * step_s)
    print(
        f"device {device}, {torch.get_num_threads()} threads; {a.resolution} px, "
        f"{a.classes} classes, {a.pairs} pairs/class, batch {a.batch_size}"
    )
    print(f"  training step          {step_s * 1000:9.1f} ms")
    print(f"  one monitor check      {check_s * 1000:9.1f} ms")
    print(f"  overhead at every={a.every:<4d} {100 * overhead:8.2f} % of training time")


if __name__ == "__main__":
    main()
