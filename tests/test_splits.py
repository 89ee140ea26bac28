"""Frozen split: stratification, determinism, byte-identical images kept together, digest."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from scarce.trainer.config import SplitConfig
from scarce.trainer.splits import (
    SourceImage,
    SplitIntegrityError,
    build_manifest,
    few_shot_indices,
    manifest_digest,
    role_counts,
    verify_manifest,
)
from scarce.trainer.synth import placebo_indices

COUNTS = {"good": 50, "crack": 20, "pit": 7}


def images(counts=COUNTS, duplicate_of: dict[str, str] | None = None) -> list[SourceImage]:
    out = []
    for label, n in counts.items():
        for i in range(n):
            key = f"{label}/{i:03d}.png"
            content = (duplicate_of or {}).get(key, key)
            out.append(SourceImage(key, label, hashlib.sha256(content.encode()).hexdigest()))
    return out


def manifest(split: SplitConfig, imgs=None) -> dict:
    return build_manifest(
        dataset="d", format_name="imagefolder", good_class="good", split=split,
        images=imgs if imgs is not None else images(),
    )


def test_split_is_stratified_with_the_requested_fractions():
    counts = role_counts(manifest(SplitConfig(test_fraction=0.3, val_fraction=0.1)))
    for label, n in COUNTS.items():
        assert counts[label]["test"] == max(1, round(n * 0.3))
        assert counts[label]["val"] == max(1, round(n * 0.1))
        assert sum(counts[label].values()) == n


def test_same_seed_same_split_and_digest_regardless_of_input_order():
    split = SplitConfig(split_seed=4)
    shuffled = list(reversed(images()))
    assert manifest_digest(manifest(split)) == manifest_digest(manifest(split, shuffled))


def test_other_seed_gives_other_split():
    a = manifest(SplitConfig(split_seed=0))
    b = manifest(SplitConfig(split_seed=1))
    assert [i["role"] for i in a["items"]] != [i["role"] for i in b["items"]]
    assert manifest_digest(a) != manifest_digest(b)


def test_adding_a_class_does_not_reshuffle_the_others():
    split = SplitConfig(split_seed=2)
    before = {i["key"]: i["role"] for i in manifest(split)["items"]}
    after = {i["key"]: i["role"] for i in
             manifest(split, images({**COUNTS, "scratch": 9}))["items"]}
    assert all(after[key] == role for key, role in before.items())


def test_byte_identical_images_share_a_role_so_test_never_leaks_into_train():
    # Every crack image i >= 10 has the bytes of crack image i - 10.
    dupes = {f"crack/{i:03d}.png": f"crack/{i - 10:03d}.png" for i in range(10, 20)}
    items = {i["key"]: i for i in manifest(SplitConfig(), images(duplicate_of=dupes))["items"]}
    for key, original in dupes.items():
        assert items[key]["role"] == items[original]["role"]
    test_sha = {i["sha256"] for i in items.values() if i["role"] == "test"}
    train_sha = {i["sha256"] for i in items.values() if i["role"] != "test"}
    assert not test_sha & train_sha


def test_same_bytes_with_two_labels_is_refused():
    imgs = [*images(), SourceImage("pit/x.png", "pit", images()[0].sha256)]
    with pytest.raises(ValueError, match=r"pit/x.png has the same bytes .* labelled 'pit'"):
        manifest(SplitConfig(), imgs)


def test_too_small_class_is_named():
    with pytest.raises(ValueError, match=r"class 'pit' has 1 distinct images \(or groups"):
        manifest(SplitConfig(test_fraction=0.5), images({"good": 10, "pit": 1}))


def test_missing_good_class_is_named():
    with pytest.raises(ValueError, match="good class 'good' not found"):
        manifest(SplitConfig(), images({"crack": 10, "pit": 10}))


def test_manifest_verification_refuses_any_change():
    m = manifest(SplitConfig())
    digest = manifest_digest(m)
    verify_manifest(m, digest, where="mem://m")
    m["items"][0]["role"] = "train" if m["items"][0]["role"] == "test" else "test"
    with pytest.raises(SplitIntegrityError) as error:
        verify_manifest(m, digest, where="mem://m")
    assert "mem://m" in str(error.value)
    assert digest in str(error.value) and manifest_digest(m) in str(error.value)


def test_manifest_holds_no_source_location():
    m = manifest(SplitConfig())
    assert "source" not in m and all(set(i) == {"key", "label", "role", "sha256", "maskKey"}
                                     for i in m["items"])


def test_few_shot_subsets_are_nested_and_have_k_per_class():
    labels = np.repeat(np.arange(3), [30, 12, 6])
    pool = np.arange(len(labels))
    previous: set[int] = set()
    for k in (2, 3, 5):
        chosen = few_shot_indices(labels, pool, k, seed=3, num_classes=3)
        assert np.bincount(labels[chosen], minlength=3).tolist() == [k, k, k]
        assert previous <= set(chosen.tolist())
        previous = set(chosen.tolist())
    other_seed = few_shot_indices(labels, pool, 5, seed=4, num_classes=3)
    assert set(other_seed.tolist()) != previous


def test_placebo_duplicates_exactly_the_synthetic_counts_class_by_class():
    classes = ["good", "crack", "pit"]
    labels = np.repeat(np.arange(3), [40, 10, 3])
    pool = np.arange(len(labels))
    counts = {"crack": 25, "pit": 7}
    chosen = placebo_indices(labels, pool, counts, classes, seed=1)
    assert np.bincount(labels[chosen], minlength=3).tolist() == [0, 25, 7]
    # Duplicates are spread evenly: every pit image is used 2 or 3 times for 7 copies of 3.
    uses = np.bincount(chosen[labels[chosen] == 2], minlength=len(labels))[-3:]
    assert sorted(uses.tolist()) == [2, 2, 3]
    assert np.array_equal(chosen, placebo_indices(labels, pool, counts, classes, seed=1))


def test_placebo_only_duplicates_images_of_the_pool():
    classes = ["good", "pit"]
    labels = np.array([0, 0, 1, 1, 1])
    pool = np.array([0, 1, 2])  # images 3 and 4 are not in the training pool
    chosen = placebo_indices(labels, pool, {"pit": 4}, classes, seed=0)
    assert set(chosen.tolist()) == {2}


def _hashes(base: int) -> tuple[int, ...]:
    return (base, *(base ^ (1 << (10 + v)) for v in range(7)))


def test_near_duplicates_are_kept_in_one_role():
    # Five "exposures" of each of 8 crack tiles: perceptual hashes 1 bit apart within a tile.
    rng = np.random.default_rng(0)  # random 64-bit hashes are ~32 bits apart
    bases = [int(b) for b in rng.integers(0, 2**63, size=28, dtype=np.int64)]
    imgs = [SourceImage(f"good/{i}.png", "good", f"g{i}", phash=_hashes(bases[i]))
            for i in range(20)]
    for tile in range(8):
        base = bases[20 + tile]
        imgs += [SourceImage(f"crack/t{tile}e{e}.png", "crack", f"c{tile}{e}",
                             phash=_hashes(base ^ (1 << e))) for e in range(5)]
    m = build_manifest(dataset="d", format_name="imagefolder", good_class="good",
                       split=SplitConfig(test_fraction=0.3), images=imgs, near_distance=4)
    roles: dict[str, set[str]] = {}
    for item in m["items"]:
        if item["label"] == "crack":
            roles.setdefault(item["key"].split("e")[0], set()).add(item["role"])
    assert all(len(r) == 1 for r in roles.values())  # every tile wholly in one role
    assert sum(1 for r in roles.values() if r == {"test"}) >= 1
    assert m["nearDuplicateDistance"] == 4
    without = build_manifest(dataset="d", format_name="imagefolder", good_class="good",
                             split=SplitConfig(test_fraction=0.3), images=imgs)
    mixed = {}
    for item in without["items"]:
        if item["label"] == "crack":
            mixed.setdefault(item["key"].split("e")[0], set()).add(item["role"])
    assert any(len(r) > 1 for r in mixed.values())  # without grouping, tiles get split up
