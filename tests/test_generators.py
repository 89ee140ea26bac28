"""Built-in synthetic generators (transplant, cutpaste, perlin) and the masks they cut along.

Generator tests run on a small in-memory training pool whose classes are easy to tell apart by
intensity: good pixels lie in [60, 100], scratches are dark (15), pits bright (230). The
split-unit tests write a real imagefolder dataset with masks and run `run_split_unit`, and prove
that no test image reaches a generator by planting a marker in the test rows of the split shard.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from scarce.trainer.config import (
    SYNTHETIC_KINDS,
    DatasetConfig,
    ModelConfig,
    SplitConfig,
    SyntheticConfig,
)
from scarce.trainer.datasets import encode_png
from scarce.trainer.prepare import run_split_unit
from scarce.trainer.shards import pack_shard, unpack_shard
from scarce.trainer.splits import SplitIntegrityError
from scarce.trainer.store import open_store
from scarce.trainer.synth import (
    SyntheticSourceError,
    TrainingPool,
    get_source,
    registered_kinds,
)
from scarce.trainer.unit import StorageConfig, WorkUnit

GENERATORS = ("transplant", "cutpaste", "perlin")
SIZE = 32
DARK, BRIGHT = 15, 230


def draw_sample(
    rng: np.random.Generator, label: str, channels: int, size: int = SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """A ``[C, S, S]`` image in the good band and its 0/255 mask: none for good, a dark
    scratch (a 2x12 line), a dark dent (a 5x5 square) or a bright pit (a disc)."""
    image = rng.integers(60, 101, size=(channels, size, size)).astype(np.uint8)
    mask = np.zeros((size, size), dtype=bool)
    if label == "scratch":
        row, col = rng.integers(4, size - 4), rng.integers(2, size - 14)
        mask[row : row + 2, col : col + 12] = True
    elif label == "dent":
        top, left = rng.integers(2, size - 8, size=2)
        mask[top : top + 5, left : left + 5] = True
    elif label == "pit":
        cy, cx = rng.integers(5, size - 5, size=2)
        yy, xx = np.ogrid[:size, :size]
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= 9
    image[:, mask] = BRIGHT if label == "pit" else DARK
    return image, np.where(mask, 255, 0).astype(np.uint8)


def make_pool(
    channels: int = 1,
    *,
    counts: dict[str, int] | None = None,
    with_masks: bool = True,
) -> TrainingPool:
    counts = counts if counts is not None else {"good": 6, "pit": 4, "scratch": 5}
    rng = np.random.default_rng(123)
    images, masks, labels, keys = [], [], [], []
    classes = sorted(counts)
    for index, label in enumerate(classes):
        for j in range(counts[label]):
            image, mask = draw_sample(rng, label, channels)
            images.append(image)
            masks.append(mask)
            labels.append(index)
            keys.append(f"{label}/{j:03d}.png")
    return TrainingPool(
        classes=classes,
        good_class="good",
        images=np.stack(images) if images else np.zeros((0, channels, SIZE, SIZE), np.uint8),
        labels=np.array(labels, dtype=np.int64),
        keys=keys,
        sha256=[hashlib.sha256(im.tobytes()).hexdigest() for im in images],
        masks=np.stack(masks) if with_masks else None,
    )


def generate(kind: str, pool: TrainingPool, *, per_class: int = 5, seed: int = 0, channels=None):
    config = SyntheticConfig(name=f"gen-{kind}", kind=kind, per_class=per_class, seed=seed)
    channels = channels or pool.images.shape[1]
    return get_source(kind).generate(config, pool, image_size=SIZE, channels=channels)


def test_every_builtin_kind_is_registered_and_accepted_by_the_config() -> None:
    assert set(registered_kinds()) == set(SYNTHETIC_KINDS)
    for kind in GENERATORS:
        assert SyntheticConfig(name="x", kind=kind, per_class=1).uri is None  # needs no uri


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", GENERATORS)
def test_exactly_per_class_images_with_masks_for_every_defect_class(
    kind: str, channels: int
) -> None:
    pool = make_pool(channels)
    out = generate(kind, pool, per_class=7)

    assert out.counts() == {"pit": 7, "scratch": 7}  # nothing for the good class
    assert out.images.shape == (14, channels, SIZE, SIZE) and out.images.dtype == np.uint8
    assert out.masks is not None
    assert out.masks.shape == (14, SIZE, SIZE) and out.masks.dtype == np.uint8
    assert set(np.unique(out.masks)) <= {0, 255}
    assert all(mask.any() for mask in out.masks)
    for image, label, record in zip(out.images, out.labels, out.records, strict=True):
        good_key, defect_key = record["origin"].split(" + ")
        assert good_key.startswith("good/") and defect_key.startswith(f"{label}/")
        assert record["label"] == label and record["hasMask"] is True
        assert record["sha256"] == hashlib.sha256(image.tobytes()).hexdigest()


@pytest.mark.parametrize("kind", GENERATORS)
def test_same_seed_gives_byte_identical_output_and_another_seed_another(kind: str) -> None:
    pool = make_pool(3)
    first, again, other = (generate(kind, pool, seed=s) for s in (4, 4, 5))

    assert first.images.tobytes() == again.images.tobytes()
    assert first.masks.tobytes() == again.masks.tobytes()
    assert first.records == again.records
    assert not np.array_equal(first.images, other.images)


@pytest.mark.parametrize("kind", GENERATORS)
def test_pixels_changed_on_the_good_image_lie_inside_the_mask(kind: str) -> None:
    pool = make_pool(1)
    out = generate(kind, pool, per_class=8)
    index = {key: i for i, key in enumerate(pool.keys)}
    for image, mask, record in zip(out.images, out.masks, out.records, strict=True):
        base = pool.images[index[record["origin"].split(" + ")[0]]]
        change = np.abs(image.astype(int) - base.astype(int)).sum(axis=0)
        # transplant feathers its seam: allow the blur's tail, three pixels around the mask.
        near = ndimage.binary_dilation(mask > 0, iterations=3)
        assert change.sum() > 0
        assert change[~near].sum() <= 0.02 * change.sum(), record


@pytest.mark.parametrize("kind", ["transplant", "cutpaste"])
def test_pasted_region_carries_the_defect_of_its_own_class(kind: str) -> None:
    # Good pixels lie in [60, 100]; only scratches are darker, only pits brighter.
    out = generate(kind, make_pool(1), per_class=6)
    for image, mask, label in zip(out.images, out.masks, out.labels, strict=True):
        inside = image[0][mask > 0]
        if label == "scratch":
            assert inside.min() < 55
        else:
            assert inside.max() > 140


@pytest.mark.parametrize("kind", GENERATORS)
def test_class_without_training_images_is_an_error_naming_it(kind: str) -> None:
    pool = make_pool(counts={"good": 4, "pit": 0, "scratch": 3})
    with pytest.raises(SyntheticSourceError, match=r"class 'pit' has no training images"):
        generate(kind, pool)


@pytest.mark.parametrize("kind", GENERATORS)
def test_pool_without_good_images_is_an_error_naming_the_good_class(kind: str) -> None:
    pool = make_pool(counts={"good": 0, "pit": 2, "scratch": 3})
    with pytest.raises(SyntheticSourceError, match=r"good class 'good' has no training images"):
        generate(kind, pool)


def test_transplant_refuses_a_class_without_masks_naming_it() -> None:
    with pytest.raises(SyntheticSourceError, match=r"class 'pit' has no training image with a"):
        generate("transplant", make_pool(with_masks=False))


@pytest.mark.parametrize("kind", ["cutpaste", "perlin"])
def test_cutpaste_and_perlin_work_without_masks(kind: str) -> None:
    out = generate(kind, make_pool(with_masks=False), per_class=3)
    assert out.counts() == {"pit": 3, "scratch": 3}
    assert all(mask.any() for mask in out.masks)


def test_shard_keeps_masks_and_still_reads_shards_without_them() -> None:
    images = np.zeros((3, 1, 8, 8), np.uint8)
    masks = np.zeros((3, 8, 8), np.uint8)
    masks[1, 2:4, 2:4] = 255
    shard = unpack_shard(
        pack_shard(images, "d", masks=masks), expected_digest="d", where="s", count=3
    )
    assert np.array_equal(shard.masks, masks)
    assert (
        unpack_shard(pack_shard(images, "d"), expected_digest="d", where="s", count=3).masks is None
    )
    with pytest.raises(ValueError, match=r"masks: must be uint8 \(3, 8, 8\)"):
        pack_shard(images, "d", masks=masks[:2])


def test_shard_with_masks_of_the_wrong_shape_is_refused() -> None:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        images=np.zeros((2, 1, 8, 8), np.uint8),
        manifest_digest=np.array("d"),
        masks=np.zeros((2, 4, 4), np.uint8),
    )
    with pytest.raises(SplitIntegrityError, match=r"shard s holds masks \(2, 4, 4\)"):
        unpack_shard(buffer.getvalue(), expected_digest="d", where="s", count=2)


# --- through the split unit, on an imagefolder dataset with masks -----------------------------


def write_imagefolder(root: Path) -> None:
    """good/ 8 images, dent/ and scratch/ 8 each with <stem>_mask.png, grayscale PNG files."""
    rng = np.random.default_rng(7)
    for label in ("good", "dent", "scratch"):
        folder = root / label
        folder.mkdir(parents=True)
        for j in range(8):
            image, mask = draw_sample(rng, label, 1)
            (folder / f"{j:03d}.png").write_bytes(encode_png(image))
            if label != "good":
                (folder / f"{j:03d}_mask.png").write_bytes(encode_png(mask))


def split_unit(source: Path, store_dir: Path) -> WorkUnit:
    store_dir.mkdir(exist_ok=True)
    return WorkUnit(
        stage="split",
        benchmark="gen",
        storage=StorageConfig(uri=str(store_dir)),
        datasets=[
            DatasetConfig(
                name="surf",
                format="imagefolder",
                source=str(source),
                hardest_class="dent",
                split=SplitConfig(test_fraction=0.3),
            )
        ],
        synthetic=[SyntheticConfig(name=k, kind=k, per_class=6, seed=1) for k in GENERATORS],
        model=ModelConfig(backbone="test_resnet", image_size=SIZE, channels=1),
    )


def synthetic_shards(store, result: dict) -> dict[str, object]:
    shards = {}
    for name, summary in result["synthetic"].items():
        manifest = store.get_json(summary["manifestKey"])
        shards[name] = unpack_shard(
            store.get_bytes(summary["shardKey"]),
            expected_digest=summary["digest"],
            where=summary["shardKey"],
            count=len(manifest["items"]),
        )
    return shards


def test_split_unit_packs_masks_beside_images_and_into_every_synthetic_set(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "data")
    store = open_store(tmp_path / "store")
    result = run_split_unit(split_unit(tmp_path / "data", tmp_path / "store"), store, base_dir=None)

    manifest = store.get_json(result["manifestKey"])
    split = unpack_shard(
        store.get_bytes(result["shardKey"]),
        expected_digest=result["splitDigest"],
        where="split",
        count=len(manifest["items"]),
    )
    assert split.masks is not None
    for item, mask in zip(manifest["items"], split.masks, strict=True):
        assert mask.any() == (item["maskKey"] is not None)
    for name, shard in synthetic_shards(store, result).items():
        items = store.get_json(result["synthetic"][name]["manifestKey"])["items"]
        assert result["synthetic"][name]["counts"] == {"dent": 6, "scratch": 6}
        assert shard.masks is not None and all(m.any() for m in shard.masks)
        assert all(item["hasMask"] is True for item in items)


def test_generators_never_see_a_test_image_proved_by_a_planted_marker(tmp_path: Path) -> None:
    """Test rows of the split shard, the only pixels a split unit reads, are overwritten with a
    marker (a 0/255 checkerboard, impossible in this dataset, whose pixels lie in [15, 100]).
    Every synthetic set must come out byte-identical and free of the marker's 255."""
    write_imagefolder(tmp_path / "data")
    store = open_store(tmp_path / "store")
    unit = split_unit(tmp_path / "data", tmp_path / "store")

    first = run_split_unit(unit, store, base_dir=None)
    clean = synthetic_shards(store, first)
    for key in store.list("synthetic/"):
        store.delete(key)

    manifest = store.get_json(first["manifestKey"])
    test_rows = [i for i, item in enumerate(manifest["items"]) if item["role"] == "test"]
    digest, shard_key = first["splitDigest"], first["shardKey"]
    shard = unpack_shard(
        store.get_bytes(shard_key),
        expected_digest=digest,
        where=shard_key,
        count=len(manifest["items"]),
    )
    assert test_rows and shard.images.max() < 255
    marked = shard.images.copy()
    marked[test_rows] = (np.indices((SIZE, SIZE)).sum(axis=0) % 2 * 255).astype(np.uint8)
    store.put_bytes(shard_key, pack_shard(marked, digest, masks=shard.masks))

    planted = synthetic_shards(store, run_split_unit(unit, store, base_dir=None))
    for name in GENERATORS:
        assert planted[name].images.tobytes() == clean[name].images.tobytes(), name
        assert planted[name].masks.tobytes() == clean[name].masks.tobytes(), name
        assert planted[name].images.max() < 255, name
