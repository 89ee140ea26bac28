"""Kind `perlin`: DRAEM-style anomalies (Zavrtanik et al., ICCV 2021) with class-c texture.

DRAEM thresholds Perlin noise into blob-shaped masks and fills them with a texture from an
unrelated texture set. Here the texture is the class's own defect: a crop of a class-c training
image around its defect region (its mask's bounding box, at least 1/8 of the image side; the
central half of the image when it has no mask), mirrored and tiled to the image size, turned,
and contrast-jittered. As in DRAEM:

- noise lattice ``2**a x 2**b`` cells, a and b drawn independently (cells of at least 8 px,
  at most 32 per side), the noise grid rotated by a random angle;
- mask = noise > 0.5 (drawn again, up to 16 times, while it covers less than 0.2 % of the image;
  then the top 2 % of the noise is taken, so the mask is never empty);
- blend ``out = base * (1 - M) + M * ((1 - beta) * texture + beta * base)``, beta uniform in
  [0, 0.8], so the defect is sometimes faint.

The mask is the Perlin mask: exactly the pixels that changed.
"""

from __future__ import annotations

import math

import numpy as np

from scarce.trainer.synth.base import register_source
from scarce.trainer.synth.builtin import (
    BuiltinGenerator,
    bounding_box,
    jitter_contrast,
    orient,
    to_uint8,
)

THRESHOLD = 0.5
BETA = (0.0, 0.8)
MIN_COVER = 0.002
FALLBACK_COVER = 0.02
ATTEMPTS = 16


@register_source
class PerlinSource(BuiltinGenerator):
    """Fills thresholded Perlin-noise blobs on good images with class-c defect texture."""

    kind = "perlin"

    def compose(
        self, rng: np.random.Generator, base: np.ndarray, donor: np.ndarray, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Blend a texture cut from `donor`'s defect into `base` through a Perlin mask."""
        size = base.shape[-1]
        blob = perlin_mask(rng, size)
        texture = defect_texture(rng, donor, mask)
        beta = rng.uniform(*BETA)
        pixels = base.astype(np.float32)
        inside = (1.0 - beta) * texture + beta * pixels
        return to_uint8(np.where(blob, inside, pixels)), blob


def perlin_noise(rows: np.ndarray, cols: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """2-D Perlin gradient noise at continuous lattice coordinates (Perlin 2002, quintic fade).

    ``rows`` and ``cols`` are arrays of the same shape in lattice units; ``gradients`` is
    ``[H, W, 2]`` unit vectors at the lattice points, wrapped around (so any coordinate works).
    Values lie in about [-0.71, 0.71].
    """
    lat_h, lat_w = gradients.shape[:2]
    r0, c0 = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    fr, fc = rows - r0, cols - c0

    def corner(dr: int, dc: int) -> np.ndarray:
        g = gradients[(r0 + dr) % lat_h, (c0 + dc) % lat_w]
        return g[..., 0] * (fr - dr) + g[..., 1] * (fc - dc)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)

    u, v = fade(fr), fade(fc)
    top = corner(0, 0) * (1 - v) + corner(0, 1) * v
    bottom = corner(1, 0) * (1 - v) + corner(1, 1) * v
    return top * (1 - u) + bottom * u


def perlin_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A DRAEM-style boolean ``[size, size]`` blob mask; never empty."""
    max_exponent = int(np.clip(math.floor(math.log2(size / 8)), 0, 5))
    # Pixel centres in (-0.5, 0.5), to be rotated about the middle and scaled to lattice units.
    centres = (np.arange(size) + 0.5) / size - 0.5
    y, x = np.meshgrid(centres, centres, indexing="ij")
    noise = np.zeros((size, size))
    for _ in range(ATTEMPTS):
        cells = 2 ** rng.integers(0, max_exponent + 1, size=2)
        angle = rng.uniform(-math.pi / 2, math.pi / 2)
        angles = rng.uniform(0, 2 * math.pi, size=(int(cells[0]) + 1, int(cells[1]) + 1))
        gradients = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
        ry = y * math.cos(angle) - x * math.sin(angle) + 0.5
        rx = y * math.sin(angle) + x * math.cos(angle) + 0.5
        noise = perlin_noise(ry * cells[0], rx * cells[1], gradients)
        blob = noise > THRESHOLD
        if blob.mean() >= MIN_COVER:
            return blob
    return noise >= np.quantile(noise, 1.0 - FALLBACK_COVER)


def defect_texture(
    rng: np.random.Generator, donor: np.ndarray, mask: np.ndarray | None
) -> np.ndarray:
    """Float ``[C, S, S]`` texture tiled from the donor's defect region (mirror-tiled, jittered)."""
    size = donor.shape[-1]
    if mask is None:
        top, bottom, left, right = size // 4, size - size // 4, size // 4, size - size // 4
    else:
        top, bottom, left, right = bounding_box(mask)
        least = max(2, size // 8)
        top, bottom = _at_least(top, bottom, least, size)
        left, right = _at_least(left, right, least, size)
    crop = donor[:, top:bottom, left:right].astype(np.float32)
    (crop,) = orient(rng, crop)
    height, width = crop.shape[-2:]
    reps_h, reps_w = -(-size // height) + 1, -(-size // width) + 1
    # Mirror-tiling: each copy is the mirror of its neighbour, so there are no seams.
    tile = np.concatenate([crop, crop[:, ::-1]], axis=1)
    tile = np.concatenate([tile, tile[:, :, ::-1]], axis=2)
    tiled = np.tile(tile, (1, -(-reps_h // 2), -(-reps_w // 2)))
    dy, dx = int(rng.integers(height)), int(rng.integers(width))
    texture = tiled[:, dy : dy + size, dx : dx + size]
    return jitter_contrast(rng, texture, texture.mean())


def _at_least(start: int, stop: int, least: int, size: int) -> tuple[int, int]:
    """Grow ``[start, stop)`` about its middle to at least `least` long, inside ``[0, size)``."""
    if stop - start >= least:
        return start, stop
    start = min(max(0, (start + stop - least) // 2), size - least)
    return start, start + least
