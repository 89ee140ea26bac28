"""A procedural demo dataset: small grayscale surfaces with drawn defects, made from a seed.

It lets the whole pipeline (split, train, compare arms, report) run in seconds on a laptop with
no download. It is **not** a benchmark: the images are drawn with numpy, so results on it show
that the machinery works and nothing about real defects or any real vendor.

Layout written by :func:`generate_demo`::

    <dest>/surfaces/<class>/<id>.png (+ <id>_mask.png)   the "real" data, imagefolder layout
    <dest>/vendor-drop/<class>/<id>.png (+ masks)        a synthetic vendor's delivery
    <dest>/README.txt                                     what this is, in plain words
    <dest>/demo.json                                      stamp: generator version, seed, size

``pit`` is deliberately the hardest class: the rarest, and its one or two faint dots are about
as dark as the strongest grain of a good surface at 64 px. The vendor drop comes from the same
generator on another seed stream, so it is a "good vendor": its images carry real information
about the defect classes, and the benchmark should find a gain.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from scarce.trainer.datasets.images import encode_png

__all__ = [
    "DEMO_VERSION",
    "GOOD_CLASS",
    "HARDEST_CLASS",
    "SURFACE_COUNTS",
    "VENDOR_COUNTS",
    "DemoSummary",
    "generate_demo",
    "render_sample",
]

#: Bumped whenever the drawing changes, so an old demo folder is not mistaken for a new one.
DEMO_VERSION = 2
GOOD_CLASS = "good"
HARDEST_CLASS = "pit"
#: Images per class in ``surfaces/`` (the real data of the demo).
SURFACE_COUNTS: Mapping[str, int] = MappingProxyType(
    {"good": 160, "scratch": 60, "spot": 60, "pit": 24}
)
#: Images per class in ``vendor-drop/`` (defect classes only).
VENDOR_COUNTS: Mapping[str, int] = MappingProxyType({"scratch": 60, "spot": 60, "pit": 60})
SURFACES_DIR = "surfaces"
VENDOR_DIR = "vendor-drop"
STAMP_FILE = "demo.json"
_GENERATOR_ID = "scarce.trainer.datasets.demo"
# Seed streams: a per-image SeedSequence spawn key (stream, class, index), so each image
# depends only on the seed and its own position, never on generation order, and the vendor's
# images can never repeat a surface image.
_STREAMS = {SURFACES_DIR: 0, VENDOR_DIR: 1}
_CLASS_ORDER = ("good", "scratch", "spot", "pit")


@dataclass(frozen=True)
class DemoSummary:
    """What :func:`generate_demo` made (or found already made)."""

    #: The demo folder.
    root: Path
    #: ``root/surfaces``: the real data, imagefolder layout.
    surfaces: Path
    #: ``root/vendor-drop``: the synthetic vendor's delivery, imagefolder layout.
    vendor_drop: Path
    seed: int
    size: int
    #: Images per class in ``surfaces``.
    counts: Mapping[str, int]
    #: Images per class in ``vendor-drop``.
    vendor_counts: Mapping[str, int]
    #: Wall-clock seconds spent in this call.
    seconds: float
    #: False when a matching demo folder already existed and nothing was written.
    generated: bool


def generate_demo(dest: Path, *, seed: int = 0, size: int = 64) -> DemoSummary:
    """Write the demo dataset to ``dest``, deterministically from ``seed``.

    The same ``seed`` and ``size`` give byte-identical files. Files are written into a
    temporary folder beside ``dest`` and renamed into place, so ``dest`` is either complete or
    absent. If ``dest`` already holds a demo with the same seed, size and generator version
    (its ``demo.json`` stamp), nothing is written.

    Raises
    ------
    FileExistsError
        ``dest`` exists and is not an empty folder nor a matching demo.
    ValueError
        ``seed`` is negative or ``size`` is outside 16..1024.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: must be a non-negative integer, got {seed!r}")
    if not isinstance(size, int) or not 16 <= size <= 1024:
        raise ValueError(f"size: must be an integer from 16 to 1024, got {size!r}")
    started = time.perf_counter()
    dest = Path(dest)
    stamp = _stamp(seed, size)
    if _is_matching_demo(dest, stamp):
        return _summary(dest, seed, size, started, generated=False)

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        _write_demo(tmp, seed=seed, size=size, stamp=stamp)
        try:
            # rename() is atomic and replaces only an empty folder; a full one raises.
            os.rename(tmp, dest)
        except OSError:
            if _is_matching_demo(dest, stamp):  # another process made the same demo first
                shutil.rmtree(tmp)
                return _summary(dest, seed, size, started, generated=False)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _summary(dest, seed, size, started, generated=True)


