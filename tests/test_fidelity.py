"""Fidelity (report §4.1, Figure 1): cosine similarity of each synthetic image to its nearest real
training defect of the same class, in the features of the real-only model of seed 0; the
figure of synthetic image, mask and nearest real defect; and a clear failure without the
extractor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from scarce.operator.local import LocalExecutor
from scarce.operator.plan import bind_digests, plan_benchmark
from scarce.operator.spec import validate_document
from scarce.trainer.datasets import generate_demo
from scarce.trainer.figures import fidelity_figure
from scarce.trainer.prepare import freeze_split
from scarce.trainer.runner import exit_code_for
from scarce.trainer.store import open_store
from scarce.trainer.unit import EXIT_PERMANENT

REPO = Path(__file__).resolve().parents[1]
PER_CLASS = 6
PNG = b"\x89PNG\r\n\x1a\n"


def unit_rows(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    rows = rng.normal(size=(n, d))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# --- the numbers, on arrays ----------------------------------------------------------------


def test_class_fidelity_cosines_lie_in_range_and_an_exact_copy_scores_one():
    from scarce.trainer.fidelity import class_fidelity, nearest_real

    rng = np.random.default_rng(0)
    real = unit_rows(rng, 20)
    real_rows = np.arange(100, 120)  # manifest indices of the real rows
    synthetic = unit_rows(rng, 9)
    synthetic[4] = real[13]  # an exact copy of real defect 13
    cosine, nearest = nearest_real(synthetic, real)
    assert np.all((cosine >= -1) & (cosine <= 1))
    assert cosine[4] == pytest.approx(1.0) and nearest[4] == 13
    assert np.allclose(cosine, (synthetic @ real.T).max(axis=1))

    measured = class_fidelity(synthetic, real, real_rows)
    assert measured["n"] == 9 and measured["nReal"] == 20
    assert -1 <= measured["minCosine"] <= measured["meanCosine"] <= measured["maxCosine"] <= 1
    assert measured["meanCosine"] == pytest.approx(cosine.mean(), abs=1e-6)
    best = measured["examples"][0]
    assert (best["synthetic"], best["real"], best["cosine"]) == (4, 113, pytest.approx(1.0))
    assert len(measured["examples"]) == 3
    assert [e["cosine"] for e in measured["examples"]] == sorted(
        [e["cosine"] for e in measured["examples"]], reverse=True)


def test_fidelity_figure_draws_one_row_per_example():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(1, 32, 32), dtype=np.uint8)
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:12, 8:12] = 255
    rows = [{"source": "vendor", "label": "pit", "synthetic": image, "mask": m, "real": image,
             "cosine": 0.97, "syntheticName": "pit/a.png", "realName": "pit/b.png"}
            for m in (mask, None)]
    assert fidelity_figure(rows).startswith(PNG)
    assert fidelity_figure([]) is None


# --- end to end ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def copies_run(tmp_path_factory):
    """A run whose drop holds exact copies of real training pit images (and vendor images of
    the other classes), so every pit image's nearest real defect is known."""
    root = tmp_path_factory.mktemp("fidelity")
    demo = generate_demo(root / "demo", seed=0)
    document = yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())
    spec = document["spec"]
    spec["datasets"][0]["source"] = str(demo.surfaces)
    manifest = freeze_split(validate_document(document).spec.datasets[0],
                            open_store(demo.surfaces))
    originals = [i["key"] for i in manifest["items"]
                 if i["role"] != "test" and i["label"] == "pit"][:PER_CLASS]
    drop = root / "drop"
    for cls in ("scratch", "spot"):
        (drop / cls).mkdir(parents=True)
        for image in sorted((demo.vendor_drop / cls).glob("*_000?.png"))[:PER_CLASS]:
            shutil.copy(image, drop / cls)
    (drop / "pit").mkdir()
    for key in originals:
        shutil.copy(demo.surfaces / key, drop / "pit" / f"copy_{Path(key).name}")
    spec.update(
        storage={"uri": str(root / "store")}, seeds=2, arms=["real", "copies"],
        synthetic=[{"name": "copies", "kind": "external", "uri": str(drop),
                    "perClass": PER_CLASS}],
        model={"backbone": "test_resnet", "imageSize": 32, "channels": 1},
        schedule={"epochs": 2, "batchSize": 32, "lr": 0.003},
    )
    plan = plan_benchmark(validate_document(document), base_dir=root)
    outcome = LocalExecutor(plan, workers=2, log_dir=root / "logs").run()
    return outcome, plan, open_store(root / "store"), originals


