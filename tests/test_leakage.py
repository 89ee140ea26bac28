"""Leakage check (scarce.trainer.leakage): perceptual-hash near duplicates on real images, and,
end to end through the local executor, a planted test image in a vendor drop refuses that
source's arms (files named) while the other arms finish; under policy flag the run goes on and
the report lists the match."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageEnhance

from scarce.operator.local import LocalExecutor
from scarce.operator.plan import bind_digests, plan_benchmark
from scarce.operator.spec import validate_document
from scarce.trainer.data import assemble
from scarce.trainer.datasets import decode_image, generate_demo
from scarce.trainer.leakage import (
    SplitReference,
    dihedral_phash64,
    find_matches,
    hamming,
    phash64,
    refusing,
)
from scarce.trainer.prepare import freeze_split, run_split_unit
from scarce.trainer.store import open_store
from scarce.trainer.synth import SyntheticSourceError

REPO = Path(__file__).resolve().parents[1]
LEAVES = REPO.parent / "shared" / "datasets" / "plantvillage" / "PlantVillage"
MAX_DISTANCE = 4


def leaf(name: str, index: int) -> bytes:
    return sorted((LEAVES / name).glob("*.*"))[index].read_bytes()


def shard_image(data: bytes, channels: int = 3, size: int = 64) -> np.ndarray:
    return decode_image(data, channels=channels, size=size, name="test")[None]


def re_encoded_brighter(data: bytes) -> bytes:
    """The same photo 10% brighter, saved again as a lower-quality JPEG."""
    image = ImageEnhance.Brightness(Image.open(io.BytesIO(data)).convert("RGB")).enhance(1.1)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=60)
    return out.getvalue()


# --- hashes and distances ------------------------------------------------------------------


def test_hamming_counts_differing_bits_like_python():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**63, size=50, dtype=np.uint64) * np.uint64(2)
    b = rng.integers(0, 2**63, size=70, dtype=np.uint64) + np.uint64(1)
    expected = [[bin(int(x) ^ int(y)).count("1") for y in b] for x in a]
    assert hamming(a, b).tolist() == expected


def test_find_matches_is_exhaustive_across_chunks():
    rng = np.random.default_rng(1)
    reference = rng.integers(0, 2**63, size=300, dtype=np.uint64)
    query = rng.integers(0, 2**63, size=2500, dtype=np.uint64)  # more rows than one chunk
    planted = [(5, 7), (1500, 299), (2499, 0)]
    for q, r in planted:
        query[q] = reference[r] ^ np.uint64(0b101)  # two bits apart
    found = find_matches(query, reference, MAX_DISTANCE)
    assert [(m.query, m.reference, m.distance) for m in found] == [(q, r, 2) for q, r in planted]


@pytest.mark.parametrize("channels", [1, 3])
def test_a_brightened_re_encoded_copy_is_caught_and_another_leaf_is_not(channels):
    original = leaf("Potato___Late_blight", 0)
    copy = re_encoded_brighter(original)
    assert copy != original
    other = leaf("Potato___Early_blight", 3)
    hashes = phash64(np.concatenate([shard_image(d, channels) for d in (original, copy, other)]))
    distances = hamming(hashes[:1], hashes)[0]
    assert distances[1] <= MAX_DISTANCE, distances
    assert distances[2] > MAX_DISTANCE + 8, distances


def test_a_mirrored_copy_is_caught_through_the_flipped_variants():
    images = np.concatenate([shard_image(leaf("Potato___healthy", i)) for i in range(4)])
    mirrored = np.ascontiguousarray(images[2:3, :, :, ::-1])
    assert hamming(phash64(mirrored), phash64(images[2:3]))[0, 0] > MAX_DISTANCE
    (match,) = find_matches(phash64(mirrored), dihedral_phash64(images), MAX_DISTANCE)
    assert (match.reference, match.distance) == (2, 0)


def test_split_reference_separates_test_leaks_from_duplicates_the_split_already_has():
    photos = [leaf("Potato___Late_blight", i) for i in range(5)]
    images = np.concatenate([shard_image(p) for p in photos])
    items = [
        {"key": f"late/{i}.jpg", "label": "late", "sha256": f"sha{i}", "role": role}
        for i, role in enumerate(["train", "train", "test", "test", "train"])
    ]
    # Image 4 (training) is a near copy of test image 3: the split's own duplicate.
    images[4] = shard_image(re_encoded_brighter(photos[3]))[0]
    reference = SplitReference(items, images)
    (pair,) = reference.train_test(MAX_DISTANCE)
    assert (pair["train"], pair["test"], pair["exact"]) == ("late/4.jpg", "late/3.jpg", False)

    synthetic = np.concatenate([images[2:3], shard_image(re_encoded_brighter(photos[3])),
                                shard_image(leaf("Potato___healthy", 0))])
    records = [{"label": "late", "origin": "drop/a.png", "sha256": "sha2"},
               {"label": "late", "origin": "drop/b.png", "sha256": "other"},
               {"label": "late", "origin": "drop/c.png", "sha256": "other2"}]
    matches = reference.screen(synthetic, records, MAX_DISTANCE)
    to_test = {(m["synthetic"], m["real"]): m for m in matches if m["against"] == "test"}
    assert to_test[("drop/a.png", "late/2.jpg")]["exact"] is True
    assert to_test[("drop/b.png", "late/3.jpg")]["nearTraining"] == "late/4.jpg"
    assert not [m for m in matches if m["synthetic"] == "drop/c.png"]
    # Only a.png leaks test information the real arm does not already have.
    assert [m["synthetic"] for m in refusing(matches)] == ["drop/a.png"]


def test_a_test_match_refuses_a_vendor_drop_but_never_a_built_in_generator(
    planted, tmp_path, monkeypatch
):
    """Built-in generators never see test pixels: a match of theirs is reported, not refused."""

    def every_image_matches_a_test_image(self, images, records, max_distance):
        return [{"synthetic": r["origin"], "index": i, "label": r["label"], "against": "test",
                 "real": "pit/x.png", "realLabel": "pit", "distance": 3, "exact": False,
                 "nearTraining": None} for i, r in enumerate(records)]

    monkeypatch.setattr(SplitReference, "screen", every_image_matches_a_test_image)
    document = json.loads(json.dumps(planted["document"]))
    document["spec"].update(FAST, arms=["real"], synthetic=[
        {"name": "clean", "kind": "external", "uri": str(planted["drops"]["clean"]),
         "perClass": 2},
        {"name": "cutpaste", "kind": "cutpaste", "perClass": 2},
    ])
    (unit,) = plan_benchmark(validate_document(document), base_dir=tmp_path).split
    (tmp_path / "store").mkdir()
    store = open_store(tmp_path / "store")
    result = run_split_unit(unit.model_copy(update={"storage": unit.storage.model_copy(
        update={"uri": f"file://{tmp_path}/store"})}), store, base_dir=None)
    assert "refused by the leakage check" in result["synthetic"]["clean"]["error"]
    assert "manifestKey" in result["synthetic"]["cutpaste"]
    assert result["leakage"]["syntheticCounts"]["cutpaste"] == {
        "test": 6, "training": 0, "refusing": 0}


def test_refuse_withdraws_a_set_an_earlier_flag_run_published(planted, tmp_path):
    document = json.loads(json.dumps(planted["document"]))
    document["spec"].update(FAST, arms=["real"], storage={"uri": str(tmp_path / "store")},
                            synthetic=[{"name": "leaky", "kind": "external", "perClass": PER_CLASS,
                                        "uri": str(planted["drops"]["leaky"])}])
    (tmp_path / "store").mkdir()
    store = open_store(tmp_path / "store")
    results = {}
    for policy in ("flag", "refuse"):
        document["spec"]["leakage"] = {"policy": policy}
        (unit,) = plan_benchmark(validate_document(document), base_dir=tmp_path).split
        results[policy] = run_split_unit(unit, store, base_dir=None)
    manifest_key = results["flag"]["synthetic"]["leaky"]["manifestKey"]
    assert "error" in results["refuse"]["synthetic"]["leaky"]
    assert not store.exists(manifest_key)


# --- end to end ----------------------------------------------------------------------------

PER_CLASS = 6
FAST = {"model": {"backbone": "test_resnet", "imageSize": 32, "channels": 1},
        "schedule": {"epochs": 1, "batchSize": 32, "lr": 0.003}}


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    """Demo data, a clean drop and a drop with one test image of class pit planted (bytes)."""
    root = tmp_path_factory.mktemp("leak")
    demo = generate_demo(root / "demo", seed=0)
    document = yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())
    dataset = document["spec"]["datasets"][0]
    dataset["source"] = str(demo.surfaces)
    config = validate_document(document).spec.datasets[0]
    manifest = freeze_split(config, open_store(demo.surfaces))
    test_pit = next(i["key"] for i in manifest["items"]
                    if i["role"] == "test" and i["label"] == "pit")
    drops = {}
    for name in ("clean", "leaky"):
        drop = root / name
        for cls in ("pit", "scratch", "spot"):
            (drop / cls).mkdir(parents=True)
            for image in sorted((demo.vendor_drop / cls).glob("*_000?.png"))[:PER_CLASS]:
                shutil.copy(image, drop / cls / image.name)
        drops[name] = drop
    # Exactly perClass images per class, so the planted one is always selected.
    (drops["leaky"] / "pit" / "vendor_pit_0000.png").unlink()
    shutil.copy(demo.surfaces / test_pit, drops["leaky"] / "pit" / "planted.png")
    return {"root": root, "document": document, "drops": drops, "test_pit": test_pit}


def run(planted: dict, tmp_path: Path, policy: str, arms: list[str], placebo: str | None):
    document = json.loads(json.dumps(planted["document"]))
    spec = document["spec"]
    spec.update(FAST, seeds=2, arms=arms, storage={"uri": str(tmp_path / "store")},
                leakage={"policy": policy})
    spec["synthetic"] = [
        {"name": n, "kind": "external", "uri": str(planted["drops"][n]), "perClass": PER_CLASS}
        for n in ("clean", "leaky")
    ]
    if placebo:
        spec["placeboMatches"] = placebo
    plan = plan_benchmark(validate_document(document), base_dir=tmp_path)
    outcome = LocalExecutor(plan, workers=2, log_dir=tmp_path / "logs").run()
    return outcome, plan


@pytest.mark.e2e
def test_planted_test_image_refuses_its_arms_naming_the_file_and_the_rest_finishes(
    planted, tmp_path
):
    outcome, plan = run(planted, tmp_path, "refuse", ["real", "placebo", "clean", "leaky"],
                        placebo="leaky")
    failed = outcome.failed
    assert set(failed) == {f"train/surfaces/{arm}/kfull/seed{s}"
                           for arm in ("leaky", "placebo") for s in (0, 1)}
    for result in failed.values():
        assert "pit/planted.png" in result["error"]
        assert f"test image {planted['test_pit']}" in result["error"]
        assert "distance 0, identical bytes" in result["error"]
        assert "refused by the leakage check" in result["error"]
    assert outcome.count("done") == plan.total - 4  # split, real, clean, fidelity, reduce

    store = open_store(tmp_path / "store")
    split = store.get_json("results/demo/surfaces/split.json")
    assert set(split["synthetic"]["leaky"]) == {"error", "leaks", "leakCounts"}
    assert "manifestKey" in split["synthetic"]["clean"]
    assert not store.exists(
        f"synthetic/leaky/surfaces/{split['splitDigest']}/manifest.json"
    ), "a refused set must never be published"
    leak = split["leakage"]["synthetic"]["leaky"][0]
    assert (leak["synthetic"], leak["against"], leak["real"], leak["distance"], leak["exact"]) \
        == ("pit/planted.png", "test", planted["test_pit"], 0, True)

    report = outcome.report["datasets"][0]
    assert set(report["arms"]) == {"real", "clean"}
    assert "pit/planted.png" in report["leakage"]["refused"]["leaky"]
    assert report["fidelity"]["sources"]["leaky"] == {"error": split["synthetic"]["leaky"]["error"]}
    markdown = store.get_bytes("reports/demo/report.md").decode()
    assert "- leaky: REFUSED, its arms did not run" in markdown
    assert "- training vs test split: none" in markdown and "- clean: none" in markdown

    # A trainer started on a refused arm anyway (a Job, by hand) fails with a clear message.
    unit = next(u for u in plan.train if u.arm == "leaky")
    (unit,) = bind_digests([unit], {"surfaces": split["splitDigest"]})
    with pytest.raises(SyntheticSourceError, match=r"source 'leaky' .* no published set .*"
                       r"split\.json \(a source refused by the leakage check"):
        assemble(store, unit)


@pytest.mark.e2e
def test_policy_flag_trains_on_the_leaky_source_and_the_report_lists_the_match(
    planted, tmp_path
):
    outcome, _ = run(planted, tmp_path, "flag", ["real", "leaky"], placebo=None)
    assert not outcome.failed, outcome.failed
    report = outcome.report["datasets"][0]
    assert set(report["arms"]) == {"real", "leaky"}
    leakage = report["leakage"]
    assert leakage["policy"] == "flag" and leakage["refused"] == {}
    assert leakage["syntheticCounts"]["leaky"]["test"] == 1
    markdown = open_store(tmp_path / "store").get_bytes("reports/demo/report.md").decode()
    assert (f"- leaky: 1 match(es) with test images (1 of them leak test information; flagged, "
            f"trained on), 0 with training images, e.g. pit/planted.png ~ test image "
            f"{planted['test_pit']} (identical bytes)") in markdown
