"""Leakage check: exact (sha256) and near-duplicate (perceptual hash) matches between images.

Pure given arrays: the split unit hands over the frozen split's shard images with their
manifest items, and each synthetic set as it is made; this module says which images match.

Two images are near duplicates when the Hamming distance between their 64-bit perceptual hashes
(``imagehash.phash`` on the shard images) is at most ``leakage.maxHashDistance``; identical
file bytes (sha256) always match. The reference side is hashed in all eight flips and quarter
turns, and the smallest distance counts: training augments with exactly those (flips and
``rotate90``), so a mirrored test image in a training set is the test image itself.

What is checked (DESIGN.md §3 invariants; issue "Integrity and fidelity"):

- training vs test images of the frozen split (reported: the split is the data, nothing can be
  refused, but a reader must know the test split is not as clean as it looks);
- every synthetic image vs every test image (a source with such a match is refused under the
  ``refuse`` policy) and vs every training image (reported).

A synthetic image that matches a test image only because that test image already has a
near duplicate among the training images is recorded with ``nearTraining`` and is not a
reason to refuse: the real arm trains on that duplicate too, so the synthetic image brings no
test information the real arm lacks (and built-in generators, which paste onto training images,
would otherwise be refused for the split's own duplicates). Identical bytes always count.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import imagehash
import numpy as np
from PIL import Image

#: How images are compared, in the words written into the split result and the report.
METHOD = (
    "exact: sha256 of the file bytes; near: imagehash.phash (64 bits) of the decoded shard "
    "images, Hamming distance at most maxHashDistance, smallest over the 8 flips/quarter turns"
)
#: Matches kept per list in results and reports (the counts are always complete).
MAX_LISTED = 200
#: Rows of the distance matrix computed at once (bounds memory: rows × columns × 8 bytes).
_CHUNK = 1024


def phash64(images: np.ndarray) -> np.ndarray:
    """Perceptual hashes of uint8 ``[N, C, S, S]`` images as uint64 ``[N]`` (imagehash.phash)."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images: expected uint8 [N, C, S, S], got {images.dtype} {images.shape}")
    out = np.zeros(len(images), dtype=np.uint64)
    for i, image in enumerate(images):
        out[i] = _pack(imagehash.phash(_to_pil(image)).hash)
    return out


def dihedral_phash64(images: np.ndarray) -> np.ndarray:
    """Hashes of every image in its 8 flips and quarter turns: uint64 ``[8, N]``."""
    variants = []
    for turns in range(4):
        turned = np.rot90(images, turns, axes=(2, 3))
        variants += [turned, turned[..., ::-1]]
    return np.stack([phash64(np.ascontiguousarray(v)) for v in variants])


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distances between every uint64 hash of `a` and of `b`: uint8 ``[len(a), len(b)]``.

    One XOR and a popcount per pair; fast enough for thousands × thousands.
    """
    return np.bitwise_count(a[:, None] ^ b[None, :]).astype(np.uint8)


@dataclass(frozen=True)
class Match:
    """One near-duplicate (or identical) pair: indices into the query and reference sets."""

    query: int
    reference: int
    distance: int
    exact: bool


def find_matches(
    query: np.ndarray,
    reference: np.ndarray,
    max_distance: int,
    *,
    query_sha256: Sequence[str] = (),
    reference_sha256: Sequence[str] = (),
) -> list[Match]:
    """Every (query, reference) pair within `max_distance` bits, or with identical sha256.

    `query` is uint64 ``[N]``; `reference` is uint64 ``[M]`` or ``[K, M]`` (K variants of each
    reference image, e.g. its flips; the smallest distance counts). Sorted by distance, then
    indices. Sha256 lists are optional; when both are given, identical bytes always match.
    """
    if not 0 <= max_distance <= 64:
        raise ValueError(f"max_distance: must be in 0..64, got {max_distance}")
    variants = reference[None] if reference.ndim == 1 else reference
    found: dict[tuple[int, int], int] = {}
    for start, distances in _distance_chunks(query, variants):
        rows, cols = np.nonzero(distances <= max_distance)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            found[(start + r, c)] = int(distances[r, c])
    exact: set[tuple[int, int]] = set()
    if query_sha256 and reference_sha256:
        where: dict[str, list[int]] = {}
        for j, digest in enumerate(reference_sha256):
            where.setdefault(digest, []).append(j)
        for i, digest in enumerate(query_sha256):
            for j in where.get(digest, []):
                exact.add((i, j))
                if (i, j) not in found:
                    found[(i, j)] = int(hamming(query[i : i + 1], variants[:, j]).min())
    return sorted(
        (Match(i, j, d, (i, j) in exact) for (i, j), d in found.items()),
        key=lambda m: (m.distance, m.query, m.reference),
    )


def _distance_chunks(
    query: np.ndarray, variants: np.ndarray
) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, smallest distance over the variants) for blocks of query rows."""
    for start in range(0, len(query), _CHUNK):
        block = query[start : start + _CHUNK]
        smallest = np.full((len(block), variants.shape[1]), 255, dtype=np.uint8)
        for variant in variants:
            np.minimum(smallest, hamming(block, variant), out=smallest)
        yield start, smallest


