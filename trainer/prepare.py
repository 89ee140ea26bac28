"""The split unit: freeze a dataset's split, pack its shard, and prepare its synthetic sets.

Runs once per dataset before any training unit (DESIGN.md §3). Everything it writes is
content-addressed by the split digest and written manifest-last, so an interrupted run leaves
no object that a later unit could take for complete, and a rerun skips what exists.
"""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from scarce.trainer.config import DatasetConfig, LeakageConfig, SyntheticConfig
from scarce.trainer.datasets import get_format, scan_dataset
from scarce.trainer.datasets.images import decode_image, decode_mask
from scarce.trainer.leakage import (
    METHOD,
    SplitReference,
    capped,
    dihedral_phash64,
    refusal_message,
    refusing,
)
from scarce.trainer.shards import Shard, decode_all, pack_shard, unpack_shard
from scarce.trainer.splits import SourceImage, build_manifest, manifest_digest, role_counts
from scarce.trainer.store import Store, open_store
from scarce.trainer.synth import SyntheticSet, TrainingPool, get_source
from scarce.trainer.synth.builtin import BuiltinGenerator
from scarce.trainer.unit import WorkUnit, shard_name, split_prefix, synthetic_prefix

log = logging.getLogger(__name__)

#: Images are hashed at this size for grouping near duplicates (phash itself works at 32 px).
_PHASH_SIZE = 64


def run_split_unit(unit: WorkUnit, store: Store, *, base_dir: Path | None) -> dict[str, Any]:
    """Freeze the split of the unit's dataset and prepare its synthetic sets; return the result."""
    started = time.perf_counter()
    dataset = unit.dataset
    source = open_store(dataset.source, base_dir=base_dir)
    manifest = freeze_split(dataset, source, unit.leakage.max_hash_distance)
    digest = manifest_digest(manifest)
    prefix = split_prefix(dataset.name, digest)
    size, channels = unit.model.image_size, unit.model.channels
    shard_key = f"{prefix}/{shard_name(size, channels)}"

    if not store.exists(shard_key):
        keys = [item["key"] for item in manifest["items"]]
        images = decode_all(source, keys, _decoder(channels, size), threads=unit.threads or 4)
        masks = _decode_masks(source, manifest["items"], size, threads=unit.threads or 4)
        store.put_bytes(shard_key, pack_shard(images, digest, masks=masks))
    if not store.exists(f"{prefix}/manifest.json"):
        store.put_json(f"{prefix}/manifest.json", manifest)

    shard = unpack_shard(
        store.get_bytes(shard_key), expected_digest=digest, where=shard_key,
        count=len(manifest["items"]),
    )
    # Hashed once per split; every synthetic set is checked against it before it is published.
    reference = SplitReference(manifest["items"], shard.images)
    train_test = reference.train_test(unit.leakage.max_hash_distance)
    leakage: dict[str, Any] = {
        "policy": unit.leakage.policy,
        "maxHashDistance": unit.leakage.max_hash_distance,
        "method": METHOD,
        "trainTest": capped(train_test),
        "trainTestCount": len(train_test),
        "synthetic": {},
        "syntheticCounts": {},
    }
    synthetic = {}
    if unit.synthetic:
        pool = _training_pool(manifest, shard)
        for config in unit.synthetic:
            summary = prepare_synthetic(
                config, pool, store, dataset.name, digest, size, channels, base_dir,
                reference=reference, leakage=unit.leakage,
            )
            synthetic[config.name] = summary
            # A refused source keeps its matches beside its error; the others list them once,
            # in the leakage section.
            refused = "error" in summary
            leaks = summary["leaks"] if refused else summary.pop("leaks")
            counts = summary["leakCounts"] if refused else summary.pop("leakCounts")
            leakage["synthetic"][config.name] = leaks
            leakage["syntheticCounts"][config.name] = counts
    return {
        "splitDigest": digest,
        "manifestKey": f"{prefix}/manifest.json",
        "shardKey": shard_key,
        "classes": manifest["classes"],
        "goodClass": manifest["goodClass"],
        "counts": role_counts(manifest),
        "synthetic": synthetic,
        "leakage": leakage,
        "seconds": round(time.perf_counter() - started, 3),
    }


