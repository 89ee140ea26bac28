"""Kind `transplant`: real defect regions cut along their masks and pasted onto good images.

For each image: one connected defect region of a class-c training image is cut out along its
mask (with a margin of context), turned by a multiple of 90° and mirrored at random, then
rotated by a small angle and scaled, and pasted at a random place of a good training image.

Two choices make the seam plausible:

- **Intensity matching.** The region's pixels are shifted so that its own surroundings (the
  margin outside the mask) match the mean of the good image where it lands, then its contrast is
  jittered around that level (±20 %, ±10 grey levels). A dark blowhole cut from a bright tile
  stays a dark hole on a darker one, instead of a bright square.
- **Feathered alpha.** The defect pixels are pasted whole; around them, the cut's context is
  blended with a Gaussian-blurred copy of the mask as alpha (sigma about 1 % of the image side,
  at least 0.7 px), so the seam fades over a few pixels instead of cutting hard.

The new mask is the transformed defect region itself; only the blur's tail (alpha below 0.5,
within about three sigmas) reaches outside it.

A class whose training images have no mask at all is refused with a
:class:`~scarce.trainer.synth.base.SyntheticSourceError` naming it: cutting "a central region"
instead would paste background as often as defect and still call it a transplant. `cutpaste`
and `perlin` work without masks.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from scarce.trainer.synth.base import register_source
from scarce.trainer.synth.builtin import (
    BuiltinGenerator,
    bounding_box,
    jitter_contrast,
    orient,
    pick_component,
    to_uint8,
)

#: Small rotation on top of the multiples of 90°, in degrees either way.
MAX_ANGLE = 20.0
#: Scale range of the pasted region.
SCALE = (0.8, 1.25)


@register_source
class TransplantSource(BuiltinGenerator):
    """Pastes real, mask-cut defect regions onto good training images with a feathered seam."""

    kind = "transplant"
    needs_masks = True

    def compose(
        self, rng: np.random.Generator, base: np.ndarray, donor: np.ndarray, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cut one defect region of `donor` along `mask` and paste it onto `base`."""
        assert mask is not None  # needs_masks: the loop only hands over donors with masks
        size = base.shape[-1]
        sigma = max(0.7, size / 100)
        patch, region = _cut_region(rng, donor, mask, margin=math.ceil(3 * sigma) + 1)
        patch, region = orient(rng, patch, region)
        angle, scale = rng.uniform(-MAX_ANGLE, MAX_ANGLE), rng.uniform(*SCALE)
        warped, coverage = _warp(patch, region, angle=angle, scale=scale, limit=size)
        if not (coverage >= 0.5).any():
            # Rotating a region of a pixel or two can make it vanish: paste it unrotated.
            warped, coverage = _warp(patch, region, angle=0.0, scale=1.0, limit=size)
        defect = coverage >= 0.5
        height, width = defect.shape
        top = int(rng.integers(size - height + 1))
        left = int(rng.integers(size - width + 1))
        window = base[:, top : top + height, left : left + width].astype(np.float32)

        source_level = _surround_mean(warped, defect)
        target_level = _surround_mean(window, defect)
        pasted = jitter_contrast(rng, warped - source_level + target_level, target_level)
        # The defect itself is pasted whole (alpha 1); only its context fades into the base.
        alpha = ndimage.gaussian_filter(defect.astype(np.float32), sigma, mode="constant")
        alpha = np.maximum(alpha, defect)

        out = base.astype(np.float32)
        out[:, top : top + height, left : left + width] = window * (1 - alpha) + pasted * alpha
        new_mask = np.zeros((size, size), dtype=bool)
        new_mask[top : top + height, left : left + width] = defect
        return to_uint8(out), new_mask


def _cut_region(
    rng: np.random.Generator, donor: np.ndarray, mask: np.ndarray, *, margin: int
) -> tuple[np.ndarray, np.ndarray]:
    """One connected defect region and its bounding box plus `margin` px of context.

    The donor is mirrored at its border first, so a defect touching the edge still gets a
    margin for the feathered seam.
    """
    region = pick_component(rng, mask)
    top, bottom, left, right = bounding_box(region)
    padded = np.pad(donor, ((0, 0), (margin, margin), (margin, margin)), mode="symmetric")
    padded_region = np.pad(region, margin)
    rows = slice(top, bottom + 2 * margin)
    cols = slice(left, right + 2 * margin)
    return padded[:, rows, cols].astype(np.float32), padded_region[rows, cols]


def _warp(
    patch: np.ndarray, region: np.ndarray, *, angle: float, scale: float, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by `angle` degrees and scale, in one bilinear resampling, fitting in `limit` px.

    Returns the warped float pixels ``[C, h, w]`` and the warped mask as float coverage.
    """
    height, width = region.shape
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    span_h = height * abs(cos) + width * abs(sin)
    span_w = height * abs(sin) + width * abs(cos)
    scale = min(scale, limit / max(span_h, span_w))
    out_h = max(1, min(limit, math.ceil(span_h * scale)))
    out_w = max(1, min(limit, math.ceil(span_w * scale)))
    # affine_transform maps output coordinates to input ones: the inverse rotation and scale,
    # centred on both arrays' middles.
    matrix = np.array([[cos, sin], [-sin, cos]]) / scale
    centre_in = (np.array([height, width]) - 1) / 2
    centre_out = (np.array([out_h, out_w]) - 1) / 2
    offset = centre_in - matrix @ centre_out

    def warp(plane: np.ndarray, mode: str) -> np.ndarray:
        return ndimage.affine_transform(
            plane, matrix, offset=offset, output_shape=(out_h, out_w), order=1, mode=mode
        )

    warped = np.stack([warp(channel, "nearest") for channel in patch])
    coverage = warp(region.astype(np.float32), "constant")
    return warped, coverage


def _surround_mean(pixels: np.ndarray, defect: np.ndarray) -> np.ndarray:
    """Per-channel mean of the pixels around the defect (all pixels when nothing surrounds it)."""
    outside = ~defect
    chosen = pixels[:, outside] if outside.any() else pixels.reshape(len(pixels), -1)
    return chosen.mean(axis=1)[:, None, None]
