"""`import_dataset` and `inspect_dataset`: round trips to a file store and to S3 (moto), the
refusals that name the offending file, and the guarantee that a failed import leaves nothing.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from scarce.trainer import dataimport
from scarce.trainer.dataimport import (
    INDEX_KEY,
    describe_inspection,
    import_dataset,
    inspect_dataset,
)
from scarce.trainer.datasets import DatasetError, scan_dataset
from scarce.trainer.store import FileStore, S3Store, Store, StoreError, open_store
from tests.s3server import S3Server
from tests.test_dataset_formats import image_bytes, make_marble, make_mvtec_ad, mask_bytes, write

MVTEC_NAMES = [
    "bent/000.png",
    "good/001.png",
    "good/metal_nut__test__good__000.png",  # train/good/000 and test/good/000 share a stem
    "good/metal_nut__train__good__000.png",
    "scratch/000.png",
    "scratch/000_mask.png",
    "scratch/001.png",
    "scratch/001_mask.png",
]


def _visible_keys(store: Store) -> list[str]:
    return [k for k in store.list() if not k.startswith(".") and "/." not in k]


def _make_imagefolder(src: Path) -> None:
    for i in range(2):
        write(src, f"good/g{i}.png", image_bytes(seed=i))
        write(src, f"scratch/s{i}.jpg", image_bytes("JPEG", seed=i))


def _one_bit_png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height 1-bit pixels but holds almost no data."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    body = zlib.compress(bytes(1 + (width + 7) // 8))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


def _assert_round_trip(store: Store, src: Path) -> None:
    """DEST reads back with imagefolder: same images, same bytes, masks beside them."""
    assert _visible_keys(store) == sorted([INDEX_KEY, *MVTEC_NAMES])
    index = store.get_json(INDEX_KEY)
    assert index["format"] == "imagefolder" and index["goodClass"] == "good"
    assert index["source"]["format"] == "mvtec-ad"
    assert index["classes"] == {"bent": 1, "good": 3, "scratch": 2}
    records = scan_dataset("imagefolder", store)
    rows = {row["key"]: row for row in index["images"]}
    assert sorted(rows) == sorted(r.key for r in records)
    for record in records:
        row = rows[record.key]
        data = store.get_bytes(record.key)
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        assert (src / row["source"]).read_bytes() == data  # bytes unchanged
        assert row["class"] == record.label and row["maskKey"] == record.mask_key
        assert (row["width"], row["height"]) == (20, 14)
    scratch = rows["scratch/001.png"]
    assert scratch["source"] == "metal_nut/test/scratch/001.png"
    assert scratch["maskSource"] == "metal_nut/ground_truth/scratch/001_mask.png"
    assert scratch["maskArea"] == pytest.approx(24 / 280, abs=0.02)


# --- round trips -------------------------------------------------------------------------------


def test_import_to_a_file_store_reads_back_as_imagefolder(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "store" / "datasets" / "metal_nut"
    make_mvtec_ad(src)
    calls: list[tuple[str, int, int]] = []
    summary = import_dataset("mvtec-ad", src, str(dest), progress=lambda *args: calls.append(args))
    assert summary.classes == {"bent": 1, "good": 3, "scratch": 2}
    assert summary.masks == {"scratch": 2} and summary.images == 6
    assert summary.spec == {"format": "imagefolder", "source": f"file://{dest}"}
    assert calls[-1] == ("copy", 8, 8) and ("validate", 6, 6) in calls
    store = open_store(str(dest))
    _assert_round_trip(store, src)
    assert not [k for k in store.list() if ".staging-" in k]
    text = summary.describe()
    assert "Imported 6 images (2 with a mask" in text and "scratch" in text
    assert "format: imagefolder" in text


def test_inspect_reads_the_index_or_scans_alike(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    make_mvtec_ad(src)
    import_dataset("mvtec-ad", src, str(dest))
    from_index = inspect_dataset(str(dest))
    scanned = inspect_dataset(str(dest), "imagefolder")
    assert from_index["read"] == INDEX_KEY and scanned["read"] == "scan"
    assert from_index["sourceFormat"] == "mvtec-ad" and from_index["missing"] == []
    for key in ("images", "classes", "imageSize", "duplicates", "goodClass"):
        assert from_index[key] == scanned[key], key
    assert from_index["classes"] == {
        "bent": {"images": 1, "masks": 0},
        "good": {"images": 3, "masks": 0},
        "scratch": {"images": 2, "masks": 2},
    }
    assert from_index["imageSize"]["width"] == {"min": 20, "median": 20, "max": 20}
    assert from_index["masks"]["share"] == pytest.approx(2 / 6, abs=1e-4)
    assert from_index["masks"]["meanArea"] == pytest.approx(scanned["masks"]["meanArea"])
    # test/good/000 and train/good/000 differ; train/good/000, test/bent/000 and
    # test/scratch/000 are the same generated image (seed 0), as are the two 001s.
    assert from_index["duplicates"] == 3
    (dest / "bent" / "000.png").unlink()
    report = inspect_dataset(str(dest))
    assert report["missing"] == ["bent/000.png"]
    text = describe_inspection(report)
    assert "6 images in 3 classes (read from index.json; good class: good)" in text
    assert "MISSING: 1 file(s)" in text and "width 20 / 20 / 20" in text


def test_inspect_scans_a_public_layout(tmp_path: Path) -> None:
    make_marble(tmp_path, ("good", "crack"))
    report = inspect_dataset(str(tmp_path), "marble")
    assert report["images"] == 6 and report["masks"]["images"] == 3
    assert report["classes"]["crack"] == {"images": 3, "masks": 3}
    assert "a scan with format marble" in describe_inspection(report)


@pytest.mark.parametrize("via", ["uri", "store"])
def test_import_to_s3_reads_back_and_keeps_digests(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    src = tmp_path / "src"
    make_mvtec_ad(src)
    uri = f"s3://{s3_server.make_bucket()}/datasets/metal_nut"
    monkeypatch.setenv("SCARCE_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("SCARCE_S3_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("SCARCE_S3_SECRET_KEY", s3_server.secret_key)
    dest = s3_server.open(uri)
    summary = import_dataset("mvtec-ad", src, uri if via == "uri" else dest)
    assert summary.dest == uri and summary.images == 6
    _assert_round_trip(dest, src)
    assert not [k for k in dest.list() if k.startswith(".staging-")]
    # The server-side copy kept the sha256 recorded at upload.
    index = dest.get_json(INDEX_KEY)
    assert all(dest.recorded_sha256(row["key"]) == row["sha256"] for row in index["images"])
    report = inspect_dataset(uri)
    assert report["images"] == 6 and report["missing"] == []


# --- refusals ----------------------------------------------------------------------------------


def _truncated_jpeg() -> bytes:
    data = image_bytes("JPEG", size=(64, 64))
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("rel", "content", "message"),
    [
        ("scratch/cut.jpg", _truncated_jpeg, "corrupt or truncated"),
        ("scratch/empty.png", lambda: b"", "empty file"),
        ("scratch/notes.png", lambda: b"key,label\ngood/a.png,good\n", "not a readable image"),
        ("scratch/bomb.png", lambda: _one_bit_png_header(10_000, 10_000), "decompression bomb"),
        ("scratch/evil..png", image_bytes, "name contains '..'"),
        ("scratch/escape.png", None, "symlink leaves SRC"),
    ],
)
@pytest.mark.parametrize("dest_exists", [False, True])
def test_bad_files_are_refused_by_name_and_nothing_is_written(
    tmp_path: Path,
    rel: str,
    content: Callable[[], bytes] | None,
    message: str,
    dest_exists: bool,
) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    _make_imagefolder(src)
    if content is None:
        write(tmp_path, "outside/secret.png", image_bytes())
        (src / rel).symlink_to(tmp_path / "outside" / "secret.png")
    else:
        write(src, rel, content())
    if dest_exists:
        dest.mkdir()
    with pytest.raises(DatasetError, match=message) as info:
        import_dataset("imagefolder", src, str(dest))
    assert str(src / rel) in str(info.value)
    assert "nothing was written" in str(info.value)
    assert (dest.exists() and FileStore(dest).list() == []) if dest_exists else not dest.exists()


def test_every_bad_file_is_listed_at_once(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _make_imagefolder(src)
    write(src, "scratch/a.png", b"")
    write(src, "good/b.jpg", _truncated_jpeg())
    with pytest.raises(DatasetError, match=r"2 file\(s\) cannot be imported") as info:
        import_dataset("imagefolder", src, str(tmp_path / "dest"))
    assert str(src / "scratch/a.png") in str(info.value)
    assert str(src / "good/b.jpg") in str(info.value)


def test_symlinked_folder_leaving_src_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _make_imagefolder(src)
    write(tmp_path, "elsewhere/pit/p.png", image_bytes())
    (src / "pit").symlink_to(tmp_path / "elsewhere" / "pit", target_is_directory=True)
    with pytest.raises(DatasetError, match=r"pit: symlink leaves SRC"):
        import_dataset("imagefolder", src, str(tmp_path / "dest"))


def test_symlink_inside_src_is_followed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _make_imagefolder(src)
    (src / "scratch" / "s9.png").symlink_to(src / "good" / "g0.png")
    summary = import_dataset("imagefolder", src, str(tmp_path / "dest"))
    assert summary.classes == {"good": 2, "scratch": 3}


def test_mask_of_another_size_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _make_imagefolder(src)
    write(src, "scratch/s0_mask.png", mask_bytes(size=(8, 8)))
    with pytest.raises(DatasetError, match=r"mask is 8x8 but its image scratch/s0.jpg is 20x14"):
        import_dataset("imagefolder", src, str(tmp_path / "dest"))


def test_image_named_like_a_mask_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_marble(src, ("good", "crack"))
    write(src, "train/good/x_mask.png", image_bytes())
    with pytest.raises(DatasetError, match=r"train/good/x_mask.png: image name ends in '_mask"):
        import_dataset("marble", src, str(tmp_path / "dest"))


def test_dest_inside_src_is_refused(tmp_path: Path) -> None:
    _make_imagefolder(tmp_path)
    with pytest.raises(DatasetError, match="lies inside SRC"):
        import_dataset("imagefolder", tmp_path, str(tmp_path / "imported"))


def test_an_existing_import_is_replaced_only_with_overwrite(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    make_mvtec_ad(src)
    import_dataset("mvtec-ad", src, str(dest))
    with pytest.raises(DatasetError, match=r"already holds a dataset \(index.json\); pass overw"):
        import_dataset("mvtec-ad", src, str(dest))
    other = tmp_path / "other"
    _make_imagefolder(other)
    summary = import_dataset("imagefolder", other, str(dest), overwrite=True)
    assert summary.classes == {"good": 2, "scratch": 2}
    assert _visible_keys(FileStore(dest)) == [
        "good/g0.png",
        "good/g1.png",
        INDEX_KEY,
        "scratch/s0.jpg",
        "scratch/s1.jpg",
    ]


def test_a_foreign_folder_is_never_overwritten(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    _make_imagefolder(src)
    write(dest, "results/r.json", b"{}")
    with pytest.raises(DatasetError, match=r"not empty \(1 file\(s\), e.g. 'results/r.json'\)"):
        import_dataset("imagefolder", src, str(dest), overwrite=True)
    assert (dest / "results/r.json").read_bytes() == b"{}"


# --- failures while writing leave nothing ------------------------------------------------------


def test_failed_copy_to_a_file_store_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    make_mvtec_ad(src)
    real_put_file = FileStore.put_file
    calls = []

    def flaky(self: FileStore, key: str, path: Path) -> str:
        calls.append(key)
        if len(calls) == 4:
            raise StoreError(f"{self.uri}: cannot write '{key}': disk full")
        return real_put_file(self, key, path)

    monkeypatch.setattr(FileStore, "put_file", flaky)
    with pytest.raises(StoreError, match="disk full"):
        import_dataset("mvtec-ad", src, str(dest))
    assert all(key.startswith(".staging-") for key in calls)
    assert not dest.exists()


def test_failed_publish_to_s3_leaves_nothing(
    tmp_path: Path,
    s3_store: S3Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = tmp_path / "src"
    make_mvtec_ad(src)
    real_copy = dataimport._copy
    copied = []

    def flaky(dest: Store, source: str, target: str) -> None:
        if len(copied) == 3:
            raise StoreError("connection reset")
        real_copy(dest, source, target)
        copied.append(target)

    monkeypatch.setattr(dataimport, "_copy", flaky)
    with pytest.raises(StoreError, match="connection reset"):
        import_dataset("mvtec-ad", src, s3_store)
    assert len(copied) == 3
    assert s3_store.list() == []