def freeze_split(
    dataset: DatasetConfig, source: Store, near_distance: int | None = None
) -> dict[str, Any]:
    """Scan the source, hash every image (sha256 and perceptual) and build the manifest.

    With `near_distance`, near-duplicate images of a class are kept in one role (see
    `scarce.trainer.splits`).
    """
    fmt = get_format(dataset.format)
    records = scan_dataset(dataset.format, source, dataset.options)

    def hashes(key: str) -> tuple[str, tuple[int, ...] | None]:
        data = source.get_bytes(key, verify=False)
        if near_distance is None:
            return hashlib.sha256(data).hexdigest(), None
        small = decode_image(data, channels=1, size=_PHASH_SIZE, name=key)[None]
        variants = dihedral_phash64(small)[:, 0]
        return hashlib.sha256(data).hexdigest(), tuple(int(v) for v in variants)

    with ThreadPoolExecutor(max_workers=8) as pool:
        found = list(pool.map(lambda r: hashes(r.key), records))
    images = [
        SourceImage(key=r.key, label=r.label, sha256=d, mask_key=r.mask_key, phash=p)
        for r, (d, p) in zip(records, found, strict=True)
    ]
    good_class = dataset.good_class or fmt.default_good_class
    manifest = build_manifest(
        dataset=dataset.name,
        format_name=dataset.format,
        good_class=good_class,
        split=dataset.split,
        images=images,
        near_distance=near_distance,
    )
    if dataset.hardest_class != "auto" and dataset.hardest_class not in manifest["classes"]:
        raise ValueError(
            f"dataset {dataset.name!r}: hardestClass {dataset.hardest_class!r} is not one of "
            f"its classes ({', '.join(manifest['classes'])})"
        )
    return manifest


def prepare_synthetic(
    config: SyntheticConfig,
    pool: TrainingPool,
    store: Store,
    dataset: str,
    digest: str,
    size: int,
    channels: int,
    base_dir: Path | None,
    *,
    reference: SplitReference | None = None,
    leakage: LeakageConfig | None = None,
) -> dict[str, Any]:
    """Make (or reuse) one source's synthetic set for this split; return its summary.

    With a `reference`, every image is checked against the split's test and training images
    before the set is published (see `scarce.trainer.leakage`); the matches come back under
    ``leaks``. Under the refuse policy a source that leaks test images is not published (its
    manifest is removed if an earlier flag run published it), so no unit can train on it: the
    summary is then ``{"error": ..., "leaks": [...]}`` instead of raising, and the other arms
    of the benchmark go on.
    """
    prefix = synthetic_prefix(config.name, dataset, digest)
    manifest_key = f"{prefix}/manifest.json"
    shard_key = f"{prefix}/{shard_name(size, channels)}"
    manifest, made = _existing_or_new(
        config, pool, store, dataset, digest, size, channels, base_dir, manifest_key, shard_key
    )
    matches: list[dict[str, Any]] = []
    offending: list[dict[str, Any]] = []
    if reference is not None:
        policy = leakage or LeakageConfig()
        images = made.images if made is not None else unpack_shard(
            store.get_bytes(shard_key), expected_digest=manifest_digest(manifest),
            where=shard_key, count=len(manifest["items"]),
        ).images
        matches = reference.screen(images, manifest["items"], policy.max_hash_distance)
        # Built-in generators get a TrainingPool, which holds no test pixels (the planted-marker
        # test proves it): a test match of theirs is two similar images of a homogeneous
        # dataset (a defect pasted onto a training tile that resembles a test tile), not a
        # leak. Reported, never refused; every other source (a vendor's drop) is refused.
        builtin = isinstance(get_source(config.kind), BuiltinGenerator)
        offending = [] if builtin else refusing(matches)
        if offending and policy.policy == "refuse":
            if made is None:
                store.delete(manifest_key)  # published by an earlier run under policy flag
            log.warning("synthetic source %s refused: %d test match(es)", config.name,
                        len(offending))
            return {
                "error": refusal_message(config.name, config.uri, offending),
                "leaks": capped(matches),
                "leakCounts": _leak_counts(matches, offending),
            }
    if made is not None:
        store.put_bytes(shard_key, pack_shard(made.images, manifest_digest(manifest), made.masks))
        store.put_json(manifest_key, manifest)
    summary = _synthetic_summary(manifest, manifest_key, shard_key)
    if reference is not None:
        summary["leaks"] = capped(matches)
        summary["leakCounts"] = _leak_counts(matches, offending)
    return summary


