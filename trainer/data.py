"""Training and test sets of a unit, assembled from the verified split and synthetic shards.

The arm decides what is added to the real training images (report §3.2, §3.4):
``real`` adds nothing, a synthetic arm adds its source's images, ``placebo`` adds duplicated
real images of the defect classes, as many per class as the matched synthetic source adds.
The test set is always the frozen split's test role: real images only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scarce.trainer.config import PLACEBO_ARM, REAL_ARM
from scarce.trainer.shards import load_shard
from scarce.trainer.splits import (
    SplitIntegrityError,
    few_shot_indices,
    manifest_digest,
    verify_manifest,
)
from scarce.trainer.store import ObjectNotFound, Store
from scarce.trainer.synth import SyntheticSourceError, placebo_indices
from scarce.trainer.unit import (
    WorkUnit,
    result_key_for,
    shard_name,
    split_prefix,
    synthetic_prefix,
)


@dataclass(frozen=True)
class UnitData:
    """Arrays a unit trains and evaluates on (uint8 images, int64 labels)."""

    classes: list[str]
    train_images: np.ndarray
    train_labels: np.ndarray
    eval_images: np.ndarray
    eval_labels: np.ndarray
    eval_role: str
    composition: dict[str, Any]


def load_split(store: Store, unit: WorkUnit) -> tuple[dict[str, Any], np.ndarray]:
    """Read the unit's manifest and shard and verify both against the unit's split digest."""
    digest = unit.split_digest
    if not digest:
        raise SplitIntegrityError(f"unit {unit.key} carries no split digest")
    prefix = split_prefix(unit.dataset.name, digest)
    manifest_key = f"{prefix}/manifest.json"
    try:
        manifest = store.get_json(manifest_key)
    except ObjectNotFound as error:
        raise SplitIntegrityError(
            f"split {digest} of dataset {unit.dataset.name!r} not found at "
            f"{store.uri}/{manifest_key}; run the split stage first"
        ) from error
    verify_manifest(manifest, digest, where=f"{store.uri}/{manifest_key}")
    shard_key = f"{prefix}/{shard_name(unit.model.image_size, unit.model.channels)}"
    shard = load_shard(store, shard_key, expected_digest=digest, count=len(manifest["items"]))
    return manifest, shard.images


def load_synthetic(store: Store, unit: WorkUnit, source: str) -> tuple[dict, np.ndarray]:
    """Read a synthetic set made for the unit's split, verified against its manifest."""
    prefix = synthetic_prefix(source, unit.dataset.name, unit.split_digest or "")
    manifest_key = f"{prefix}/manifest.json"
    manifest = synthetic_manifest(store, unit, source)
    if manifest.get("splitDigest") != unit.split_digest:
        raise SplitIntegrityError(
            f"synthetic set {store.uri}/{manifest_key} was made for split "
            f"{manifest.get('splitDigest')}, expected {unit.split_digest}"
        )
    shard_key = f"{prefix}/{shard_name(unit.model.image_size, unit.model.channels)}"
    shard = load_shard(
        store, shard_key, expected_digest=manifest_digest(manifest), count=len(manifest["items"])
    )
    return manifest, shard.images


def synthetic_manifest(store: Store, unit: WorkUnit, source: str) -> dict[str, Any]:
    """The manifest of a source's synthetic set for the unit's split.

    A missing manifest is a permanent error: the split unit publishes a set only once it is
    made and has passed the leakage check, so the split result says why it is not there.
    """
    key = f"{synthetic_prefix(source, unit.dataset.name, unit.split_digest or '')}/manifest.json"
    try:
        return store.get_json(key)
    except ObjectNotFound as error:
        split_result = result_key_for(unit.model_copy(update={"stage": "split"}))
        raise SyntheticSourceError(
            f"synthetic source {source!r} of dataset {unit.dataset.name!r} has no published "
            f"set for split {unit.split_digest} ({store.uri}/{key} is missing); see "
            f"synthetic.{source} in the split result {store.uri}/{split_result} (a source "
            "refused by the leakage check is never published)"
        ) from error


def assemble(store: Store, unit: WorkUnit) -> UnitData:
    """Build the unit's training set for its arm (and k) and its evaluation set."""
    manifest, images = load_split(store, unit)
    classes: list[str] = manifest["classes"]
    items = manifest["items"]
    labels = np.array([classes.index(item["label"]) for item in items], dtype=np.int64)
    roles = np.array([item["role"] for item in items])

    if unit.stage == "pilot":
        pool, eval_role = np.flatnonzero(roles == "train"), "val"
    else:
        pool, eval_role = np.flatnonzero(roles != "test"), "test"
    seed = unit.seed or 0
    if unit.k is not None:
        pool = few_shot_indices(labels, pool, unit.k, seed, len(classes))

    train_images, train_labels = images[pool], labels[pool]
    composition: dict[str, Any] = {"real": _count(train_labels, classes)}
    arm = unit.arm or REAL_ARM
    if arm == PLACEBO_ARM:
        source = unit.placebo_source
        if not source:
            raise ValueError(f"unit {unit.key}: the placebo arm needs placeboSource")
        counts = synthetic_manifest(store, unit, source)["counts"]
        extra = placebo_indices(labels, pool, counts, classes, seed)
        train_images = np.concatenate([train_images, images[extra]])
        train_labels = np.concatenate([train_labels, labels[extra]])
        composition["duplicated"] = _count(labels[extra], classes)
        composition["matches"] = source
    elif arm != REAL_ARM:
        synth_manifest, synth_images = load_synthetic(store, unit, arm)
        synth_labels = np.array(
            [classes.index(item["label"]) for item in synth_manifest["items"]], dtype=np.int64
        )
        train_images = np.concatenate([train_images, synth_images])
        train_labels = np.concatenate([train_labels, synth_labels])
        composition["synthetic"] = _count(synth_labels, classes)

    evaluate = np.flatnonzero(roles == eval_role)
    return UnitData(
        classes=classes,
        train_images=train_images,
        train_labels=train_labels,
        eval_images=images[evaluate],
        eval_labels=labels[evaluate],
        eval_role=eval_role,
        composition=composition,
    )


def _count(labels: np.ndarray, classes: list[str]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(classes))
    return {c: int(n) for c, n in zip(classes, counts, strict=True) if n}
