"""Synthetic sources: vendor drops (external) and the built-in generators, found by kind."""

# Importing a source module registers its kind.
from scarce.trainer.synth import cutpaste as _cutpaste  # noqa: F401
from scarce.trainer.synth import external as _external  # noqa: F401
from scarce.trainer.synth import perlin as _perlin  # noqa: F401
from scarce.trainer.synth import transplant as _transplant  # noqa: F401
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