def render_sample(
    rng: np.random.Generator, label: str, size: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Draw one demo image of class ``label``: ``(image, mask)``, uint8 ``[size, size]``.

    The mask is 0/255 and marks the defect pixels; it is ``None`` for the good class.
    """
    surface = _surface(rng, size)
    if label == GOOD_CLASS:
        return _to_uint8(surface), None
    draw = _DEFECTS.get(label)
    if draw is None:
        raise ValueError(f"label: must be one of {', '.join(_CLASS_ORDER)}, got {label!r}")
    mask = draw(rng, surface, size)
    if not mask.any():  # every drawing keeps a minimum size; an empty mask would be a bug
        raise AssertionError(f"demo {label} drawn with an empty mask")
    return _to_uint8(surface), np.where(mask, 255, 0).astype(np.uint8)


def _write_demo(root: Path, *, seed: int, size: int, stamp: dict[str, object]) -> None:
    for folder, counts in ((SURFACES_DIR, SURFACE_COUNTS), (VENDOR_DIR, VENDOR_COUNTS)):
        prefix = "vendor_" if folder == VENDOR_DIR else ""
        for label, count in counts.items():
            class_dir = root / folder / label
            class_dir.mkdir(parents=True)
            for index in range(count):
                key = (_STREAMS[folder], _CLASS_ORDER.index(label), index)
                rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))
                image, mask = render_sample(rng, label, size)
                stem = f"{prefix}{label}_{index:04d}"
                (class_dir / f"{stem}.png").write_bytes(encode_png(image))
                if mask is not None:
                    (class_dir / f"{stem}_mask.png").write_bytes(encode_png(mask))
    (root / "README.txt").write_text(_readme(seed, size), encoding="utf-8")
    # The stamp goes in last: a folder with a stamp was written completely.
    (root / STAMP_FILE).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")


def _stamp(seed: int, size: int) -> dict[str, object]:
    return {
        "generator": _GENERATOR_ID,
        "version": DEMO_VERSION,
        "seed": seed,
        "size": size,
        SURFACES_DIR: dict(SURFACE_COUNTS),
        VENDOR_DIR: dict(VENDOR_COUNTS),
    }


def _is_matching_demo(dest: Path, stamp: dict[str, object]) -> bool:
    """True if ``dest`` is a demo with this stamp; raise if it holds anything else."""
    if not dest.exists() and not dest.is_symlink():
        return False
    if dest.is_dir() and not dest.is_symlink() and not any(dest.iterdir()):
        return False  # an empty folder is fair game
    try:
        found = json.loads((dest / STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        found = None
    if found == stamp:
        return True
    if isinstance(found, dict) and found.get("generator") == _GENERATOR_ID:
        what = (
            f"a demo made with seed={found.get('seed')}, size={found.get('size')}, "
            f"version={found.get('version')}"
        )
    else:
        what = "other contents (no matching demo.json stamp)"
    raise FileExistsError(
        f"{dest}: exists and holds {what}; wanted seed={stamp['seed']}, size={stamp['size']}, "
        f"version={stamp['version']}. Remove it or choose another folder."
    )


def _summary(dest: Path, seed: int, size: int, started: float, *, generated: bool) -> DemoSummary:
    return DemoSummary(
        root=dest,
        surfaces=dest / SURFACES_DIR,
        vendor_drop=dest / VENDOR_DIR,
        seed=seed,
        size=size,
        counts=dict(SURFACE_COUNTS),
        vendor_counts=dict(VENDOR_COUNTS),
        seconds=time.perf_counter() - started,
        generated=generated,
    )


def _readme(seed: int, size: int) -> str:
    def rows(counts: Mapping[str, int]) -> str:
        return "\n".join(f"    {label:<8} {n:>4}" for label, n in counts.items())

    return f"""\
SCARCE demo data: PROCEDURALLY GENERATED, NOT A BENCHMARK.

Made by scarce.trainer.datasets.demo.generate_demo(seed={seed}, size={size}), version \
{DEMO_VERSION}.
Every image is a {size}x{size} grayscale surface drawn with numpy from the seed: nothing here
comes from a camera or a real dataset. Numbers measured on it show that the pipeline runs;
they say nothing about real defects, real data or any real synthetic-data vendor.

surfaces/     the "real" data, class-per-folder (imagefolder) layout:
              <class>/<id>.png, and <id>_mask.png (white = defect) for defect classes.
{rows(SURFACE_COUNTS)}
    (good: no defect; scratch: thin bright or dark line; spot: soft dark blob;
     pit: one or two tiny faint dark dots, the hardest and rarest class)

vendor-drop/  stand-in for a synthetic-data vendor's delivery, same layout, defect classes
              only, drawn by the same generator from another seed stream:
{rows(VENDOR_COUNTS)}
"""


# --- drawing -------------------------------------------------------------------------------
# Intensities are floats around 0.5 (0 = black, 1 = white), quantised to uint8 at the end.


def _surface(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured surface: low-frequency shading, finer mottling, grain and a light gradient."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    angle = rng.uniform(0.0, 2 * np.pi)
    gradient = rng.uniform(0.0, 0.16) * (np.cos(angle) * xx + np.sin(angle) * yy)
    return (
        rng.uniform(0.42, 0.58)
        + rng.uniform(0.03, 0.07) * _smooth_noise(rng, size, int(rng.integers(2, 5)))
        + 0.02 * _smooth_noise(rng, size, max(4, size // 8))
        + gradient
        + rng.normal(0.0, rng.uniform(0.02, 0.035), (size, size))
    )


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise: a random (cells+1)^2 grid, smoothstep-interpolated to size x size."""
    grid = rng.standard_normal((cells + 1, cells + 1))
    t = np.linspace(0.0, cells, size)
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    f = f * f * (3 - 2 * f)  # smoothstep hides the grid's creases
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:size, 0:size].astype(float)


