"""What the built-in generators (transplant, cutpaste, perlin) share: the per-class loop and pixels.

Each built-in generator makes one image at a time from a good training image (the *base*) and a
training image of the defect class (the *donor*, with its mask when it has one). The loop here
picks both, seeds one numpy Generator per image from ``[seed, class index, image index]``, and
packs the result, so a generator only says how one image is composed.

No test image can reach a generator: it gets a :class:`TrainingPool`, which holds the training
split only (test images are present as sha256 strings, for refusal checks, never as pixels).
That, and not a hash comparison after the fact, is what keeps generated images apart from the
test split (DESIGN.md §3: built-in generators read only the training split).
"""

from __future__ import annotations

import abc
import hashlib
from typing import ClassVar

import numpy as np
from scipy import ndimage

from scarce.trainer.config import SyntheticConfig
from scarce.trainer.synth.base import (
    SyntheticSet,
    SyntheticSource,
    SyntheticSourceError,
    TrainingPool,
)


class BuiltinGenerator(SyntheticSource):
    """A source that composes each synthetic image from one good and one defect training image.

    Subclasses set `kind` and implement :meth:`compose`; one that cannot work without masks sets
    `needs_masks`.
    """

    #: The generator cuts defects along their masks; a class without any is an error.
    needs_masks: ClassVar[bool] = False

    @abc.abstractmethod
    def compose(
        self, rng: np.random.Generator, base: np.ndarray, donor: np.ndarray, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One synthetic image and its mask.

        ``base`` is a good image and ``donor`` a defect image, uint8 ``[C, S, S]``; ``mask`` is
        the donor's boolean ``[S, S]`` defect mask, or None. Returns the image, uint8
        ``[C, S, S]``, and a non-empty boolean ``[S, S]`` mask of the pixels made defective.
        """

    def generate(
        self,
        config: SyntheticConfig,
        pool: TrainingPool,
        *,
        image_size: int,
        channels: int,
        base_dir: str | None = None,
    ) -> SyntheticSet:
        """`perClass` images per defect class, deterministic for the config's seed and the pool."""
        expected = (channels, image_size, image_size)
        if pool.images.ndim != 4 or pool.images.shape[1:] != expected:
            raise ValueError(
                f"pool.images: expected uint8 [N, {channels}, {image_size}, {image_size}], "
                f"got {pool.images.shape}"
            )
        where = f"synthetic source {config.name!r} ({self.kind})"
        good = np.flatnonzero(pool.labels == list(pool.classes).index(pool.good_class))
        if len(good) == 0:
            raise SyntheticSourceError(
                f"{where}: good class {pool.good_class!r} has no training images to paste onto"
            )
        images, masks, labels, records = [], [], [], []
        for class_index, class_name in enumerate(pool.classes):
            if class_name == pool.good_class:
                continue
            donors = self._donors(pool, class_index, class_name, where)
            for i in range(config.per_class):
                rng = np.random.default_rng([config.seed, class_index, i])
                b = int(good[rng.integers(len(good))])
                d = int(donors[rng.integers(len(donors))])
                image, mask = self.compose(rng, pool.images[b], pool.images[d], _mask(pool, d))
                if image.shape != expected or image.dtype != np.uint8 or not mask.any():
                    raise AssertionError(f"{self.kind} made a malformed image for {class_name}")
                images.append(image)
                masks.append(np.where(mask, 255, 0).astype(np.uint8))
                labels.append(class_name)
                records.append(
                    {
                        "label": class_name,
                        "origin": f"{pool.keys[b]} + {pool.keys[d]}",
                        "sha256": hashlib.sha256(image.tobytes()).hexdigest(),
                        "hasMask": True,
                    }
                )
        return SyntheticSet(
            images=_stack(images, (0, *expected)),
            labels=labels,
            records=records,
            masks=_stack(masks, (0, image_size, image_size)),
        )

    def _donors(
        self, pool: TrainingPool, class_index: int, class_name: str, where: str
    ) -> np.ndarray:
        """Training images of the class a defect may come from (those with masks if needed)."""
        members = np.flatnonzero(pool.labels == class_index)
        if len(members) == 0:
            raise SyntheticSourceError(
                f"{where}: class {class_name!r} has no training images to take defects from"
            )
        if not self.needs_masks:
            return members
        masked = np.array([m for m in members if _mask(pool, int(m)) is not None], dtype=np.int64)
        if len(masked) == 0:
            raise SyntheticSourceError(
                f"{where}: class {class_name!r} has no training image with a defect mask; "
                f"{self.kind} cuts defects along their masks (cutpaste and perlin work without)"
            )
        return masked


def _mask(pool: TrainingPool, index: int) -> np.ndarray | None:
    if pool.masks is None:
        return None
    mask = pool.masks[index] > 127
    return mask if mask.any() else None


def _stack(arrays: list[np.ndarray], empty_shape: tuple[int, ...]) -> np.ndarray:
    return np.stack(arrays) if arrays else np.zeros(empty_shape, dtype=np.uint8)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Round and clip float pixels to uint8."""
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def pick_component(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """One connected defect region of a mask (8-connected), drawn at random: a boolean mask."""
    labelled, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return labelled == int(rng.integers(1, count + 1))


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of a non-empty boolean mask, bottom and right exclusive."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def jitter_contrast(
    rng: np.random.Generator,
    pixels: np.ndarray,
    centre: np.ndarray | float,
    *,
    gain: float = 0.2,
    shift: float = 10.0,
) -> np.ndarray:
    """Scale float pixels' contrast around `centre` by 1±gain and shift them by ±shift grey levels.

    One draw for all channels, so a colour defect keeps its hue.
    """
    factor = rng.uniform(1.0 - gain, 1.0 + gain)
    offset = rng.uniform(-shift, shift)
    return centre + (pixels - centre) * factor + offset


def orient(rng: np.random.Generator, *arrays: np.ndarray) -> list[np.ndarray]:
    """Rotate by a random multiple of 90° and maybe mirror, the same way for every array.

    Arrays are ``[..., H, W]``; the last two axes are turned.
    """
    turns, mirror = int(rng.integers(4)), bool(rng.integers(2))
    out = []
    for array in arrays:
        turned = np.rot90(array, turns, axes=(-2, -1))
        out.append(np.ascontiguousarray(turned[..., ::-1] if mirror else turned))
    return out
