"""Synthetic sources: vendor drops (external) now; built-in generators register the same way."""

from scarce.trainer.synth import external as _external  # noqa: F401  (registers the kind)
from scarce.trainer.synth.base import (
    SyntheticSet,
    SyntheticSource,
    SyntheticSourceError,
    TrainingPool,
    get_source,
    register_source,
    registered_kinds,
)
from scarce.trainer.synth.placebo import placebo_indices

__all__ = [
    "SyntheticSet",
    "SyntheticSource",
    "SyntheticSourceError",
    "TrainingPool",
    "get_source",
    "placebo_indices",
    "register_source",
    "registered_kinds",
]
