"""The public dataset layouts: mvtec-ad, riawelc, plantvillage and marble.

Each format reads a fixture generated here (real PNG/JPEG files in tmp_path, laid out exactly
like the original), and the real partial copies in ../shared/datasets when present, with the
counts their SOURCE.md tables and MANIFEST.csv files give.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scarce.trainer.datasets import (
    DatasetError,
    ImageRecord,
    decode_mask,
    get_format,
    scan_dataset,
)
from scarce.trainer.datasets.riawelc import riawelc_label
from scarce.trainer.store import open_store

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


# --- fixture builders (also used by tests/test_datasets.py) ------------------------------------


def image_bytes(fmt: str = "PNG", seed: int = 0, size: tuple[int, int] = (20, 14)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def mask_bytes(size: tuple[int, int] = (20, 14), *, palette: bool = False) -> bytes:
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[2:6, 3:9] = 1 if palette else 255
    image = Image.fromarray(mask)
    if palette:  # like the Marble Crack Segmentation masks: mode P, values {0, 1}
        image = image.convert("P")
        image.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def make_mvtec_ad(root: Path, counts: dict[str, int] | None = None, *, category: str = "") -> None:
    """MVTec AD's layout; ``category`` "" writes one category folder ``metal_nut/``.

    good: 2 in train (000, 001) + 1 in test (000), so stems repeat; scratch: 2 with masks;
    bent: 1 without a mask; plus readme.txt, license.txt and a second, foreign root file.
    """
    base = f"{category or 'metal_nut'}/"
    counts = counts if counts is not None else {"good": 2, "scratch": 2, "bent": 1}
    for label, n in counts.items():
        for i in range(n):
            split = "train" if label == "good" else "test"
            write(root, f"{base}{split}/{label}/{i:03d}.png", image_bytes(seed=i))
            if label == "scratch":
                write(root, f"{base}ground_truth/{label}/{i:03d}_mask.png", mask_bytes())
    if counts.get("good"):
        write(root, f"{base}test/good/000.png", image_bytes(seed=9))
    write(root, f"{base}readme.txt", b"MVTec AD\n")
    write(root, f"{base}license.txt", b"CC BY-NC-SA 4.0\n")


def make_riawelc(root: Path, classes: tuple[str, ...] = ("CR", "LP", "ND", "PO")) -> None:
    """The archive layout: training/ and testing/ with Difetto folders; 2 + 1 per class."""
    archive = {"CR": "Difetto4", "LP": "Difetto1", "PO": "Difetto2", "ND": "NoDifetto"}
    for code in classes:
        for i in range(2):
            write(root, f"training/{archive[code]}/{code}_{i}.png", image_bytes(seed=i))
        write(root, f"testing/{archive[code]}/bam5_Img1_A80_S2_[4][21].png", image_bytes())
    write(root, "README.md", b"# RIAWELC\n")


def make_plantvillage(root: Path, plants: tuple[str, ...] = ("Potato",)) -> None:
    """``PlantVillage/<Plant>___<Disease>/`` with JPEGs whose names hold spaces."""
    classes = {"Late_blight": 2, "Early_blight": 1, "healthy": 3}
    for plant in plants:
        for disease, n in classes.items():
            for i in range(n):
                name = f"{i:04x}-uuid___RS_LB {4640 + i}.JPG"
                write(root, f"PlantVillage/{plant}___{disease}/{name}", image_bytes("JPEG", i))
    write(root, "SOURCE.md", b"# PlantVillage\n")


def make_marble(root: Path, classes: tuple[str, ...] = ("good", "crack", "joint", "dot")) -> None:
    """train/test class folders; crack images have masks/<split>/crack/<stem>.png masks."""
    for split, n in (("train", 2), ("test", 1)):
        for label in classes:
            for i in range(n):
                stem = f"_{i}_1280_20210525_{split}"
                write(root, f"{split}/{label}/{stem}.jpg", image_bytes("JPEG", i))
                if label == "crack":
                    write(root, f"masks/{split}/crack/{stem}.png", mask_bytes(palette=True))
    write(root, "MANIFEST.csv", b"placed_path\n")


def shared_counts(folder: str, level: int) -> Counter[str]:
    """Images per folder at path depth ``level`` of a shared dataset, from its MANIFEST.csv."""
    with open(SHARED / folder / "MANIFEST.csv", newline="", encoding="utf-8") as fh:
        paths = [row["placed_path"] for row in csv.DictReader(fh)]
    return Counter(
        p.split("/")[level]
        for p in paths
        if p.lower().endswith((".png", ".jpg")) and not p.startswith("masks/")
    )


def scan(fmt: str, root: Path, options: dict | None = None) -> list[ImageRecord]:
    return scan_dataset(fmt, open_store(str(root)), options)


def counts(records: list[ImageRecord]) -> dict[str, int]:
    return dict(Counter(r.label for r in records))


# --- mvtec-ad ----------------------------------------------------------------------------------


def test_mvtec_ad_pools_train_and_test_and_attaches_masks(tmp_path: Path) -> None:
    make_mvtec_ad(tmp_path)
    records = scan("mvtec-ad", tmp_path)
    assert counts(records) == {"bent": 1, "good": 3, "scratch": 2}
    by_key = {r.key: r for r in records}
    assert by_key["metal_nut/test/scratch/001.png"].mask_key == (
        "metal_nut/ground_truth/scratch/001_mask.png"
    )
    assert by_key["metal_nut/test/bent/000.png"].mask_key is None
    assert {"metal_nut/train/good/000.png", "metal_nut/test/good/000.png"} <= set(by_key)
    assert get_format("mvtec-ad").default_good_class == "good"


def test_mvtec_ad_reads_a_category_folder_as_the_root(tmp_path: Path) -> None:
    make_mvtec_ad(tmp_path)
    records = scan("mvtec-ad", tmp_path / "metal_nut")
    assert counts(records) == {"bent": 1, "good": 3, "scratch": 2}
    assert records[-1].key == "test/scratch/001.png"
    assert records[-1].mask_key == "ground_truth/scratch/001_mask.png"
    # Naming the category it is is fine; naming another one is not.
    assert scan("mvtec-ad", tmp_path / "metal_nut", {"category": "metal_nut"}) == records
    with pytest.raises(DatasetError, match=r"no MVTec AD category 'bottle'.*itself a category"):
        scan("mvtec-ad", tmp_path / "metal_nut", {"category": "bottle"})


def test_mvtec_ad_several_categories_need_the_option(tmp_path: Path) -> None:
    make_mvtec_ad(tmp_path)
    make_mvtec_ad(tmp_path, {"good": 1, "hole": 2}, category="wood")
    with pytest.raises(DatasetError, match=r"several MVTec AD categories \(metal_nut, wood\)"):
        scan("mvtec-ad", tmp_path)
    assert counts(scan("mvtec-ad", tmp_path, {"category": "wood"})) == {"good": 2, "hole": 2}
    with pytest.raises(DatasetError, match=r"'pill'; categories found: metal_nut, wood"):
        scan("mvtec-ad", tmp_path, {"category": "pill"})


def test_mvtec_ad_orphan_mask_and_empty_class_are_named(tmp_path: Path) -> None:
    make_mvtec_ad(tmp_path)
    write(tmp_path, "metal_nut/ground_truth/bent/007_mask.png", mask_bytes())
    with pytest.raises(
        DatasetError, match=r"mask 'metal_nut/ground_truth/bent/007_mask.png' has no image"
    ):
        scan("mvtec-ad", tmp_path)
    (tmp_path / "metal_nut/ground_truth/bent/007_mask.png").unlink()
    write(tmp_path, "metal_nut/test/flip/Thumbs.db", b"\x00")
    with pytest.raises(DatasetError, match=r"'metal_nut/test/flip/' holds no images.*Thumbs.db"):
        scan("mvtec-ad", tmp_path)


@pytest.mark.skipif(not (SHARED / "mvtec-ad").is_dir(), reason="shared MVTec AD absent")
@pytest.mark.parametrize(
    ("folder", "options"),
    [("mvtec-ad", {}), ("mvtec-ad", {"category": "metal_nut"}), ("mvtec-ad/metal_nut", {})],
)
def test_mvtec_ad_real_metal_nut(folder: str, options: dict) -> None:
    records = scan("mvtec-ad", SHARED / folder, options)
    expected = {"good": 60, "bent": 25, "color": 22, "flip": 23, "scratch": 23}  # SOURCE.md
    assert counts(records) == expected
    manifest = shared_counts("mvtec-ad", 2)
    assert dict(manifest) == expected
    assert all(r.mask_key is None for r in records)  # the copy has no ground_truth/


# --- riawelc -----------------------------------------------------------------------------------


def test_riawelc_archive_layout_pools_splits_with_readable_labels(tmp_path: Path) -> None:
    make_riawelc(tmp_path)
    records = scan("riawelc", tmp_path)
    assert counts(records) == {"crack": 3, "lack_of_penetration": 3, "no_defect": 3, "porosity": 3}
    assert {r.key for r in records if r.label == "porosity"} == {
        "training/Difetto2/PO_0.png",
        "training/Difetto2/PO_1.png",
        "testing/Difetto2/bam5_Img1_A80_S2_[4][21].png",
    }
    assert get_format("riawelc").default_good_class == "no_defect"


@pytest.mark.parametrize(
    ("folder", "label"),
    [
        ("CR", "crack"),
        ("Difetto4", "crack"),
        ("cracks", "crack"),
        ("LP", "lack_of_penetration"),
        ("Difetto1", "lack_of_penetration"),
        ("Lack of Penetration", "lack_of_penetration"),
        ("lack-of_penetration", "lack_of_penetration"),
        ("PO", "porosity"),
        ("difetto2", "porosity"),
        ("ND", "no_defect"),
        ("NoDifetto", "no_defect"),
        ("No_Defect", "no_defect"),
        ("Difetto3", None),
        ("XX", None),
    ],
)
def test_riawelc_class_names(folder: str, label: str | None) -> None:
    assert riawelc_label(folder) == label


def test_riawelc_code_layout_and_refusals(tmp_path: Path) -> None:
    for code in ("CR", "PO", "ND"):
        write(tmp_path, f"{code}/{code.lower()}_01.png", image_bytes())
    assert counts(scan("riawelc", tmp_path)) == {"crack": 1, "porosity": 1, "no_defect": 1}
    write(tmp_path, "Difetto2/x.png", image_bytes())
    with pytest.raises(DatasetError, match=r"'Difetto2/' and 'PO/' both hold class 'porosity'"):
        scan("riawelc", tmp_path)
    (tmp_path / "Difetto2/x.png").unlink()
    write(tmp_path, "XX/x.png", image_bytes())
    with pytest.raises(DatasetError, match=r"'XX/' holds images but is not a RIAWELC class.*CR"):
        scan("riawelc", tmp_path)


@pytest.mark.skipif(not (SHARED / "riawelc").is_dir(), reason="shared RIAWELC absent")
def test_riawelc_real_sample() -> None:
    records = scan("riawelc", SHARED / "riawelc")
    assert dict(shared_counts("riawelc", 0)) == {"CR": 13, "LP": 13, "ND": 13, "PO": 13}
    assert counts(records) == {
        "crack": 13,
        "lack_of_penetration": 13,
        "no_defect": 13,
        "porosity": 13,
    }


# --- plantvillage ------------------------------------------------------------------------------


def test_plantvillage_finds_the_subfolder_and_labels_diseases(tmp_path: Path) -> None:
    make_plantvillage(tmp_path)
    records = scan("plantvillage", tmp_path)
    assert counts(records) == {"Early_blight": 1, "Late_blight": 2, "healthy": 3}
    assert records[0].key == "PlantVillage/Potato___Early_blight/0000-uuid___RS_LB 4640.JPG"
    assert scan("plantvillage", tmp_path, {"root": "PlantVillage"}) == records
    assert get_format("plantvillage").default_good_class == "healthy"


def test_plantvillage_plant_option_keeps_one_plant(tmp_path: Path) -> None:
    make_plantvillage(tmp_path, ("Potato", "Tomato", "Pepper,_bell"))
    with pytest.raises(DatasetError, match=r"several plants \(Pepper,_bell, Potato, Tomato\)"):
        scan("plantvillage", tmp_path, {"root": "PlantVillage/"})
    write(tmp_path, "PlantVillage/Tomato_healthy/odd name.JPG", image_bytes("JPEG"))
    records = scan("plantvillage", tmp_path, {"plant": "potato"})
    assert counts(records) == {"Early_blight": 1, "Late_blight": 2, "healthy": 3}
    assert all("/Potato___" in r.key for r in records)
    assert len(scan("plantvillage", tmp_path, {"plant": "Pepper,_bell"})) == 6
    with pytest.raises(DatasetError, match=r"'PlantVillage/Tomato_healthy/' is not a PlantVill"):
        scan("plantvillage", tmp_path, {"plant": "Tomato"})
    with pytest.raises(DatasetError, match=r"no class folder of plant 'Apple'.*Potato, Tomato"):
        scan("plantvillage", tmp_path, {"plant": "Apple"})


@pytest.mark.skipif(not (SHARED / "plantvillage").is_dir(), reason="shared PlantVillage absent")
@pytest.mark.parametrize("options", [{}, {"root": "PlantVillage", "plant": "Potato"}])
def test_plantvillage_real_potato(options: dict) -> None:
    records = scan("plantvillage", SHARED / "plantvillage", options)
    assert dict(shared_counts("plantvillage", 1)) == {
        "Potato___Early_blight": 300,
        "Potato___Late_blight": 300,
        "Potato___healthy": 152,
    }
    assert counts(records) == {"Early_blight": 300, "Late_blight": 300, "healthy": 152}


# --- marble ------------------------------------------------------------------------------------


def test_marble_pools_splits_and_attaches_masks(tmp_path: Path) -> None:
    make_marble(tmp_path)
    records = scan("marble", tmp_path)
    assert counts(records) == {"crack": 3, "dot": 3, "good": 3, "joint": 3}
    masked = {r.key: r.mask_key for r in records if r.mask_key}
    assert masked == {
        f"{split}/crack/_{i}_1280_20210525_{split}.jpg": (
            f"masks/{split}/crack/_{i}_1280_20210525_{split}.png"
        )
        for split, n in (("train", 2), ("test", 1))
        for i in range(n)
    }
    assert get_format("marble").default_good_class == "good"


def test_marble_orphan_and_ambiguous_masks_are_named(tmp_path: Path) -> None:
    make_marble(tmp_path, ("good", "crack"))
    write(tmp_path, "masks/test/crack/lost.png", mask_bytes())
    with pytest.raises(DatasetError, match=r"mask 'masks/test/crack/lost.png' has no image"):
        scan("marble", tmp_path)
    (tmp_path / "masks/test/crack/lost.png").unlink()
    write(tmp_path, "train/crack/_0_1280_20210525_train.png", image_bytes())
    with pytest.raises(DatasetError, match=r"ambiguous.*_train.jpg, train/crack/_0_1280"):
        scan("marble", tmp_path)


@pytest.mark.skipif(not (SHARED / "marble-surface").is_dir(), reason="shared marble absent")
def test_marble_real_crack_and_good_with_masks() -> None:
    records = scan("marble", SHARED / "marble-surface")
    assert counts(records) == {"crack": 189 + 57, "good": 200 + 100}  # SOURCE.md
    assert dict(shared_counts("marble-surface", 1)) == {"crack": 246, "good": 300}
    masked = [r for r in records if r.mask_key]
    assert len(masked) == 246 and all(r.label == "crack" for r in masked)
    assert all(r.mask_key == "masks/" + r.key[: -len(".jpg")] + ".png" for r in masked)


def test_palette_masks_with_values_0_and_1_mark_defects() -> None:
    # The Marble Crack Segmentation masks store the crack as palette index 1 (dark red).
    mask = decode_mask(mask_bytes((20, 20), palette=True), size=20, name="m.png")
    assert mask[2:6, 3:9].all() and mask.sum() == 255 * 24