def _draw_scratch(rng: np.random.Generator, surface: np.ndarray, size: int) -> np.ndarray:
    """A straight line segment, 1-3 px wide, brighter or darker than the surface."""
    scale = size / 64
    length = rng.uniform(0.25, 0.6) * size
    width = max(1.0, rng.uniform(1.0, 2.6) * scale)
    angle = rng.uniform(0.0, np.pi)
    centre = rng.uniform(0.3 * size, 0.7 * size, 2)
    half = 0.5 * length * np.array([np.sin(angle), np.cos(angle)])
    a, b = centre - half, centre + half
    y, x = _pixel_centres(size)
    # Distance from each pixel centre to the segment a-b.
    ab = b - a
    t = np.clip(((y - a[0]) * ab[0] + (x - a[1]) * ab[1]) / float(ab @ ab), 0.0, 1.0)
    dist = np.hypot(y - (a[0] + t * ab[0]), x - (a[1] + t * ab[1]))
    coverage = np.clip(width / 2 + 0.5 - dist, 0.0, 1.0)  # one pixel of antialiasing
    sign = 1.0 if rng.random() < 0.5 else -1.0
    surface += sign * rng.uniform(0.16, 0.3) * coverage
    return coverage >= 0.5


def _draw_spot(rng: np.random.Generator, surface: np.ndarray, size: int) -> np.ndarray:
    """A soft, slightly elliptical dark blob, 4-9 px in radius at 64 px."""
    scale = size / 64
    radius = max(2.0, rng.uniform(4.0, 9.0) * scale)
    ratio = rng.uniform(0.7, 1.0)
    angle = rng.uniform(0.0, np.pi)
    cy, cx = rng.uniform(radius + 2, size - radius - 2, 2)
    y, x = _pixel_centres(size)
    u = (y - cy) * np.cos(angle) + (x - cx) * np.sin(angle)
    v = -(y - cy) * np.sin(angle) + (x - cx) * np.cos(angle)
    dist = np.hypot(u, v / ratio)
    softness = max(0.8, 1.5 * scale)
    profile = 1.0 / (1.0 + np.exp((dist - radius) / softness))
    surface -= rng.uniform(0.14, 0.28) * profile
    return dist <= radius


def _draw_pit(rng: np.random.Generator, surface: np.ndarray, size: int) -> np.ndarray:
    """One or two tiny, faint dark dots, on purpose barely darker than the grain's extremes.

    Depth and width were tuned so that an oracle detector (a difference-of-Gaussians filter's
    darkest response) separates pit from good images clearly but not perfectly at 64 px,
    where scratch and spot are separated almost perfectly.
    """
    scale = size / 64
    y, x = _pixel_centres(size)
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(1, 3))):
        sigma = rng.uniform(0.9, 1.4) * scale
        cy, cx = rng.uniform(4, size - 4, 2)
        dist = np.hypot(y - cy, x - cx)
        surface -= rng.uniform(0.14, 0.22) * np.exp(-0.5 * (dist / sigma) ** 2)
        # At least the nearest pixel centre (at most 0.71 px away) is always marked.
        mask |= dist <= max(1.5 * sigma, 0.75)
    return mask


_DEFECTS = {"scratch": _draw_scratch, "spot": _draw_spot, "pit": _draw_pit}


def _to_uint8(surface: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(surface * 255.0), 0, 255).astype(np.uint8)
