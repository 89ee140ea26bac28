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

from scarce.trainer.config import DatasetConfig, SyntheticConfig
from scarce.trainer.datasets import get_format, scan_dataset
from scarce.trainer.datasets.images import decode_image, decode_mask
from scarce.trainer.shards import decode_all, pack_shard, unpack_shard
from scarce.trainer.splits import SourceImage, build_manifest, manifest_digest, role_counts
from scarce.trainer.store import Store, open_store
from scarce.trainer.synth import TrainingPool, get_source
from scarce.trainer.unit import WorkUnit, shard_name, split_prefix, synthetic_prefix

log = logging.getLogger(__name__)


def run_split_unit(unit: WorkUnit, store: Store, *, base_dir: Path | None) -> dict[str, Any]:
    """Freeze the split of the unit's dataset and prepare its synthetic sets; return the result."""
    started = time.perf_counter()
    dataset = unit.dataset
    source = open_store(dataset.source, base_dir=base_dir)
    manifest = freeze_split(dataset, source)
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

    synthetic = {}
    if unit.synthetic:
        pool = _training_pool(store, manifest, digest, shard_key)
        for config in unit.synthetic:
            synthetic[config.name] = prepare_synthetic(
                config, pool, store, dataset.name, digest, size, channels, base_dir
            )
    return {
        "splitDigest": digest,
        "manifestKey": f"{prefix}/manifest.json",
        "shardKey": shard_key,
        "classes": manifest["classes"],
        "goodClass": manifest["goodClass"],
        "counts": role_counts(manifest),
        "synthetic": synthetic,
        "seconds": round(time.perf_counter() - started, 3),
    }


def freeze_split(dataset: DatasetConfig, source: Store) -> dict[str, Any]:
    """Scan the source, hash every image and build the canonical split manifest."""
    fmt = get_format(dataset.format)
    records = scan_dataset(dataset.format, source, dataset.options)
    with ThreadPoolExecutor(max_workers=8) as pool:
        digests = list(pool.map(lambda r: _sha256(source, r.key), records))
    images = [
        SourceImage(key=r.key, label=r.label, sha256=d, mask_key=r.mask_key)
        for r, d in zip(records, digests, strict=True)
    ]
    good_class = dataset.good_class or fmt.default_good_class
    manifest = build_manifest(
        dataset=dataset.name,
        format_name=dataset.format,
        good_class=good_class,
        split=dataset.split,
        images=images,
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
) -> dict[str, Any]:
    """Make (or reuse) one source's synthetic set for this split; return its summary."""
    prefix = synthetic_prefix(config.name, dataset, digest)
    manifest_key = f"{prefix}/manifest.json"
    shard_key = f"{prefix}/{shard_name(size, channels)}"
    if store.exists(manifest_key) and store.exists(shard_key):
        manifest = store.get_json(manifest_key)
        if manifest.get("config") == config.to_json_dict():
            return _synthetic_summary(manifest, manifest_key, shard_key)
    synthetic = get_source(config.kind).generate(
        config,
        pool,
        image_size=size,
        channels=channels,
        base_dir=str(base_dir) if base_dir else None,
    )
    masks = synthetic.masks
    manifest = {
        "source": config.name,
        "config": config.to_json_dict(),
        "dataset": dataset,
        "splitDigest": digest,
        "counts": synthetic.counts(),
        "items": [
            {**record, "hasMask": masks is not None and bool(masks[i].any())}
            for i, record in enumerate(synthetic.records)
        ],
    }
    store.put_bytes(shard_key, pack_shard(synthetic.images, manifest_digest(manifest), masks))
    store.put_json(manifest_key, manifest)
    return _synthetic_summary(manifest, manifest_key, shard_key)


def _synthetic_summary(manifest: dict, manifest_key: str, shard_key: str) -> dict[str, Any]:
    return {
        "manifestKey": manifest_key,
        "shardKey": shard_key,
        "digest": manifest_digest(manifest),
        "counts": manifest["counts"],
    }


def _training_pool(
    store: Store, manifest: dict[str, Any], digest: str, shard_key: str
) -> TrainingPool:
    """The training split (train + val roles) as arrays; test images only as sha256 to refuse."""
    items = manifest["items"]
    shard = unpack_shard(
        store.get_bytes(shard_key), expected_digest=digest, where=shard_key, count=len(items)
    )
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


def _sha256(store: Store, key: str) -> str:
    return hashlib.sha256(store.get_bytes(key, verify=False)).hexdigest()


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
