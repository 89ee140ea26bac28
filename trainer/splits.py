"""Frozen splits: stratified assignment, the canonical manifest, its digest, and verification.

Pure logic: no store, no images. The split of a dataset is decided from the image bytes'
sha256 and `splitSeed` alone, before any training run (report §3.3), so the same data and seed
give the same split wherever the data lies. Images with identical bytes always share a role, so
a test image can never also be a training image.

Images that are near duplicates (perceptual hashes within `near_distance` bits, in any of the
8 flips and quarter turns, within a class: e.g. Magnetic Tile's several exposures of one tile)
are grouped the same way, so the test split never holds an image whose near twin is trained on.

The digest is the sha256 of the canonical manifest JSON; every unit recomputes it and refuses a
mismatch (DESIGN.md §3 invariants).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scarce.trainer.config import SplitConfig

MANIFEST_VERSION = 1
ROLES = ("train", "val", "test")


class SplitIntegrityError(Exception):
    """A manifest or shard does not match the digest the unit was given (permanent)."""


@dataclass(frozen=True)
class SourceImage:
    """One real image as found in the dataset source."""

    key: str
    label: str
    sha256: str
    mask_key: str | None = None
    phash: tuple[int, ...] | None = None  # 64-bit perceptual hashes of the 8 flips/turns


def assign_roles(
    images: Sequence[SourceImage],
    split: SplitConfig,
    classes: Sequence[str],
    near_distance: int | None = None,
) -> dict[str, str]:
    """Assign each image key a role (train, val or test), stratified by class.

    Within a class, images are grouped (byte-identical, and near duplicates when
    `near_distance` is given and the images carry perceptual hashes); groups are ordered by
    their smallest sha256 and shuffled with a generator seeded by `splitSeed` and the class
    name, so adding a class never reshuffles another. Whole groups are dealt to the test split
    until it holds ``round(n * testFraction)`` images (at least one group), then to the
    validation split likewise (when valFraction > 0); the rest train. A class too small to keep
    a training group raises ValueError naming it.
    """
    groups_by_class: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    label_of_digest: dict[str, str] = {}
    for image in images:
        seen = label_of_digest.setdefault(image.sha256, image.label)
        if seen != image.label:
            raise ValueError(
                f"image {image.key} has the same bytes (sha256 {image.sha256[:12]}…) as an "
                f"image of class {seen!r} but is labelled {image.label!r}"
            )
        groups_by_class[image.label][image.sha256].append(image.key)

    hashes = {im.sha256: im.phash for im in images if im.phash}
    roles: dict[str, str] = {}
    for label in classes:
        groups = groups_by_class.get(label)
        if not groups:
            raise ValueError(f"class {label!r} has no images")
        clusters = _near_duplicate_clusters(sorted(groups), hashes, near_distance)
        members = [sorted(k for d in cluster for k in groups[d]) for cluster in clusters]
        n_images = sum(len(m) for m in members)
        n_test = max(1, round(n_images * split.test_fraction))
        n_val = max(1, round(n_images * split.val_fraction)) if split.val_fraction > 0 else 0
        order = np.random.default_rng(_class_seed(split.split_seed, label)).permutation(
            len(members)
        )
        dealt = {"test": 0, "val": 0}
        assigned: list[str] = []
        for index in order:
            if dealt["test"] < n_test:
                role = "test"
            elif dealt["val"] < n_val:
                role = "val"
            else:
                role = "train"
            if role != "train":
                dealt[role] += len(members[index])
            assigned.append(role)
            for key in members[index]:
                roles[key] = role
        if "train" not in assigned:
            raise ValueError(
                f"class {label!r} has {len(members)} distinct images (or groups of near "
                f"duplicates), too few for a test split of {n_test} and a validation split "
                f"of {n_val} with at least one training image"
            )
    return roles


def _near_duplicate_clusters(
    digests: list[str], hashes: dict[str, tuple[int, ...]], near_distance: int | None
) -> list[list[str]]:
    """Union of byte-identical groups whose perceptual hashes are within `near_distance`."""
    if near_distance is None or not all(d in hashes for d in digests) or len(digests) < 2:
        return [[d] for d in digests]
    variants = np.array([hashes[d] for d in digests], dtype=np.uint64)  # [n, 8]
    plain = variants[:, 0]
    distance = np.min(
        [np.bitwise_count(variants[:, v][:, None] ^ plain[None, :]) for v in range(8)], axis=0
    )
    parent = list(range(len(digests)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(distance <= near_distance), strict=True):
        if i < j:
            parent[root(int(i))] = root(int(j))
    clusters: dict[int, list[str]] = defaultdict(list)
    for i, digest in enumerate(digests):
        clusters[root(i)].append(digest)
    return sorted(clusters.values(), key=lambda c: c[0])


def _class_seed(split_seed: int, label: str) -> list[int]:
    label_bits = int.from_bytes(hashlib.sha256(label.encode()).digest()[:8], "little")
    return [split_seed, label_bits]


def build_manifest(
    *,
    dataset: str,
    format_name: str,
    good_class: str,
    split: SplitConfig,
    images: Iterable[SourceImage],
    near_distance: int | None = None,
) -> dict[str, Any]:
    """Build the canonical manifest of a frozen split (items sorted by class, then key).

    The manifest holds no location of the source, so the same data yields the same digest
    whether it lies on disk or in a bucket.
    """
    images = sorted(images, key=lambda im: (im.label, im.key))
    classes = sorted({im.label for im in images})
    if good_class not in classes:
        raise ValueError(
            f"dataset {dataset!r}: good class {good_class!r} not found among its classes "
            f"{classes}"
        )
    roles = assign_roles(images, split, classes, near_distance)
    items = [
        {
            "key": im.key,
            "label": im.label,
            "role": roles[im.key],
            "sha256": im.sha256,
            "maskKey": im.mask_key,
            **({"phash": f"{im.phash[0]:016x}"} if im.phash else {}),
        }
        for im in images
    ]
    grouping = {"nearDuplicateDistance": near_distance} if near_distance is not None else {}
    return {
        **grouping,
        "version": MANIFEST_VERSION,
        "dataset": dataset,
        "format": format_name,
        "goodClass": good_class,
        "classes": classes,
        "split": split.to_json_dict(),
        "items": items,
    }


def canonical_bytes(manifest: dict[str, Any]) -> bytes:
    """The canonical JSON encoding the digest is computed over."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the canonical manifest: the split's identity."""
    return hashlib.sha256(canonical_bytes(manifest)).hexdigest()


