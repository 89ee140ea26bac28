"""The procedural demo dataset (scarce.trainer.datasets.demo): determinism, layout, safety."""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import scarce.trainer.datasets.demo as demo_module
from scarce.trainer.datasets import DemoSummary, decode_image, generate_demo, scan_dataset
from scarce.trainer.datasets.demo import SURFACE_COUNTS, VENDOR_COUNTS
from scarce.trainer.store import open_store


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.png") if not p.name.endswith("_mask.png"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoSummary:
    return generate_demo(tmp_path_factory.mktemp("demo-a") / "demo", seed=0)


@pytest.fixture(scope="module")
def demo_files(demo: DemoSummary) -> dict[str, bytes]:
    return _files(demo.root)


def test_same_seed_gives_byte_identical_files(demo_files: dict[str, bytes], tmp_path: Path) -> None:
    again = generate_demo(tmp_path / "demo", seed=0)
    assert again.generated
    assert _files(again.root) == demo_files


def test_other_seed_gives_other_images(demo_files: dict[str, bytes], tmp_path: Path) -> None:
    other = _files(generate_demo(tmp_path / "demo", seed=1).root)
    assert other.keys() == demo_files.keys()
    images = [k for k in demo_files if k.endswith(".png") and not k.endswith("_mask.png")]
    assert all(other[k] != demo_files[k] for k in images)


def test_counts_layout_and_summary(demo: DemoSummary) -> None:
    assert demo.generated and demo.seed == 0 and demo.size == 64
    assert demo.counts == {"good": 160, "scratch": 60, "spot": 60, "pit": 24}
    assert demo.vendor_counts == {"scratch": 60, "spot": 60, "pit": 60}
    assert demo.surfaces == demo.root / "surfaces"
    assert demo.vendor_drop == demo.root / "vendor-drop"
    for folder, counts in ((demo.surfaces, SURFACE_COUNTS), (demo.vendor_drop, VENDOR_COUNTS)):
        assert Counter(p.parent.name for p in _images(folder)) == counts
        masks = Counter(p.parent.name for p in folder.rglob("*_mask.png"))
        assert masks == {k: v for k, v in counts.items() if k != "good"}
    assert sorted(p.name for p in demo.root.iterdir()) == [
        "README.txt",
        "demo.json",
        "surfaces",
        "vendor-drop",
    ]
    # Written beside dest, then renamed: no temporary folder is left behind.
    assert [p.name for p in demo.root.parent.iterdir()] == ["demo"]


def test_readme_says_it_is_not_a_benchmark(demo: DemoSummary) -> None:
    readme = (demo.root / "README.txt").read_text()
    assert "PROCEDURALLY GENERATED, NOT A BENCHMARK" in readme
    assert "seed=0, size=64" in readme
    for label, n in SURFACE_COUNTS.items():
        assert f"{label:<8} {n:>4}" in readme


def test_images_are_grayscale_and_masks_mark_defects(demo: DemoSummary) -> None:
    for path in _images(demo.root):
        image = Image.open(path)
        assert (image.mode, image.size) == ("L", (64, 64))
        mask_path = path.with_name(path.stem + "_mask.png")
        if path.parent.name == "good":
            assert not mask_path.exists()
            continue
        mask = np.asarray(Image.open(mask_path))
        assert mask.shape == (64, 64)
        assert set(np.unique(mask).tolist()) == {0, 255}, mask_path


def test_pit_is_the_rarest_and_smallest_defect(demo: DemoSummary) -> None:
    # The hardest class by construction: fewest images and a few pixels of faint darkening.
    def mean_area(label: str) -> float:
        masks = (demo.surfaces / label).glob("*_mask.png")
        return float(np.mean([(np.asarray(Image.open(p)) > 0).sum() for p in masks]))

    area = {label: mean_area(label) for label in ("scratch", "spot", "pit")}
    assert min(SURFACE_COUNTS, key=SURFACE_COUNTS.__getitem__) == "pit"
    assert area["pit"] < area["spot"] / 2 and area["pit"] < area["scratch"] / 2
    assert area["pit"] >= 1


def test_vendor_images_never_equal_surface_images(demo_files: dict[str, bytes]) -> None:
    def digests(folder: str) -> set[str]:
        return {
            hashlib.sha256(data).hexdigest()
            for key, data in demo_files.items()
            if key.startswith(folder) and not key.endswith("_mask.png")
        }

    surfaces, vendor = digests("surfaces/"), digests("vendor-drop/")
    assert len(surfaces) == sum(SURFACE_COUNTS.values())
    assert len(vendor) == sum(VENDOR_COUNTS.values())
    assert not surfaces & vendor


def test_demo_loads_through_the_imagefolder_format(demo: DemoSummary) -> None:
    store = open_store(str(demo.surfaces))
    records = scan_dataset("imagefolder", store, {"goodClass": "good"})
    assert Counter(r.label for r in records) == SURFACE_COUNTS
    assert all((r.mask_key is None) == (r.label == "good") for r in records)
    image = decode_image(store.get_bytes(records[0].key), channels=3, size=32, name=records[0].key)
    assert image.shape == (3, 32, 32)
    # The vendor drop has defect classes only: a delivery, read with requireGood off.
    root = open_store(str(demo.root))
    drop = scan_dataset("imagefolder", root, {"root": "vendor-drop", "requireGood": False})
    assert Counter(r.label for r in drop) == VENDOR_COUNTS
    assert drop[0].key.startswith("vendor-drop/")


def test_existing_matching_demo_is_not_regenerated(demo: DemoSummary) -> None:
    before = {p: p.stat().st_mtime_ns for p in demo.root.rglob("*")}
    again = generate_demo(demo.root, seed=0, size=64)
    assert not again.generated
    assert again.counts == demo.counts
    assert {p: p.stat().st_mtime_ns for p in demo.root.rglob("*")} == before


def test_existing_demo_with_another_seed_is_refused(demo: DemoSummary) -> None:
    with pytest.raises(FileExistsError, match=r"demo made with seed=0, size=64") as info:
        generate_demo(demo.root, seed=5)
    assert str(demo.root) in str(info.value)
    assert "wanted seed=5" in str(info.value)


def test_folder_with_other_contents_is_refused_and_untouched(tmp_path: Path) -> None:
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"other contents") as info:
        generate_demo(dest)
    assert str(dest) in str(info.value)
    assert _files(dest) == {"mine.txt": b"keep me"}
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_empty_folder_is_filled(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    summary = generate_demo(tmp_path / "empty", seed=3, size=32)
    assert summary.generated
    assert Image.open(_images(summary.surfaces)[0]).size == (32, 32)


def test_failure_midway_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    def failing_encode(array: np.ndarray) -> bytes:
        nonlocal calls
        calls += 1
        if calls > 50:
            raise OSError("disk full")
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()

    monkeypatch.setattr(demo_module, "encode_png", failing_encode)
    with pytest.raises(OSError, match="disk full"):
        generate_demo(tmp_path / "demo")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"seed": -1}, "seed: must be a non-negative integer"), ({"size": 8}, "size: must be")],
)
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_demo(tmp_path / "demo", **kwargs)
