"""Configuration models shared by the spec (operator side) and the work units (trainer side).

The `ScarceBenchmark` spec in `scarce.operator.spec` is the single source of truth; it composes
these models, so a field is declared once and means the same thing in a spec file, in a work
unit handed to the trainer, and in the resolved config written next to every result. They live
here, on the trainer side, because the trainer must never import the operator.

All models use camelCase aliases (the YAML and JSON spelling) and forbid unknown fields, so a
typo such as ``seed:`` for ``seeds:`` is an error, never silently ignored.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

#: Dataset layouts the trainer can read (see `scarce.trainer.datasets`); a test keeps this
#: list equal to the registry so the spec can validate `format:` without importing image code.
DATASET_FORMATS: tuple[str, ...] = (
    "imagefolder",
    "magnetic-tile",
    "marble",
    "mvtec-ad",
    "plantvillage",
    "riawelc",
)

#: Kinds of synthetic source (see `scarce.trainer.synth`).
SYNTHETIC_KINDS: tuple[str, ...] = ("external", "transplant", "cutpaste", "perlin")

#: Arm names with a fixed meaning; every other arm names a synthetic source.
REAL_ARM = "real"
PLACEBO_ARM = "placebo"
RESERVED_ARMS = (REAL_ARM, PLACEBO_ARM)

#: The value of `hardestClass` that asks for the pilot stage.
AUTO = "auto"

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")


class ConfigModel(BaseModel):
    """Base for every config model: camelCase aliases, unknown fields forbidden, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )

    def to_json_dict(self) -> dict:
        """The model as plain JSON data with camelCase keys (the spelling of spec files)."""
        return self.model_dump(mode="json", by_alias=True)


def check_name(value: str) -> str:
    """Validate a DNS-label-like name used in object keys and Kubernetes labels."""
    # fullmatch, not match: '$' also matches before a final newline, so match() let
    # 'bench\n' through into object keys, Job names and labels.
    if not _NAME_RE.fullmatch(value):
        raise ValueError(
            "must be 1-40 lowercase letters, digits or '-', starting and ending "
            f"with a letter or digit, got {value!r}"
        )
    return value


def check_uri(value: str) -> str:
    """Validate a data location: file:///abs, s3://bucket[/prefix] or a plain path.

    Control characters (NUL, newline ...) are refused: no folder or bucket key holds them, and
    a NUL makes every path function raise. ``~`` and ``~/...`` name the home folder of the user
    running SCARCE; ``~name/...`` (another user's home) is refused, because whether that user
    exists depends on the machine the spec is read on.
    """
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(
            f"must not contain control characters (NUL, newline ...), got {value!r}"
        )
    if value.startswith("~") and value != "~" and not value.startswith("~/"):
        raise ValueError(
            "must be file:///absolute/path, s3://bucket/prefix or a path (~name, another "
            f"user's home folder, is not supported), got {value!r}"
        )
    if "://" in value and not value.startswith(("file:///", "s3://")):
        raise ValueError(
            f"must be file:///absolute/path, s3://bucket/prefix or a path, got {value!r}"
        )
    if value.startswith("s3://") and len(value[5:].split("/", 1)[0]) < 3:
        raise ValueError(f"s3 bucket name must have at least 3 characters, got {value!r}")
    return value


class SplitConfig(ConfigModel):
    """How a dataset's frozen split is drawn (stratified by class)."""

    test_fraction: float = Field(
        0.3, description="Share of each class held out as the frozen, real-only test split."
    )
    val_fraction: float = Field(
        0.0,
        description="Share of each class carved from the training pool as a validation split "
        "(used by the pilot stage that picks the hardest class; never the test split).",
    )
    split_seed: int = Field(0, ge=0, description="Seed of the split; fixed before any training.")

    @field_validator("test_fraction")
    @classmethod
    def _test_fraction_open_interval(cls, value: float) -> float:
        if not 0.0 < value < 1.0:
            raise ValueError(f"must be in (0, 1), got {value}")
        return value

    @field_validator("val_fraction")
    @classmethod
    def _val_fraction_half_open(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"must be in [0, 1), got {value}")
        return value

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> SplitConfig:
        total = self.test_fraction + self.val_fraction
        if total >= 0.9:
            raise ValueError(
                "testFraction + valFraction must leave at least 10% of each class for "
                f"training, got {total:g}"
            )
        return self


