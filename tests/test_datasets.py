"""Dataset formats, scanning checks and image decoding (scarce.trainer.datasets).

Fixtures are real PNG/JPEG files written with Pillow into tmp_path; the real public datasets
are read, read-only, from ../shared/datasets when they are present.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scarce.trainer.datasets import (
    MAX_PIXELS,
    DatasetError,
    ImageRecord,
    decode_image,
    decode_mask,
    encode_png,
    get_format,
    list_formats,
    scan_dataset,
)
from scarce.trainer.datasets.base import check_key
from scarce.trainer.store import open_store
from tests.test_dataset_formats import make_marble, make_mvtec_ad, make_plantvillage, make_riawelc

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
MAGNETIC_TILE = SHARED / "magnetic-tile"
# The class table of ../shared/datasets/magnetic-tile/SOURCE.md (documented facts of the data).
MAGNETIC_TILE_COUNTS = {
    "Blowhole": 115,
    "Break": 85,
    "Crack": 57,
    "Fray": 32,
    "Free": 952,
    "Uneven": 103,
}


# --- helpers -----------------------------------------------------------------------------------


def _image_bytes(
    fmt: str, size: tuple[int, int] = (24, 16), mode: str = "L", seed: int = 0
) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def _mask_bytes(size: tuple[int, int] = (24, 16)) -> bytes:
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[4:8, 4:12] = 255
    return encode_png(mask)


def _write(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def make_imagefolder(root: Path) -> None:
    """good: 3 images; scratch: 2 masked + 1 unmasked; plus junk that must be ignored."""
    for i in range(2):
        _write(root, f"good/g{i}.png", _image_bytes("PNG", seed=i))
    _write(root, "good/g2.jpg", _image_bytes("JPEG", mode="RGB", seed=2))
    _write(root, "scratch/s0.png", _image_bytes("PNG", seed=3))
    _write(root, "scratch/s0_mask.png", _mask_bytes())
    _write(root, "scratch/S1.JPEG", _image_bytes("JPEG", seed=4))
    _write(root, "scratch/S1_mask.png", _mask_bytes())
    _write(root, "scratch/s2.bmp", _image_bytes("BMP", seed=5))
    # Junk: root files, unknown extensions, hidden files and folders, deeper folders.
    _write(root, "SOURCE.md", b"# source\n")
    _write(root, "MANIFEST.csv", b"key,label\n")
    _write(root, "root_image.png", _image_bytes("PNG", seed=6))
    _write(root, "good/notes.txt", b"not an image\n")
    _write(root, "good/.DS_Store", b"\x00\x01")
    _write(root, ".cache/c0.png", _image_bytes("PNG", seed=7))
    _write(root, "scratch/.hidden.png", _image_bytes("PNG", seed=8))
    _write(root, "scratch/extra/deep.png", _image_bytes("PNG", seed=9))


def make_magnetic_tile(root: Path, counts: dict[str, int] | None = None) -> None:
    """The published layout: MT_<Class>/Imgs/<id>.jpg with <id>.png masks, SOURCE.md at root."""
    counts = counts or {"Blowhole": 2, "Free": 3, "Fray": 1}
    for label, n in counts.items():
        for i in range(n):
            stem = f"exp{i}_num_{1000 + i}"
            _write(root, f"MT_{label}/Imgs/{stem}.jpg", _image_bytes("JPEG", seed=i))
            _write(root, f"MT_{label}/Imgs/{stem}.png", _mask_bytes())
    _write(root, "SOURCE.md", b"# Magnetic Tile\n")
    _write(root, "other/Imgs/x.jpg", _image_bytes("JPEG"))  # not an MT_ folder: ignored


#: One builder per registered format of a dataset holding a single defect class.
SINGLE_CLASS: dict[str, Callable[[Path], None]] = {
    "imagefolder": lambda root: _write(root, "scratch/a.png", _image_bytes("PNG")),
    "magnetic-tile": lambda root: make_magnetic_tile(root, {"Blowhole": 2}),
    "marble": lambda root: make_marble(root, ("crack",)),
    "mvtec-ad": lambda root: make_mvtec_ad(root, {"scratch": 2}),
    "plantvillage": lambda root: _write(
        root, "PlantVillage/Potato___Late_blight/a.JPG", _image_bytes("JPEG")
    ),
    "riawelc": lambda root: make_riawelc(root, ("PO",)),
}


def make_single_class(fmt: str, root: Path) -> None:
    SINGLE_CLASS[fmt](root)


#: One fixture builder per registered format; a test keeps it complete. The builders of the
#: public layouts live in tests/test_dataset_formats.py, next to their own tests.
FIXTURES: dict[str, Callable[[Path], None]] = {
    "imagefolder": make_imagefolder,
    "magnetic-tile": make_magnetic_tile,
    "marble": make_marble,
    "mvtec-ad": make_mvtec_ad,
    "plantvillage": make_plantvillage,
    "riawelc": make_riawelc,
}


class ListingStore:
    """A store stand-in that lists given keys in a given order (scanning reads nothing else)."""

    def __init__(self, keys: list[str]) -> None:
        self.uri = "memory://test"
        self.keys = keys

    def list(self, prefix: str = "") -> list[str]:
        return [k for k in self.keys if k.startswith(prefix)]


# --- registry and common checks ----------------------------------------------------------------


def test_fixtures_cover_every_registered_format() -> None:
    assert sorted(FIXTURES) == list_formats()
    assert sorted(SINGLE_CLASS) == list_formats()


def test_unknown_format_error_lists_supported_formats(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset format 'mvtec'") as info:
        scan_dataset("mvtec", open_store(str(tmp_path)))
    assert f"supported formats: {', '.join(list_formats())}" in str(info.value)
    assert "imagefolder, magnetic-tile" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unknown_option_error_lists_supported_options(tmp_path: Path) -> None:
    make_imagefolder(tmp_path)
    with pytest.raises(DatasetError, match=r"unknown option.*recursive") as info:
        scan_dataset("imagefolder", open_store(str(tmp_path)), {"recursive": True})
    assert "supported options: goodClass, requireGood, root" in str(info.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"requireGood": "yes"}, "option requireGood: must be true or false, got 'yes'"),
        ({"root": 3}, "option root: must be a folder"),
        ({"goodClass": ""}, "option goodClass: must be a class name"),
    ],
)
def test_bad_option_values_are_named(tmp_path: Path, options: dict, message: str) -> None:
    make_imagefolder(tmp_path)
    with pytest.raises(DatasetError, match=message):
        scan_dataset("imagefolder", open_store(str(tmp_path)), options)


@pytest.mark.parametrize("fmt", sorted(FIXTURES))
def test_every_format_scans_its_fixture_sorted(fmt: str, tmp_path: Path) -> None:
    FIXTURES[fmt](tmp_path)
    records = scan_dataset(fmt, open_store(str(tmp_path)))
    assert records == sorted(records, key=lambda r: (r.label, r.key))
    assert get_format(fmt).default_good_class in {r.label for r in records}
    assert all(isinstance(r, ImageRecord) for r in records)


@pytest.mark.parametrize("fmt", sorted(FIXTURES))
def test_every_format_refuses_a_single_class_unless_a_delivery(fmt: str, tmp_path: Path) -> None:
    make_single_class(fmt, tmp_path)
    store = open_store(str(tmp_path))
    with pytest.raises(DatasetError, match=r"at least one defect class, found 1 class") as info:
        scan_dataset(fmt, store)
    assert str(tmp_path) in str(info.value)
    # A synthetic delivery holds defect classes only.
    assert len({r.label for r in scan_dataset(fmt, store, {"requireGood": False})}) == 1


def test_good_class_option_must_name_a_class(tmp_path: Path) -> None:
    make_imagefolder(tmp_path)
    store = open_store(str(tmp_path))
    assert scan_dataset("imagefolder", store, {"goodClass": "good"})
    with pytest.raises(DatasetError, match=r"goodClass 'ok' is not one of the classes found"):
        scan_dataset("imagefolder", store, {"goodClass": "ok"})


def test_scan_order_does_not_depend_on_listing_order() -> None:
    keys = [f"{label}/{i:03d}.png" for label in ("good", "pit", "scratch") for i in range(20)]
    keys += [f"pit/{i:03d}_mask.png" for i in range(20)]
    expected = scan_dataset("imagefolder", ListingStore(sorted(keys)))
    for seed in range(3):
        shuffled = keys[:]
        random.Random(seed).shuffle(shuffled)
        assert scan_dataset("imagefolder", ListingStore(shuffled)) == expected


@pytest.mark.parametrize("key", ["", "/abs.png", "a//b.png", "a/../b.png", "a\\b.png", "a/b\n.png"])
def test_unsafe_keys_are_refused(key: str) -> None:
    with pytest.raises(DatasetError, match="not a safe relative key"):
        check_key(key)


def test_unsafe_key_from_a_listing_is_refused() -> None:
    store = ListingStore(["good/a.png", "bad/evil\\..\\x.png"])
    with pytest.raises(DatasetError, match=r"'bad/evil\\\\..\\\\x.png' is not a safe"):
        scan_dataset("imagefolder", store)


# --- imagefolder -----------------------------------------------------------------------------


def test_imagefolder_finds_classes_counts_and_masks(tmp_path: Path) -> None:
    make_imagefolder(tmp_path)
    records = scan_dataset("imagefolder", open_store(str(tmp_path)))
    assert Counter(r.label for r in records) == {"good": 3, "scratch": 3}
    assert [(r.key, r.mask_key) for r in records] == [
        ("good/g0.png", None),
        ("good/g1.png", None),
        ("good/g2.jpg", None),
        ("scratch/S1.JPEG", "scratch/S1_mask.png"),
        ("scratch/s0.png", "scratch/s0_mask.png"),
        ("scratch/s2.bmp", None),
    ]


def test_imagefolder_root_option_keeps_keys_relative_to_the_store(tmp_path: Path) -> None:
    make_imagefolder(tmp_path / "drops" / "v1")
    store = open_store(str(tmp_path))
    records = scan_dataset("imagefolder", store, {"root": "drops/v1/"})
    assert len(records) == 6
    assert records[3].mask_key == "drops/v1/scratch/S1_mask.png"
    assert all(store.get_bytes(r.key) for r in records)


def test_imagefolder_orphan_mask_names_the_file(tmp_path: Path) -> None:
    make_imagefolder(tmp_path)
    _write(tmp_path, "scratch/lost_mask.png", _mask_bytes())
    with pytest.raises(DatasetError, match=r"mask 'scratch/lost_mask.png' has no image lost\."):
        scan_dataset("imagefolder", open_store(str(tmp_path)))


def test_imagefolder_ambiguous_mask_names_both_images(tmp_path: Path) -> None:
    make_imagefolder(tmp_path)
    _write(tmp_path, "scratch/s0.jpg", _image_bytes("JPEG"))
    with pytest.raises(DatasetError, match=r"ambiguous.*scratch/s0.jpg, scratch/s0.png"):
        scan_dataset("imagefolder", open_store(str(tmp_path)))


def test_imagefolder_class_without_images_names_the_folder(tmp_path: Path) -> None:
    make_imagefolder(tmp_path)
    _write(tmp_path, "pit/readme.txt", b"to do\n")
    with pytest.raises(DatasetError, match=r"class folder 'pit/' holds no images.*readme.txt"):
        scan_dataset("imagefolder", open_store(str(tmp_path)))


@pytest.mark.skipif(not (SHARED / "plantvillage").is_dir(), reason="shared PlantVillage absent")
def test_imagefolder_reads_real_plantvillage_as_it_lies() -> None:
    # Class folders sit under PlantVillage/, and the file names contain spaces.
    store = open_store(str(SHARED / "plantvillage"))
    records = scan_dataset("imagefolder", store, {"root": "PlantVillage"})
    assert Counter(r.label for r in records) == {
        "Potato___Early_blight": 300,
        "Potato___Late_blight": 300,
        "Potato___healthy": 152,
    }
    assert all(r.key.startswith("PlantVillage/") for r in records)


@pytest.mark.skipif(not (SHARED / "riawelc").is_dir(), reason="shared RIAWELC absent")
def test_imagefolder_reads_real_riawelc_ignoring_root_files() -> None:
    records = scan_dataset("imagefolder", open_store(str(SHARED / "riawelc")))
    assert Counter(r.label for r in records) == {"CR": 13, "LP": 13, "ND": 13, "PO": 13}


# --- magnetic-tile -----------------------------------------------------------------------------


def test_magnetic_tile_fixture_labels_and_masks(tmp_path: Path) -> None:
    make_magnetic_tile(tmp_path)
    records = scan_dataset("magnetic-tile", open_store(str(tmp_path)))
    assert Counter(r.label for r in records) == {"Blowhole": 2, "Free": 3, "Fray": 1}
    assert records[0] == ImageRecord(
        key="MT_Blowhole/Imgs/exp0_num_1000.jpg",
        label="Blowhole",
        mask_key="MT_Blowhole/Imgs/exp0_num_1000.png",
    )
    assert get_format("magnetic-tile").default_good_class == "Free"


def test_magnetic_tile_missing_mask_names_the_image(tmp_path: Path) -> None:
    make_magnetic_tile(tmp_path)
    (tmp_path / "MT_Fray/Imgs/exp0_num_1000.png").unlink()
    with pytest.raises(DatasetError, match=r"image 'MT_Fray/Imgs/exp0_num_1000.jpg' has no mask"):
        scan_dataset("magnetic-tile", open_store(str(tmp_path)))


def test_magnetic_tile_orphan_mask_names_the_mask(tmp_path: Path) -> None:
    make_magnetic_tile(tmp_path)
    _write(tmp_path, "MT_Free/Imgs/stray.png", _mask_bytes())
    with pytest.raises(DatasetError, match=r"mask 'MT_Free/Imgs/stray.png' has no image"):
        scan_dataset("magnetic-tile", open_store(str(tmp_path)))


def test_magnetic_tile_empty_class_names_the_folder(tmp_path: Path) -> None:
    make_magnetic_tile(tmp_path)
    _write(tmp_path, "MT_Crack/Imgs/Thumbs.db", b"\x00")
    with pytest.raises(DatasetError, match=r"class folder 'MT_Crack/Imgs' holds no .jpg"):
        scan_dataset("magnetic-tile", open_store(str(tmp_path)))


@pytest.mark.skipif(not MAGNETIC_TILE.is_dir(), reason="shared Magnetic Tile dataset absent")
def test_magnetic_tile_real_dataset_loads_all_1344_images_with_masks() -> None:
    records = scan_dataset("magnetic-tile", open_store(str(MAGNETIC_TILE)))
    assert Counter(r.label for r in records) == MAGNETIC_TILE_COUNTS
    assert len(records) == 1344
    # Every published image is there, each paired with the .png of the same stem.
    on_disk = sorted(
        p.relative_to(MAGNETIC_TILE).as_posix() for p in MAGNETIC_TILE.glob("MT_*/Imgs/*.jpg")
    )
    assert sorted(r.key for r in records) == on_disk
    for record in records:
        assert record.mask_key == record.key.removesuffix(".jpg") + ".png"
        assert (MAGNETIC_TILE / record.mask_key).is_file()
    # Decode one image and mask of a defect class and of Free: masks mark defects only.
    store = open_store(str(MAGNETIC_TILE))
    for label, defect in (("Blowhole", True), ("Free", False)):
        record = next(r for r in records if r.label == label)
        image = decode_image(store.get_bytes(record.key), channels=1, size=64, name=record.key)
        mask = decode_mask(store.get_bytes(record.mask_key), size=64, name=record.mask_key)
        assert image.shape == (1, 64, 64) and image.std() > 0
        assert bool(mask.any()) is defect


# --- decoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "L"), ("JPEG", "RGB"), ("TIFF", "RGB")])
def test_decode_image_shape_and_dtype(channels: int, fmt: str, mode: str) -> None:
    data = _image_bytes(fmt, size=(40, 17), mode=mode)  # not square: stretched, not cropped
    array = decode_image(data, channels=channels, size=32, name="x")
    assert array.shape == (channels, 32, 32)
    assert array.dtype == np.uint8
    assert array.flags["C_CONTIGUOUS"]


def test_decode_image_keeps_values_of_a_flat_image() -> None:
    flat = np.empty((3, 10, 30), dtype=np.uint8)
    flat[0], flat[1], flat[2] = 10, 200, 90
    rgb = decode_image(encode_png(flat), channels=3, size=8, name="flat.png")
    assert rgb[:, 0, 0].tolist() == [10, 200, 90]
    gray = decode_image(encode_png(flat), channels=1, size=8, name="flat.png")
    assert np.unique(gray).tolist() == [round(10 * 0.299 + 200 * 0.587 + 90 * 0.114)]


def test_decode_image_scales_16_bit_pixels() -> None:
    # PIL's own 16 -> 8 bit conversion clips at 255; the decoder scales the full range instead.
    wide = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(wide).save(buffer, format="PNG")
    out = decode_image(buffer.getvalue(), channels=1, size=4, name="deep.png")
    assert Image.open(io.BytesIO(buffer.getvalue())).mode.startswith("I;16")
    assert out[0, 0].tolist() == [0, 1, 128, 255]


def test_decode_image_refuses_float_pixels() -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.ones((4, 4), dtype=np.float32)).save(buffer, format="TIFF")
    with pytest.raises(DatasetError, match=r"depth.tif: unsupported pixel mode 'F'"):
        decode_image(buffer.getvalue(), channels=1, size=4, name="depth.tif")


def test_decode_mask_is_binary_and_resized() -> None:
    mask = np.zeros((10, 30), dtype=np.uint8)
    mask[:, 15:] = 200  # grey values above the threshold count as defect
    mask[:, 10:15] = 100
    out = decode_mask(encode_png(mask), size=6, name="m.png")
    assert out.shape == (6, 6) and out.dtype == np.uint8
    assert set(np.unique(out).tolist()) == {0, 255}
    assert out[:, -1].tolist() == [255] * 6 and out[:, 0].tolist() == [0] * 6


def test_encode_png_round_trips_chw_and_hw() -> None:
    rng = np.random.default_rng(1)
    for array in (
        rng.integers(0, 256, (3, 5, 7), dtype=np.uint8),
        rng.integers(0, 256, (1, 5, 7), dtype=np.uint8),
        rng.integers(0, 256, (5, 7), dtype=np.uint8),
    ):
        data = encode_png(array)
        assert data == encode_png(array)  # deterministic bytes
        back = np.asarray(Image.open(io.BytesIO(data)))
        expected = array.transpose(1, 2, 0) if array.shape[0] == 3 else array.reshape(5, 7)
        assert np.array_equal(back, expected)
    with pytest.raises(ValueError, match="must be uint8"):
        encode_png(np.zeros((4, 4), dtype=np.float32))


def test_decode_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="channels: must be 1 or 3, got 2"):
        decode_image(_image_bytes("PNG"), channels=2, size=8, name="x")
    with pytest.raises(ValueError, match="size: must be a positive integer"):
        decode_mask(_mask_bytes(), size=0, name="x")


def _truncated_jpeg() -> bytes:
    data = _image_bytes("JPEG", size=(64, 64))
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("cut.jpg", _truncated_jpeg, "corrupt or truncated"),
        ("empty.png", lambda: b"", "empty file"),
        ("notes.txt", lambda: b"key,label\ngood/a.png,good\n", "not a readable image"),
        ("half.png", lambda: _image_bytes("PNG", size=(64, 64))[:2000], "corrupt or truncated"),
        ("head.png", lambda: _image_bytes("PNG")[:20], "corrupt or truncated"),
    ],
)
@pytest.mark.parametrize("decode", ["image", "mask"])
def test_bad_files_are_refused_naming_the_file(
    name: str, make: Callable[[], bytes], message: str, decode: str
) -> None:
    with pytest.raises(DatasetError, match=message) as info:
        if decode == "image":
            decode_image(make(), channels=1, size=8, name=f"scratch/{name}")
        else:
            decode_mask(make(), size=8, name=f"scratch/{name}")
    assert f"scratch/{name}" in str(info.value)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _one_bit_png(width: int, height: int, *, pixels: bool = True) -> bytes:
    """A 1-bit black PNG: tiny on disk, width*height pixels once decoded."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    body = zlib.compress(row * height, 9) if pixels else zlib.compress(row)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "shape",
    [
        (8_000, 6_000),  # 48 MP: over MAX_PIXELS, under PIL's own limit
        (10_000, 10_000),  # 100 MP: PIL would only warn (DecompressionBombWarning)
        (20_000, 20_000),  # 400 MP: PIL raises DecompressionBombError
    ],
)
def test_decompression_bombs_are_refused_naming_the_file(shape: tuple[int, int]) -> None:
    data = _one_bit_png(*shape)
    assert len(data) < 200_000
    with pytest.raises(DatasetError, match="decompression bomb") as info:
        decode_image(data, channels=1, size=8, name=f"bomb_{shape[0]}.png")
    assert f"bomb_{shape[0]}.png" in str(info.value)


def test_pixel_limit_is_checked_from_the_header_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With PIL's own guard switched off and no pixel data at all, only a header check can
    # explain an over-limit error (decoding would fail as truncated instead).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    width = MAX_PIXELS // 1000 + 1
    data = _one_bit_png(width, 1000, pixels=False)
    with pytest.raises(DatasetError, match=rf"{width}x1000 = .* over the limit") as info:
        decode_mask(data, size=8, name="huge_mask.png")
    assert "huge_mask.png" in str(info.value)
