"""The interface every synthetic source implements, and the registry that finds one by kind.

A source turns the *training split only* into labelled synthetic images for the defect classes
(DESIGN.md §3: built-in generators read only the training split). The split unit calls it once
per split digest; the result is packed beside the split under
``synthetic/<source>/<dataset>/<digest>/`` and every synthetic arm reads it from there.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from scarce.trainer.config import SyntheticConfig


class SyntheticSourceError(ValueError):
    """A source cannot deliver what the spec asks (permanent: names the class or file)."""


@dataclass(frozen=True)
class TrainingPool:
    """What a source may look at: the training split, already decoded at the shard size."""

    classes: Sequence[str]
    good_class: str
    images: np.ndarray  # uint8 [N, C, S, S]
    labels: np.ndarray  # int64 [N], indices into classes
    keys: Sequence[str]
    sha256: Sequence[str]
    test_sha256: frozenset[str] = field(default_factory=frozenset)
    #: uint8 [N, S, S], 0/255, all zero where an image has no mask; None when the dataset has
    #: no masks at all (or the shard predates masks).
    masks: np.ndarray | None = None

    @property
    def defect_classes(self) -> list[str]:
        """Every class but the good one: the classes synthetic images are made for."""
        return [c for c in self.classes if c != self.good_class]


@dataclass(frozen=True)
class SyntheticSet:
    """Synthetic images ready to pack: arrays at the shard size and one record per image."""

    images: np.ndarray  # uint8 [M, C, S, S]
    labels: list[str]
    records: list[dict]  # per image: {"label", "origin", "sha256", "hasMask", ...}
    masks: np.ndarray | None = None  # uint8 [M, S, S], 0/255, all zero where none; or None

    def counts(self) -> dict[str, int]:
        """Images per class."""
        counts: dict[str, int] = {}
        for label in self.labels:
            counts[label] = counts.get(label, 0) + 1
        return counts


class SyntheticSource(abc.ABC):
    """Produces `perClass` labelled images per defect class from a training pool."""

    kind: ClassVar[str]

    @abc.abstractmethod
    def generate(
        self,
        config: SyntheticConfig,
        pool: TrainingPool,
        *,
        image_size: int,
        channels: int,
        base_dir: str | None = None,
    ) -> SyntheticSet:
        """Make the synthetic set; deterministic for the config's seed and the pool."""


_SOURCES: dict[str, type[SyntheticSource]] = {}


def register_source(cls: type[SyntheticSource]) -> type[SyntheticSource]:
    """Class decorator: make a source available under its `kind`."""
    _SOURCES[cls.kind] = cls
    return cls


def get_source(kind: str) -> SyntheticSource:
    """An instance of the source registered for `kind`; the error lists the known kinds."""
    try:
        return _SOURCES[kind]()
    except KeyError:
        known = ", ".join(sorted(_SOURCES)) or "none"
        raise SyntheticSourceError(
            f"unknown synthetic source kind {kind!r}; supported: {known}"
        ) from None


def registered_kinds() -> list[str]:
    """Kinds with a registered source."""
    return sorted(_SOURCES)


SourceFactory = Callable[[], SyntheticSource]