def verify_manifest(manifest: dict[str, Any], expected_digest: str, *, where: str) -> None:
    """Raise SplitIntegrityError unless the manifest's digest is the expected one."""
    found = manifest_digest(manifest)
    if found != expected_digest:
        raise SplitIntegrityError(
            f"split manifest {where} does not match its digest: expected {expected_digest}, "
            f"found {found}; refusing to train on it"
        )


def role_counts(manifest: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Images per class and role, e.g. ``{"scratch": {"train": 40, "val": 0, "test": 18}}``."""
    counts: dict[str, dict[str, int]] = {c: dict.fromkeys(ROLES, 0) for c in manifest["classes"]}
    for item in manifest["items"]:
        counts[item["label"]][item["role"]] += 1
    return counts


def few_shot_indices(
    labels: np.ndarray, pool: np.ndarray, k: int, seed: int, num_classes: int
) -> np.ndarray:
    """Pick k images per class from `pool` (indices), nested across k for a given seed.

    The per-class order is a permutation drawn from (seed, class) only, and the first k of it
    are taken, so the k=2 subset lies inside the k=3 subset, inside k=5 (report §5.2). A class
    with fewer than k images in the pool contributes all it has.
    """
    chosen: list[np.ndarray] = []
    for cls in range(num_classes):
        members = pool[labels[pool] == cls]
        order = np.random.default_rng([seed, 7919, cls]).permutation(len(members))
        chosen.append(members[order[:k]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
