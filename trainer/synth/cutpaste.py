"""Kind `cutpaste`: class-conditional CutPaste (Li et al., CVPR 2021).

CutPaste cuts a rectangle out of an image and pastes it elsewhere to fake an anomaly. Here the
rectangle comes from a class-c training image and lands on a good training image, so the pasted
patch carries the class's real defect:

- **Size.** Area 2-15 % of the image and aspect ratio (height/width) between 0.3 and 3.3, drawn
  log-uniformly, as in the paper; grown to hold the whole chosen defect region when the donor has
  a mask (up to the image size).
- **Where it is cut.** Centred on one connected region of the donor's mask when it has one
  (so the patch holds the defect, not just background); anywhere in the donor otherwise.
- **Jitter.** A random multiple of 90°, a mirror, and contrast/brightness jitter (±20 %,
  ±10 grey levels), standing in for the paper's colour jitter.
- **Paste.** At a uniformly random place, with a hard edge, as in the paper: the seam is part of
  the anomaly the method teaches.

The mask is the whole pasted rectangle: every pixel of it was replaced, defect or not.
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
    pick_component,
    to_uint8,
)

#: Patch area as a share of the image, and its aspect-ratio range (Li et al., §3.1).
AREA = (0.02, 0.15)
ASPECT = (0.3, 3.3)


@register_source
class CutPasteSource(BuiltinGenerator):
    """Pastes rectangles cut around class-c defects onto good training images."""

    kind = "cutpaste"

    def compose(
        self, rng: np.random.Generator, base: np.ndarray, donor: np.ndarray, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cut a rectangle of `donor` (around its defect when masked) and paste it onto `base`."""
        size = base.shape[-1]
        area = rng.uniform(*AREA) * size * size
        aspect = math.exp(rng.uniform(math.log(ASPECT[0]), math.log(ASPECT[1])))
        height = min(size, max(2, round(math.sqrt(area * aspect))))
        width = min(size, max(2, round(math.sqrt(area / aspect))))
        if mask is not None:
            top, bottom, left, right = bounding_box(pick_component(rng, mask))
            height = min(size, max(height, bottom - top))
            width = min(size, max(width, right - left))
            top = _clamp((top + bottom - height) // 2, size - height)
            left = _clamp((left + right - width) // 2, size - width)
        else:
            top = int(rng.integers(size - height + 1))
            left = int(rng.integers(size - width + 1))
        patch = donor[:, top : top + height, left : left + width].astype(np.float32)
        (patch,) = orient(rng, patch)
        patch = jitter_contrast(rng, patch, patch.mean())
        height, width = patch.shape[-2:]

        top = int(rng.integers(size - height + 1))
        left = int(rng.integers(size - width + 1))
        out = base.copy()
        out[:, top : top + height, left : left + width] = to_uint8(patch)
        new_mask = np.zeros((size, size), dtype=bool)
        new_mask[top : top + height, left : left + width] = True
        return out, new_mask


def _clamp(value: int, upper: int) -> int:
    return int(min(max(value, 0), upper))