class SplitReference:
    """The frozen split's images, hashed once, to check the split and synthetic sets against.

    `items` are the manifest items (key, label, sha256, role), in the order of `images`.
    """

    def __init__(self, items: Sequence[Mapping[str, Any]], images: np.ndarray) -> None:
        if len(items) != len(images):
            raise ValueError(f"items: {len(items)} manifest items for {len(images)} images")
        self.items = list(items)
        roles = np.array([item["role"] for item in self.items])
        self.test = np.flatnonzero(roles == "test")
        self.training = np.flatnonzero(roles != "test")
        self.sha256 = [item["sha256"] for item in self.items]
        self.hashes = phash64(images)
        # Only the references need the eight variants; queries are hashed as they are.
        self.test_hashes = dihedral_phash64(images[self.test])
        self.training_hashes = dihedral_phash64(images[self.training])
        self._pairs: dict[int, list[dict[str, Any]]] = {}
        self._near_training: dict[int, dict[int, str]] = {}

    def train_test(self, max_distance: int) -> list[dict[str, Any]]:
        """Training images that are near duplicates of (or identical to) test images."""
        if max_distance in self._pairs:
            return self._pairs[max_distance]
        matches = find_matches(
            self.hashes[self.training], self.test_hashes, max_distance,
            query_sha256=[self.sha256[i] for i in self.training],
            reference_sha256=[self.sha256[i] for i in self.test],
        )
        near = {}
        records = []
        for m in matches:
            train, test = self.items[self.training[m.query]], self.items[self.test[m.reference]]
            near.setdefault(int(self.test[m.reference]), train["key"])
            records.append({
                "train": train["key"], "trainLabel": train["label"],
                "test": test["key"], "testLabel": test["label"],
                "distance": m.distance, "exact": m.exact,
            })
        self._pairs[max_distance], self._near_training[max_distance] = records, near
        return records

    def screen(
        self,
        images: np.ndarray,
        records: Sequence[Mapping[str, Any]],
        max_distance: int,
    ) -> list[dict[str, Any]]:
        """Matches of synthetic images (uint8 ``[M, C, S, S]`` with their manifest records)
        against the test images and the training images of the split.

        Each match names the synthetic image (``synthetic``: its origin, ``label``), the real
        image (``against``: test or training, ``real``, ``realLabel``), the ``distance`` and
        whether the bytes are ``exact``ly the same; a test match whose test image already has a
        training near duplicate names it in ``nearTraining``.
        """
        self.train_test(max_distance)
        near_training = self._near_training[max_distance]
        hashes = phash64(images)
        sha = [str(r.get("sha256", "")) for r in records]
        out = []
        for against, rows, variants in (
            ("test", self.test, self.test_hashes),
            ("training", self.training, self.training_hashes),
        ):
            for m in find_matches(
                hashes, variants, max_distance,
                query_sha256=sha, reference_sha256=[self.sha256[i] for i in rows],
            ):
                real_index = int(rows[m.reference])
                real = self.items[real_index]
                record = records[m.query]
                match = {
                    "synthetic": record.get("origin", f"#{m.query}"),
                    "index": m.query,
                    "label": record.get("label"),
                    "against": against,
                    "real": real["key"],
                    "realLabel": real["label"],
                    "distance": m.distance,
                    "exact": m.exact,
                }
                if against == "test":
                    match["nearTraining"] = near_training.get(real_index)
                out.append(match)
        return out


def refusing(matches: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The matches that make a source leak test images: identical bytes, or a near duplicate
    of a test image that has no near duplicate among the training images."""
    return [
        m for m in matches
        if m["against"] == "test" and (m["exact"] or not m.get("nearTraining"))
    ]


def refusal_message(source: str, where: str | None, matches: Sequence[Mapping[str, Any]]) -> str:
    """The error of a refused source: every offending file (up to 10), its test image, distance."""
    shown = [
        f"{m['synthetic']} ~ test image {m['real']} (distance {m['distance']}"
        + (", identical bytes" if m["exact"] else "") + ")"
        for m in matches[:10]
    ]
    more = f" (and {len(matches) - 10} more)" if len(matches) > 10 else ""
    origin = f" ({where})" if where else ""
    return (
        f"synthetic source {source!r}{origin} refused by the leakage check (policy refuse): "
        f"{len(matches)} image(s) match the frozen test split: " + "; ".join(shown) + more
        + ". Remove them from the source, or set leakage.policy: flag to train and report."
    )


def capped(matches: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The first MAX_LISTED matches (closest first): what results and reports list."""
    return list(matches[:MAX_LISTED])


def _pack(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(bits.flatten()).tobytes(), "big")


def _to_pil(image: np.ndarray) -> Image.Image:
    """A PIL image from one uint8 ``[C, S, S]`` array (C = 1 grey, 3 RGB)."""
    if image.shape[0] == 1:
        return Image.fromarray(image[0])
    return Image.fromarray(np.ascontiguousarray(np.moveaxis(image, 0, -1)))
