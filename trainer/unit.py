"""A work unit: the one resolved config a trainer process receives, and where its result goes.

Units are planned by `scarce.operator.plan` (pure) and executed by `scarce-trainer` inside a
Kubernetes Job or a local worker process. This module is torch-free so the operator can import it.

Object keys (DESIGN.md §3) are derived here and nowhere else.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, field_validator

from scarce.trainer.config import (
    ConfigModel,
    DatasetConfig,
    LeakageConfig,
    ModelConfig,
    ScheduleConfig,
    SyntheticConfig,
    VerdictConfig,
    check_name,
)

Stage = Literal["split", "pilot", "train", "fidelity", "reduce"]

#: Exit codes of `scarce-trainer`. A permanent error (bad config, bad data, digest mismatch)
#: would fail again on retry, so Kubernetes Jobs fail at once on it (podFailurePolicy);
#: anything else is retried.
EXIT_OK = 0
EXIT_TRANSIENT = 1
EXIT_USAGE = 2
EXIT_PERMANENT = 3


class StorageConfig(ConfigModel):
    """Where the store is; credentials never travel in a unit (environment only)."""

    uri: str = Field(description="file:///abs/path, a local path, or s3://bucket/prefix.")
    endpoint: str | None = Field(None, description="S3 endpoint host:port or URL (MinIO).")
    secure: bool | None = Field(None, description="Use TLS for the S3 endpoint.")


class WorkUnit(ConfigModel):
    """Everything one `scarce-trainer` invocation needs; written next to its result."""

    stage: Stage
    benchmark: str
    storage: StorageConfig
    datasets: list[DatasetConfig] = Field(default_factory=list)
    synthetic: list[SyntheticConfig] = Field(default_factory=list)
    arm: str | None = None
    seed: int | None = None
    k: int | None = Field(None, description="Real images per class (few-shot); None = all.")
    split_digest: str | None = None
    placebo_source: str | None = Field(
        None, description="The synthetic source whose per-class counts the placebo arm copies."
    )
    arms: list[str] = Field(default_factory=list, description="All arms (reduce stage).")
    seeds: int | None = Field(None, description="Seed count (reduce stage).")
    model: ModelConfig = Field(default_factory=ModelConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    leakage: LeakageConfig = Field(default_factory=LeakageConfig)
    verdict: VerdictConfig = Field(default_factory=VerdictConfig)
    few_shot: list[int] = Field(default_factory=list, description="Few-shot k (reduce stage).")
    threads: int | None = Field(None, description="CPU threads for torch; None = torch default.")

    @field_validator("benchmark", "arm", "placebo_source")
    @classmethod
    def _key_safe_name(cls, value: str | None) -> str | None:
        # These go into object keys (results/<benchmark>/<dataset>/<arm>/...): a unit handed
        # to the trainer by hand or by another tool must not point a key at another
        # benchmark's prefix, just as the spec's names cannot.
        return None if value is None else check_name(value)

    @property
    def dataset(self) -> DatasetConfig:
        """The unit's single dataset (split, pilot and train units have exactly one)."""
        if len(self.datasets) != 1:
            raise ValueError(f"unit {self.key} has {len(self.datasets)} datasets, expected 1")
        return self.datasets[0]

    @property
    def key(self) -> str:
        """Identity of the unit within its benchmark, e.g. ``train/demo/real/kfull/seed0``."""
        if self.stage == "reduce":
            return "reduce"
        name = self.datasets[0].name if self.datasets else "-"
        if self.stage == "split":
            return f"split/{name}"
        if self.stage == "pilot":
            return f"pilot/{name}/seed{self.seed}"
        if self.stage == "fidelity":
            return f"fidelity/{name}"
        return f"train/{name}/{self.arm}/{k_label(self.k)}/seed{self.seed}"

    @property
    def result_key(self) -> str:
        """Store key of the unit's result object (written once, atomically)."""
        return result_key_for(self)

    def config_hash(self) -> str:
        """sha256 of the canonical unit JSON: a result is valid only for the same config.

        Where the store lies and how many threads ran the unit do not change what it computes,
        so they are left out: a moved store or a different worker count reuses results.
        """
        config = self.to_json_dict()
        for volatile in ("storage", "threads"):
            config.pop(volatile, None)
        canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def k_label(k: int | None) -> str:
    """Folder name of a few-shot size: ``k2`` or ``kfull`` for the whole training pool."""
    return "kfull" if k is None else f"k{k}"


def result_key_for(unit: WorkUnit) -> str:
    """Store key of a unit's result, following DESIGN.md §3's store layout."""
    bench = unit.benchmark
    if unit.stage == "reduce":
        return f"reports/{bench}/report.json"
    dataset = unit.dataset.name
    if unit.stage == "split":
        return f"results/{bench}/{dataset}/split.json"
    if unit.stage == "pilot":
        return f"results/{bench}/{dataset}/pilot/seed{unit.seed}.json"
    if unit.stage == "fidelity":
        return fidelity_key(bench, dataset)
    return f"results/{bench}/{dataset}/{unit.arm}/{k_label(unit.k)}/seed{unit.seed}.json"


def fidelity_key(benchmark: str, dataset: str) -> str:
    """Store key of a dataset's fidelity result (report Figure 1's numbers)."""
    return f"results/{benchmark}/{dataset}/fidelity.json"


def extractor_weights_key(benchmark: str, dataset: str) -> str:
    """Store key of the weights the fidelity stage extracts features with: the real-only model
    of seed 0 (saved by that train unit only)."""
    return f"models/{benchmark}/{dataset}/real-seed0.pt"


def split_prefix(dataset: str, digest: str) -> str:
    """Folder of a frozen split: manifest and packed shards."""
    return f"splits/{dataset}/{digest}"


def synthetic_prefix(source: str, dataset: str, digest: str) -> str:
    """Folder of a synthetic set, made once per split digest."""
    return f"synthetic/{source}/{dataset}/{digest}"


def shard_name(image_size: int, channels: int) -> str:
    """File name of a packed uint8 shard at one resolution."""
    return f"shard-{image_size}px-{channels}ch.npz"