@pytest.mark.e2e
def test_fidelity_unit_measures_every_class_against_real_training_defects(copies_run):
    outcome, plan, store, originals = copies_run
    assert not outcome.failed, outcome.failed
    assert [u.key for u in plan.fidelity] == ["fidelity/surfaces"]
    result = store.get_json("results/demo/surfaces/fidelity.json")
    split = store.get_json("results/demo/surfaces/split.json")
    manifest = store.get_json(split["manifestKey"])
    items = manifest["items"]

    extractor = result["extractor"]
    assert extractor["name"] == "real-only model of seed 0"
    assert extractor["weights"] == "models/demo/surfaces/real-seed0.pt"
    assert store.recorded_sha256(extractor["weights"]) == extractor["sha256"]
    assert extractor["trainResult"] == "results/demo/surfaces/real/kfull/seed0.json"

    per_class = result["sources"]["copies"]["perClass"]
    assert set(per_class) == {"pit", "scratch", "spot"}
    synthetic = store.get_json(split["synthetic"]["copies"]["manifestKey"])["items"]
    for cls, measured in per_class.items():
        assert measured["n"] == PER_CLASS
        assert -1 <= measured["minCosine"] <= measured["meanCosine"] <= measured["maxCosine"] <= 1
        for example in measured["examples"]:
            real = items[example["real"]]
            assert real["label"] == cls and real["role"] != "test"
            assert synthetic[example["synthetic"]]["label"] == cls
            assert -1 <= example["cosine"] <= 1
    # Exact copies of real training defects: similarity 1 with the very image they copy.
    assert per_class["pit"]["meanCosine"] == pytest.approx(1.0, abs=1e-5)
    for example in per_class["pit"]["examples"]:
        assert example["cosine"] == pytest.approx(1.0, abs=1e-5)
        copied = example["syntheticOrigin"].removeprefix("pit/copy_")
        assert items[example["real"]]["key"] == f"pit/{copied}"
        assert f"pit/{copied}" in originals
    # ... which the leakage check reports as copies of training images, without refusing.
    assert split["leakage"]["syntheticCounts"]["copies"]["training"] >= PER_CLASS


@pytest.mark.e2e
def test_report_names_the_extractor_lists_fidelity_and_writes_figure_1(copies_run):
    outcome, _, store, _ = copies_run
    fidelity = outcome.report["datasets"][0]["fidelity"]
    assert fidelity["extractor"]["name"] == "real-only model of seed 0"
    assert fidelity["sources"]["copies"]["perClass"]["pit"]["n"] == PER_CLASS
    assert set(fidelity["realReference"]) == {"pit", "scratch", "spot"}
    png = store.get_bytes("reports/demo/figures/surfaces-fidelity.png")
    assert png.startswith(PNG)
    markdown = store.get_bytes("reports/demo/report.md").decode()
    assert "Fidelity (surfaces)" in markdown and "real-only model of seed 0" in markdown
    assert "| copies | pit (hardest) | 1.000 |" in markdown
    html = store.get_bytes("reports/demo/report.html").decode()
    assert "figures/surfaces-fidelity.png" in html


@pytest.mark.e2e
def test_fidelity_fails_clearly_without_the_real_seed0_model(copies_run, tmp_path):
    from scarce.trainer.fidelity import FidelityError, run_fidelity_unit

    _, plan, store, _ = copies_run
    copy = tmp_path / "store"
    shutil.copytree(store.uri.removeprefix("file://"), copy)
    (copy / "results/demo/surfaces/real/kfull/seed0.json").unlink()
    split = json.loads((copy / "results/demo/surfaces/split.json").read_text())
    (unit,) = bind_digests(plan.fidelity, {"surfaces": split["splitDigest"]})
    with pytest.raises(FidelityError, match=r"needs the real-only model of seed 0, but its "
                       r"result .*real/kfull/seed0\.json is missing \(did "
                       r"train/surfaces/real/kfull/seed0 fail\?\)") as error:
        run_fidelity_unit(unit, open_store(copy))
    assert exit_code_for(error.value) == EXIT_PERMANENT


@pytest.mark.e2e
def test_spec_weights_serve_as_a_second_named_extractor(copies_run):
    from scarce.trainer.fidelity import run_fidelity_unit

    _, plan, store, _ = copies_run
    split = store.get_json("results/demo/surfaces/split.json")
    (unit,) = bind_digests(plan.fidelity, {"surfaces": split["splitDigest"]})
    weights = "models/demo/surfaces/real-seed0.pt"  # any state_dict in the store will do
    unit = unit.model_copy(update={"model": unit.model.model_copy(
        update={"pretrained": True, "weights_uri": weights})})
    result = run_fidelity_unit(unit, store)
    (other,) = result["alternatives"]
    assert other["extractor"]["name"] == "pretrained weights (model.weightsUri)"
    assert other["extractor"]["weights"] == weights
    # The same weights give the same numbers as the default extractor.
    for cls, measured in result["sources"]["copies"]["perClass"].items():
        again = other["sources"]["copies"]["perClass"][cls]
        assert again["meanCosine"] == pytest.approx(measured["meanCosine"], abs=1e-6)