def _existing_or_new(
    config: SyntheticConfig,
    pool: TrainingPool,
    store: Store,
    dataset: str,
    digest: str,
    size: int,
    channels: int,
    base_dir: Path | None,
    manifest_key: str,
    shard_key: str,
) -> tuple[dict[str, Any], SyntheticSet | None]:
    """The manifest of the set published for this config (and None), or a new set's manifest
    and the set itself, not yet published."""
    if store.exists(manifest_key) and store.exists(shard_key):
        found = store.get_json(manifest_key)
        if found.get("config") == config.to_json_dict():
            return found, None
    made = get_source(config.kind).generate(
        config,
        pool,
        image_size=size,
        channels=channels,
        base_dir=str(base_dir) if base_dir else None,
    )
    masks = made.masks
    manifest = {
        "source": config.name,
        "config": config.to_json_dict(),
        "dataset": dataset,
        "splitDigest": digest,
        "counts": made.counts(),
        "items": [
            {**record, "hasMask": masks is not None and bool(masks[i].any())}
            for i, record in enumerate(made.records)
        ],
    }
    return manifest, made


def _leak_counts(matches: list[dict[str, Any]], offending: list) -> dict[str, int]:
    """Matches with test and with training images, and how many of them leak test images
    (`refusing`: the ones that refuse the source under policy refuse)."""
    counts = {against: sum(1 for m in matches if m["against"] == against)
              for against in ("test", "training")}
    return {**counts, "refusing": len(offending)}


def _synthetic_summary(manifest: dict, manifest_key: str, shard_key: str) -> dict[str, Any]:
    return {
        "manifestKey": manifest_key,
        "shardKey": shard_key,
        "digest": manifest_digest(manifest),
        "counts": manifest["counts"],
    }


def _training_pool(manifest: dict[str, Any], shard: Shard) -> TrainingPool:
    """The training split (train + val roles) as arrays; test images only as sha256 to refuse."""
    items = manifest["items"]
    classes = manifest["classes"]
    train = [i for i, item in enumerate(items) if item["role"] != "test"]
    return TrainingPool(
        classes=classes,
        good_class=manifest["goodClass"],
        images=shard.images[train],
        labels=np.array([classes.index(items[i]["label"]) for i in train], dtype=np.int64),
        keys=[items[i]["key"] for i in train],
        sha256=[items[i]["sha256"] for i in train],
        test_sha256=frozenset(item["sha256"] for item in items if item["role"] == "test"),
        masks=None if shard.masks is None else shard.masks[train],
    )


def _decode_masks(
    source: Store, items: list[dict[str, Any]], size: int, *, threads: int
) -> np.ndarray | None:
    """Every item's mask, uint8 [N, S, S], all zero where it has none; None when none has one."""
    masked = [i for i, item in enumerate(items) if item.get("maskKey")]
    if not masked:
        return None

    def decode(data: bytes, name: str) -> np.ndarray:
        return decode_mask(data, size=size, name=name)

    masks = np.zeros((len(items), size, size), dtype=np.uint8)
    masks[masked] = decode_all(
        source, [items[i]["maskKey"] for i in masked], decode, threads=threads
    )
    return masks


def _decoder(channels: int, size: int):
    def decode(data: bytes, name: str) -> np.ndarray:
        return decode_image(data, channels=channels, size=size, name=name)

    return decode