class DatasetConfig(ConfigModel):
    """One dataset of the benchmark: where it lies, its layout and its hardest class."""

    name: str = Field(description="Short name used in object keys, labels and the report.")
    format: str = Field(description="Layout of the source: " + ", ".join(DATASET_FORMATS) + ".")
    source: str = Field(
        description="Where the images lie: file:///abs/path, a path relative to the spec file, "
        "or s3://bucket/prefix."
    )
    hardest_class: str = Field(
        description="The class the benchmark reports on, or 'auto' to pick it with a pilot "
        "stage on the validation split before any reported run."
    )
    good_class: str | None = Field(
        None,
        description="The no-defect class (no synthetic images are made for it). Defaults to "
        "the format's own (e.g. 'good' for imagefolder, mvtec-ad and marble, 'Free' for "
        "magnetic-tile, 'healthy' for plantvillage, 'no_defect' for riawelc).",
    )
    split: SplitConfig = Field(default_factory=SplitConfig)
    options: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Options of the format, e.g. plant: Potato (plantvillage) or root: a "
        "subfolder of the source; unknown options are refused by the loader.",
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("source")
    @classmethod
    def _supported_source(cls, value: str) -> str:
        return check_uri(value)

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in DATASET_FORMATS:
            raise ValueError(
                f"must be one of {', '.join(repr(f) for f in DATASET_FORMATS)}, got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _auto_needs_validation_split(self) -> DatasetConfig:
        if self.hardest_class == AUTO and self.split.val_fraction <= 0:
            raise ValueError(
                "hardestClass: auto needs split.valFraction > 0 (the pilot never looks at "
                "the test split)"
            )
        return self


class SyntheticConfig(ConfigModel):
    """One source of synthetic images; each source becomes one synthetic arm."""

    name: str = Field(description="Name of the source; also the name of its arm.")
    kind: str = Field(description="Kind of source: " + ", ".join(SYNTHETIC_KINDS) + ".")
    uri: str | None = Field(
        None,
        description="For kind external: the vendor's drop, laid out <class>/<image> with "
        "optional <class>/<image>_mask.png (a folder or s3://bucket/prefix).",
    )
    per_class: int = Field(
        ge=1, le=100_000, description="Synthetic images added to each defect class."
    )
    seed: int = Field(0, ge=0, description="Seed that selects or generates the images.")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        check_name(value)
        if value in RESERVED_ARMS:
            raise ValueError(f"{value!r} is reserved for the {value} arm; choose another name")
        return value

    @field_validator("uri")
    @classmethod
    def _supported_uri(cls, value: str | None) -> str | None:
        return None if value is None else check_uri(value)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in SYNTHETIC_KINDS:
            raise ValueError(
                f"must be one of {', '.join(repr(k) for k in SYNTHETIC_KINDS)}, got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _external_needs_uri(self) -> SyntheticConfig:
        if self.kind == "external" and not self.uri:
            raise ValueError("a source of kind external needs uri (the vendor's drop)")
        return self


class LeakageConfig(ConfigModel):
    """How the split unit treats synthetic or training images that match a test image."""

    policy: Literal["refuse", "flag"] = Field(
        "refuse",
        description="refuse: the arm whose source leaks fails, naming the files; flag: the "
        "matches are reported and the run goes on.",
    )
    max_hash_distance: int = Field(
        4,
        ge=0,
        le=64,
        description="Perceptual-hash Hamming distance (of 64 bits) at or below which two "
        "images count as near duplicates.",
    )


class VerdictConfig(ConfigModel):
    """Thresholds of the per-arm verdict (defaults: the report's |z| >= 3.4 and p < 0.05)."""

    min_abs_z: float = Field(3.4, gt=0.0, description="Smallest |z| that counts as a gain.")
    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="Holm-adjusted p-value threshold.")


class ModelConfig(ConfigModel):
    """The backbone, identical in every arm."""

    backbone: str = Field("resnet18", description="timm model name, e.g. resnet18, resnet50.")
    pretrained: bool = Field(
        False,
        description="Start from pretrained weights; they are read from weightsUri in the "
        "store, never downloaded at run time.",
    )
    weights_uri: str | None = Field(
        None, description="Store key or URI of a state_dict (.pt/.safetensors) for pretrained."
    )
    image_size: int = Field(128, ge=16, le=1024, description="Square input size in pixels.")
    channels: Literal[1, 3] = Field(3, description="1 for grayscale, 3 for RGB input.")

    @model_validator(mode="after")
    def _pretrained_needs_weights(self) -> ModelConfig:
        if self.pretrained and not self.weights_uri:
            raise ValueError(
                "pretrained: true needs weightsUri (weights are never downloaded at run time)"
            )
        return self


class AugmentationConfig(ConfigModel):
    """Label-preserving augmentations, applied on batches of tensors (never by decoding)."""

    hflip: bool = Field(True, description="Random horizontal flips.")
    vflip: bool = Field(True, description="Random vertical flips.")
    rotate90: bool = Field(True, description="Random rotations by multiples of 90 degrees.")
    brightness: float = Field(0.1, ge=0.0, le=1.0, description="Max additive brightness jitter.")
    contrast: float = Field(0.1, ge=0.0, le=1.0, description="Max relative contrast jitter.")


class ScheduleConfig(ConfigModel):
    """The training schedule, identical in every arm."""

    epochs: int = Field(30, ge=1, le=10_000, description="Passes over the training set.")
    batch_size: int = Field(32, ge=1, le=4096, description="Images per optimizer step.")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="Optimizer.")
    lr: float = Field(1e-3, gt=0.0, le=10.0, description="Peak learning rate (cosine decay).")
    weight_decay: float = Field(0.05, ge=0.0, le=10.0, description="Weight decay.")
    warmup_epochs: float = Field(
        0.0, ge=0.0, le=1000.0, description="Linear warm-up length in epochs."
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="Cross-entropy smoothing.")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16 autocast on CUDA; fp32 everywhere else."
    )
    channels_last: bool = Field(False, description="channels_last memory format on CUDA.")
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)
