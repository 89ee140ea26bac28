"""Packed uint8 shards: images decoded once, at the model's size, stored beside the manifest.

No unit decodes an image per epoch: the split unit decodes every image once into a
``[N, C, S, S]`` uint8 array saved as an ``.npz`` next to the manifest, and training units
load that one object. Each shard carries the digest of the manifest it was built from and is
refused when that does not match the unit's split digest.

A shard may also hold ``masks``, uint8 ``[N, S, S]`` (0 or 255, all zero for an image without
one), in the same order; the built-in generators cut real defect regions along them. Shards
written without masks still load (``Shard.masks`` is then ``None``).
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from scarce.trainer.splits import SplitIntegrityError
from scarce.trainer.store import Store


@dataclass(frozen=True)
class Shard:
    """A loaded shard: images in manifest order and the manifest digest they belong to."""

    images: np.ndarray  # uint8 [N, C, S, S]
    manifest_digest: str
    masks: np.ndarray | None = None  # uint8 [N, S, S], 0/255; None when the shard has none


def pack_shard(images: np.ndarray, manifest_digest: str, masks: np.ndarray | None = None) -> bytes:
    """Serialise a shard (uncompressed: loading is a memcpy, and noise compresses poorly)."""
    arrays = {"images": images, "manifest_digest": np.array(manifest_digest)}
    if masks is not None:
        if masks.dtype != np.uint8 or masks.shape != (len(images), *images.shape[2:]):
            raise ValueError(
                f"masks: must be uint8 {(len(images), *images.shape[2:])} to match the images, "
                f"got {masks.dtype} {masks.shape}"
            )
        arrays["masks"] = masks
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def unpack_shard(data: bytes, *, expected_digest: str, where: str, count: int) -> Shard:
    """Load a shard and check it belongs to the expected manifest and has `count` images."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            images = npz["images"]
            found = str(npz["manifest_digest"])
            masks = npz["masks"] if "masks" in npz.files else None
    except (ValueError, KeyError, OSError) as error:
        raise SplitIntegrityError(f"shard {where} is unreadable: {error}") from error
    if found != expected_digest:
        raise SplitIntegrityError(
            f"shard {where} belongs to manifest {found}, expected {expected_digest}; "
            "refusing to train on it"
        )
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != count:
        raise SplitIntegrityError(
            f"shard {where} holds {images.shape} {images.dtype}, expected {count} uint8 images"
        )
    if masks is not None and (masks.dtype != np.uint8 or masks.shape != (count, *images.shape[2:])):
        raise SplitIntegrityError(
            f"shard {where} holds masks {masks.shape} {masks.dtype}, expected "
            f"{(count, *images.shape[2:])} uint8 to match its images"
        )
    return Shard(images=images, manifest_digest=found, masks=masks)


#: Shards kept in memory by one process, so packed seeds (several units in one process) and
#: long-lived local workers read and verify a shard once, not once per unit. Four covers a
#: split shard plus the synthetic sets of one dataset.
_CACHE_SIZE = 4
_cache: OrderedDict[tuple[str, str, str, str, int], Shard] = OrderedDict()


def load_shard(store: Store, key: str, *, expected_digest: str, count: int) -> Shard:
    """Read, verify and unpack a shard, reusing the copy this process already verified.

    The cache key includes the sha256 the store records for the object, so a rewritten object
    is read again. Cached arrays are read-only: a unit that changed them in place would change
    the next unit's data, which would break "packed seeds equal separate units".
    """
    where = f"{store.uri}/{key}"
    recorded = store.recorded_sha256(key) or ""
    cache_key = (store.uri, key, recorded, expected_digest, count)
    if recorded and cache_key in _cache:
        _cache.move_to_end(cache_key)
        return _cache[cache_key]
    shard = unpack_shard(
        store.get_bytes(key), expected_digest=expected_digest, where=where, count=count
    )
    for array in (shard.images, shard.masks):
        if array is not None:
            array.flags.writeable = False
    if recorded:
        _cache[cache_key] = shard
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return shard


def decode_all(
    store: Store,
    keys: Sequence[str],
    decode: Callable[[bytes, str], np.ndarray],
    *,
    threads: int = 4,
) -> np.ndarray:
    """Read and decode every key (Pillow releases the GIL while decoding, so threads help)."""

    def one(key: str) -> np.ndarray:
        return decode(store.get_bytes(key, verify=False), key)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        arrays = list(pool.map(one, keys))
    return np.stack(arrays)
