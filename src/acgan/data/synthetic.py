"""The built-in, deterministic class-conditional dataset: ten kinds of shapes.

It exists so that the whole pipeline (and its tests) runs without downloading anything. Each
class is a shape that stays recognisable at 32x32 and in grayscale: a light shape of any hue
on a dark background of any hue (apart in *luminance*, not just in hue). Within a class,
position, scale, colours and (where it does not turn the shape into another class) rotation
vary, and light noise makes every image unique, so a collapsed generator is visible in
MS-SSIM.

Shapes are drawn with ``PIL.ImageDraw`` at 4x the target resolution and box-downsampled, which
antialiases the edges cheaply (6,000 images at 32x32 take about a second).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "horizontal_bars",
    "vertical_bars",
    "diamond",
    "star",
    "checker",
)

# Bumped whenever the images change (caches keyed on the data's settings then start afresh).
# 3: light shapes on dark backgrounds, both of any hue, nearer the centre (2: anywhere in the
# frame; 1: any two colours far apart in luma).
VERSION = 3

_SUPERSAMPLE = 4
_NOISE_STD = 4.0  # grey levels: enough to make images unique, too little to hide a shape
_BG_LUMA_MAX = 90.0  # of 255: backgrounds are dark, shapes light, in colour and in grayscale
_FG_LUMA_MIN = 165.0
_LUMA = np.array([0.299, 0.587, 0.114])

Point = tuple[float, float]
_Shape = Callable[[float], list[list[Point]]]


def _rotate(points: Sequence[Point], cx: float, cy: float, angle: float) -> list[Point]:
    """Rotate local (centre-relative) points by ``angle`` radians and move them to (cx, cy)."""
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[Point]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _regular(n: int, r: float, phase: float) -> list[Point]:
    return [
        (r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


# Each shape returns polygons (local coordinates are rotated by the caller's angle). Rotation
# ranges are per class (see _ROTATION): a square may tilt but must not become a diamond,
# horizontal bars must not become vertical ones.
def _square(r: float) -> list[list[Point]]:
    h = r * 0.75
    return [_rect(-h, -h, h, h)]


def _triangle(r: float) -> list[list[Point]]:
    return [_regular(3, r, -math.pi / 2)]


def _cross(r: float) -> list[list[Point]]:
    w = r * 0.33
    return [_rect(-r, -w, r, w), _rect(-w, -r, w, r)]


def _hbars(r: float) -> list[list[Point]]:
    band = 2 * r / 5
    return [_rect(-r, -r + k * band, r, -r + (k + 1) * band) for k in (0, 2, 4)]


def _vbars(r: float) -> list[list[Point]]:
    return [[(y, x) for x, y in poly] for poly in _hbars(r)]


def _diamond(r: float) -> list[list[Point]]:
    # Elongated rhombus: tall and narrow, so it differs from a tilted square by its aspect.
    return [[(0.0, -r), (0.55 * r, 0.0), (0.0, r), (-0.55 * r, 0.0)]]


def _star(r: float) -> list[list[Point]]:
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else 0.4 * r
        a = -math.pi / 2 + math.pi * k / 5
        pts.append((rad * math.cos(a), rad * math.sin(a)))
    return [pts]


def _checker(r: float) -> list[list[Point]]:
    n, cell = 4, 2 * r / 4
    return [
        _rect(-r + i * cell, -r + j * cell, -r + (i + 1) * cell, -r + (j + 1) * cell)
        for i in range(n)
        for j in range(n)
        if (i + j) % 2 == 0
    ]


_POLYGONS: dict[str, _Shape] = {
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "horizontal_bars": _hbars,
    "vertical_bars": _vbars,
    "diamond": _diamond,
    "star": _star,
    "checker": _checker,
}
# Max rotation in radians; circles and rings are rotation-invariant, triangles and stars may
# turn freely.
_ROTATION: dict[str, float] = {
    "square": math.radians(12),
    "triangle": math.pi,
    "cross": math.radians(12),
    "horizontal_bars": math.radians(8),
    "vertical_bars": math.radians(8),
    "diamond": math.radians(10),
    "star": math.pi,
    "checker": math.radians(8),
}


def _colours(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A dark background and a light foreground, each of any hue: luminance (ITU-R 601, as
    PIL's "L") at most ``_BG_LUMA_MAX`` for the background and at least ``_FG_LUMA_MIN`` for
    the shape, so shapes stand out the same way in colour and in grayscale while both colours
    vary from image to image."""
    return _colour_in(rng, 0.0, _BG_LUMA_MAX), _colour_in(rng, _FG_LUMA_MIN, 255.0)


def _colour_in(rng: np.random.Generator, lo: float, hi: float) -> tuple[int, int, int]:
    """A uniformly drawn RGB colour whose luminance lies in [lo, hi] (rejection sampling; the
    fallback, never reached in practice, is the grey at the middle of the range)."""
    for _ in range(64):
        c = rng.integers(0, 256, 3)
        if lo <= float(_LUMA @ c) <= hi:
            return int(c[0]), int(c[1]), int(c[2])
    g = round((lo + hi) / 2)
    return g, g, g


def render(
    class_index: int, rng: np.random.Generator, resolution: int, channels: int
) -> Image.Image:
    """One image of class ``class_index``: mode "L" (1 channel) or "RGB" (3 channels)."""
    if not 0 <= class_index < len(CLASS_NAMES):
        raise ValueError(f"synthetic class index {class_index} is not in 0..{len(CLASS_NAMES) - 1}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    name = CLASS_NAMES[class_index]
    size = resolution * _SUPERSAMPLE
    bg, fg = _colours(rng)
    scale = rng.uniform(0.6, 0.85)  # shape's extent as a fraction of the image
    r = scale * size / 2
    slack = 0.5 * (1.0 - scale) * size / 2  # off centre by at most half the room left
    cx = size / 2 + rng.uniform(-slack, slack)
    cy = size / 2 + rng.uniform(-slack, slack)
    angle = rng.uniform(-1.0, 1.0) * _ROTATION.get(name, 0.0)

    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    if name == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
    elif name == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fg, width=max(1, round(0.3 * r)))
    else:
        for poly in _POLYGONS[name](r):
            draw.polygon(_rotate(poly, cx, cy, angle), fill=fg)
    img = img.reduce(_SUPERSAMPLE)  # box filter = antialiasing
    if channels == 1:
        img = img.convert("L")

    arr = np.asarray(img, dtype=np.float32)
    arr = arr + rng.normal(0.0, _NOISE_STD, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), img.mode)


def class_rng(seed: int, class_index: int) -> np.random.Generator:
    """The RNG stream of one class: a subset of classes yields the same images."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(class_index)]))


def generate(
    n_per_class: int,
    resolution: int,
    channels: int,
    seed: int,
    classes: Sequence[int] | None = None,
) -> Iterator[tuple[Image.Image, int]]:
    """``(image, class_index)`` for ``n_per_class`` images of each class, class by class.

    Deterministic for a seed; ``classes`` (indices into :data:`CLASS_NAMES`) picks a subset.
    """
    picked = range(len(CLASS_NAMES)) if classes is None else classes
    for c in picked:
        rng = class_rng(seed, c)
        for _ in range(n_per_class):
            yield render(c, rng, resolution, channels), c
