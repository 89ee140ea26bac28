"""End to end on one machine: spec -> frozen split -> real trainer processes -> reducer -> report.

These run the real `scarce-trainer` worker processes with real timm models on real image files
(the procedural demo data, and the real Magnetic Tile images in ../shared), shrunk to a few
epochs at small resolution so the whole module stays within a couple of minutes on 2 cores.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from scarce.operator.local import LocalExecutor, RunOutcome
from scarce.operator.plan import plan_benchmark
from scarce.operator.spec import validate_document
from scarce.trainer.datasets import generate_demo
from scarce.trainer.store import open_store
from scarce.trainer.unit import EXIT_PERMANENT

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
MAGNETIC_TILE = REPO.parent / "shared" / "datasets" / "magnetic-tile"
FAST_SCHEDULE = {"epochs": 2, "batchSize": 32, "lr": 0.003}
FAST_MODEL = {"backbone": "test_resnet", "imageSize": 32, "channels": 1}


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "data"
    generate_demo(root, seed=0)
    return root


def demo_document(data: Path, store: str, **spec_overrides) -> dict:
    """The shipped demo spec, pointed at test data and shrunk to a few seconds per unit."""
    document = yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())
    spec = document["spec"]
    spec["storage"] = {"uri": store}
    spec["datasets"][0]["source"] = str(data / "surfaces")
    spec["synthetic"][0]["uri"] = str(data / "vendor-drop")
    spec["synthetic"][0]["perClass"] = 12
    spec["seeds"] = 3
    spec["model"] = dict(FAST_MODEL)
    spec["schedule"] = dict(FAST_SCHEDULE)
    spec.update(spec_overrides)
    return document


def run_document(document: dict, tmp_path: Path, workers: int = 2) -> tuple[RunOutcome, object]:
    plan = plan_benchmark(validate_document(document), base_dir=tmp_path)
    outcome = LocalExecutor(plan, workers=workers, log_dir=tmp_path / "logs").run()
    return outcome, plan


def result_files(folder: Path) -> list[Path]:
    """Result objects under a folder (not the store's sha256 sidecars, not pilot results)."""
    return [
        p for p in sorted(folder.rglob("seed*.json"))
        if "pilot" not in p.parts and ".scarce-sha256" not in p.parts
    ]


def read_results(store_root: Path, bench: str, dataset: str) -> list[dict]:
    folder = store_root / "results" / bench / dataset
    return [json.loads(p.read_text()) for p in result_files(folder)]


@pytest.fixture(scope="module")
def demo_run(demo_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo-run")
    store = tmp / "store"
    outcome, plan = run_document(demo_document(demo_data, str(store)), tmp)
    return outcome, plan, store, tmp


def test_demo_run_writes_the_report_with_the_contract_fields(demo_run):
    outcome, plan, store, _ = demo_run
    assert not outcome.failed, outcome.failed
    assert outcome.count("done") == plan.total
    report = json.loads((store / "reports" / "demo" / "report.json").read_text())
    assert (store / "reports" / "demo" / "report.md").read_text().startswith("# SCARCE report")
    (dataset,) = report["datasets"]
    assert dataset["dataset"] == "surfaces" and dataset["hardestClass"] == "pit"
    assert set(dataset["arms"]) == {"real", "placebo", "vendor"}
    for arm in dataset["arms"].values():
        assert set(arm["perSeed"]) == {"0", "1", "2"}
        assert {"mean", "sd"} <= set(arm)
    pairs = {(c["arm"], c["baseline"]) for c in dataset["comparisons"]}
    assert pairs == {("vendor", "real"), ("placebo", "real"), ("vendor", "placebo")}
    for comparison in dataset["comparisons"]:
        assert {"arm", "baseline", "gainPp", "z", "n"} <= set(comparison)
        assert comparison["n"] == 3


def test_report_per_seed_values_are_the_result_files_values(demo_run):
    _, _, store, _ = demo_run
    report = json.loads((store / "reports" / "demo" / "report.json").read_text())
    per_seed = report["datasets"][0]["arms"]
    results = read_results(store, "demo", "surfaces")
    assert len(results) == 9
    for result in results:
        unit = result["unit"]
        expected = result["perClassAccuracy"]["pit"]
        assert per_seed[unit["arm"]]["perSeed"][str(unit["seed"])] == pytest.approx(expected)
        matrix = np.array(result["confusionMatrix"])
        pit = result["classes"].index("pit")
        assert expected == pytest.approx(100 * matrix[pit, pit] / matrix[pit].sum())


def test_report_z_equals_equation_1_recomputed_from_its_own_per_seed_values(demo_run):
    _, _, store, _ = demo_run
    dataset = json.loads((store / "reports" / "demo" / "report.json").read_text())["datasets"][0]
    for comparison in dataset["comparisons"]:
        arm = dataset["arms"][comparison["arm"]]["perSeed"]
        base = dataset["arms"][comparison["baseline"]]["perSeed"]
        d = [arm[s] - base[s] for s in sorted(arm)]
        assert comparison["gainPp"] == pytest.approx(statistics.fmean(d), abs=1e-5)
        if statistics.stdev(d) == 0:
            assert comparison["z"] is None and "zero variance" in comparison["note"]
        else:
            z = statistics.fmean(d) / (statistics.stdev(d) / math.sqrt(len(d)))
            assert comparison["z"] == pytest.approx(z, rel=1e-5)


def test_placebo_adds_as_many_real_duplicates_as_the_vendor_adds_class_by_class(demo_run):
    _, _, store, _ = demo_run
    results = {(r["unit"]["arm"], r["unit"]["seed"]): r for r in
               read_results(store, "demo", "surfaces")}
    for seed in range(3):
        vendor = results[("vendor", seed)]["trainComposition"]
        placebo = results[("placebo", seed)]["trainComposition"]
        real = results[("real", seed)]["trainComposition"]
        assert vendor["synthetic"] == {"pit": 12, "scratch": 12, "spot": 12}
        assert placebo["duplicated"] == vendor["synthetic"]
        assert real["real"] == vendor["real"] == placebo["real"]
        assert results[("placebo", seed)]["trainImages"] == results[("vendor", seed)]["trainImages"]


def test_every_result_records_digest_config_timings_and_versions(demo_run):
    _, _, store, _ = demo_run
    split = json.loads((store / "results" / "demo" / "surfaces" / "split.json").read_text())
    for result in read_results(store, "demo", "surfaces"):
        assert result["splitDigest"] == split["splitDigest"]
        assert result["unit"]["schedule"]["epochs"] == FAST_SCHEDULE["epochs"]
        assert result["throughput"] > 0 and result["timings"]["train"] > 0
        assert {"torch", "timm", "numpy", "python"} <= set(result["versions"])
        assert result["evalRole"] == "test"


def test_test_split_holds_only_real_images_never_seen_in_training(demo_run):
    _, _, store, _ = demo_run
    split = json.loads((store / "results" / "demo" / "surfaces" / "split.json").read_text())
    manifest = json.loads((store / split["manifestKey"]).read_text())
    test_sha = {i["sha256"] for i in manifest["items"] if i["role"] == "test"}
    train_sha = {i["sha256"] for i in manifest["items"] if i["role"] != "test"}
    synthetic = json.loads((store / split["synthetic"]["vendor"]["manifestKey"]).read_text())
    assert not test_sha & train_sha
    assert not test_sha & {i["sha256"] for i in synthetic["items"]}
    assert all(i["key"].split("/")[0] == i["label"] for i in manifest["items"])


def test_rerun_resumes_and_trains_nothing_again(demo_run, demo_data):
    outcome, _, store, tmp = demo_run
    before = {p: p.stat().st_mtime_ns for p in result_files(store / "results")}
    again, plan = run_document(demo_document(demo_data, str(store)), tmp)
    assert again.count("skipped") == plan.total - 1  # everything but the reducer
    assert again.count("done") == 1
    after = {p: p.stat().st_mtime_ns for p in result_files(store / "results")}
    assert before == after
    assert again.report == outcome.report


def test_trainer_refuses_a_split_whose_manifest_was_changed(demo_run, tmp_path):
    _, plan, store_root, _ = demo_run
    split = json.loads((store_root / "results/demo/surfaces/split.json").read_text())
    digest = split["splitDigest"]
    tampered_store = tmp_path / "store"
    subprocess.run(["cp", "-r", str(store_root), str(tampered_store)], check=True)
    store = open_store(str(tampered_store))
    manifest = store.get_json(split["manifestKey"])
    manifest["items"][0]["role"] = "train" if manifest["items"][0]["role"] == "test" else "test"
    store.put_json(split["manifestKey"], manifest)  # a well-formed object with other content
    unit = plan.train[0].model_copy(
        update={"split_digest": digest, "storage": plan.train[0].storage.model_copy(
            update={"uri": f"file://{tampered_store}"})}
    )
    unit_file = tmp_path / "unit.json"
    unit_file.write_text(json.dumps(unit.to_json_dict()))
    for result in (tampered_store / "results").rglob("seed0.json"):
        result.unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "scarce.trainer.cli", "train", "--unit", str(unit_file)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == EXIT_PERMANENT, proc.stderr
    assert split["manifestKey"] in proc.stderr
    assert digest in proc.stderr and "refusing to train" in proc.stderr
    assert not (tampered_store / unit.result_key).exists()


def test_trainer_refuses_a_shard_corrupted_on_disk(demo_run, tmp_path):
    _, plan, store_root, _ = demo_run
    split = json.loads((store_root / "results/demo/surfaces/split.json").read_text())
    copy = tmp_path / "store"
    subprocess.run(["cp", "-r", str(store_root), str(copy)], check=True)
    shard = copy / split["shardKey"]
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF
    shard.write_bytes(bytes(data))
    unit = plan.train[0].model_copy(update={
        "split_digest": split["splitDigest"],
        "storage": plan.train[0].storage.model_copy(update={"uri": f"file://{copy}"}),
    })
    (copy / unit.result_key).unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "scarce.trainer.cli", "train", "--unit-json",
         json.dumps(unit.to_json_dict())],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == EXIT_PERMANENT, proc.stderr
    assert "IntegrityError" in proc.stderr and split["shardKey"] in proc.stderr
    assert not (copy / unit.result_key).exists()


def test_a_failed_split_fails_its_dataset_and_the_others_still_report(demo_data, tmp_path):
    document = demo_document(demo_data, str(tmp_path / "store"), seeds=2)
    good = document["spec"]["datasets"][0]
    document["spec"]["datasets"].append(
        {**good, "name": "missing", "source": str(tmp_path / "no-such-folder")}
    )
    outcome, _ = run_document(document, tmp_path)
    failed = set(outcome.failed)
    assert "split/missing" in failed
    assert {k.split("/")[1] for k in failed} == {"missing"}, failed  # only that dataset's units
    assert outcome.report is not None
    assert [d["dataset"] for d in outcome.report["datasets"]] == ["surfaces"]


def test_interrupted_run_keeps_only_whole_results_and_resumes(demo_data, tmp_path):
    store = tmp_path / "store"
    document = demo_document(demo_data, str(store), schedule={**FAST_SCHEDULE, "epochs": 4})
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(document))
    scarce = [sys.executable, "-m", "scarce.operator.cli"]
    # A shell's background job inherits SIGINT ignored, and Python then installs no Ctrl-C
    # handler: give the child the default disposition, as a terminal would.
    proc = subprocess.Popen(
        [*scarce, "run", str(spec_file), "--workers", "2", "--log-dir", str(tmp_path / "logs")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 180
    results = store / "results" / "demo" / "surfaces"
    while time.monotonic() < deadline and not result_files(results):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "run the same command again to resume" in output
    kept = result_files(results)
    assert 1 <= len(kept) < 9
    for path in kept:
        assert json.loads(path.read_text())["perClassAccuracy"]
    assert not [p for p in store.rglob("*.scarce-tmp")]
    again = subprocess.run(
        [*scarce, "run", str(spec_file), "--workers", "2", "--log-dir", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=600,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{len(kept) + 1} reused" in again.stdout
    assert len(result_files(results)) == 9
    assert "Gain (pp)" in again.stdout and "vendor" in again.stdout


def test_run_on_an_s3_store(demo_data, tmp_path, s3_server, monkeypatch):
    """The same pipeline with the store in a real S3 server process (moto), via the MinIO client."""
    bucket = "scarce-e2e"
    s3_server.make_bucket(bucket)
    for name, value in {
        "SCARCE_S3_ENDPOINT": s3_server.endpoint,
        "SCARCE_S3_ACCESS_KEY": s3_server.access_key,
        "SCARCE_S3_SECRET_KEY": s3_server.secret_key,
    }.items():
        monkeypatch.setenv(name, value)
    document = demo_document(demo_data, f"s3://{bucket}/bench", seeds=2,
                             arms=["real", "vendor"])
    outcome, _ = run_document(document, tmp_path)
    assert not outcome.failed, outcome.failed
    store = open_store(f"s3://{bucket}/bench")
    report = store.get_json("reports/demo/report.json")
    assert report["datasets"][0]["comparisons"][0]["n"] == 2
    keys = store.list("results/demo/surfaces/")
    assert "results/demo/surfaces/vendor/kfull/seed1.json" in keys
    assert store.recorded_sha256("reports/demo/report.json")


def test_reduced_magnetic_tile_benchmark(tmp_path):
    """The shipped Magnetic Tile example, shrunk: all 1,344 real images through the real loader,
    split, the transplant and cutpaste generators, the trainer and the reducer."""
    document = yaml.safe_load((REPO / "examples" / "magnetic-tile.yaml").read_text())
    spec = document["spec"]
    spec["storage"] = {"uri": str(tmp_path / "store")}
    spec["datasets"][0]["source"] = str(MAGNETIC_TILE)
    spec["synthetic"] = [{**s, "perClass": 4} for s in spec["synthetic"]]
    spec["seeds"] = 2
    spec["model"] = {"backbone": "test_resnet", "imageSize": 32, "channels": 1}
    spec["schedule"] = {"epochs": 1, "batchSize": 64}
    outcome, _ = run_document(document, tmp_path)
    assert not outcome.failed, outcome.failed
    store = tmp_path / "store" / "results" / "magnetic-tile" / "magnetic-tile"
    split = json.loads((store / "split.json").read_text())
    counts = split["counts"]
    assert sum(sum(c.values()) for c in counts.values()) == 1344
    # Whole groups of near-duplicate exposures are dealt, so the test share is near, not exact.
    assert abs(counts["Blowhole"]["test"] - round(115 * 0.3)) <= 6
    assert split["goodClass"] == "Free"
    manifest = json.loads((tmp_path / "store" / split["manifestKey"]).read_text())
    assert manifest["nearDuplicateDistance"] == 4
    # Near-duplicate exposures are grouped before the split (hashed from the originals); the
    # leakage check re-hashes at the model's size, where a few more pairs come within 4 bits.
    # Without grouping this split had 565 train/test near-duplicate pairs.
    same_class = {m["test"] for m in split["leakage"]["trainTest"]
                  if m["trainLabel"] == m["testLabel"]}
    n_test = sum(c["test"] for c in counts.values())
    assert len(same_class) < 0.1 * n_test, sorted(same_class)[:3]
    for source in ("transplant", "cutpaste"):
        assert split["synthetic"][source]["counts"] == {
            c: 4 for c in ("Blowhole", "Break", "Crack", "Fray", "Uneven")}
    dataset = outcome.report["datasets"][0]
    assert dataset["hardestClass"] == "Blowhole"
    assert set(dataset["arms"]) == {"real", "placebo", "transplant", "cutpaste"}
    results = read_results(tmp_path / "store", "magnetic-tile", "magnetic-tile")
    assert len(results) == 8
    for result in results:
        assert sum(result["evalCounts"].values()) == sum(c["test"] for c in counts.values())


def test_scarce_run_cli_prints_the_table(demo_data, tmp_path):
    document = demo_document(demo_data, str(tmp_path / "store"), seeds=2)
    spec_file = tmp_path / "demo.yaml"
    spec_file.write_text(yaml.safe_dump(document))
    proc = subprocess.run(
        [sys.executable, "-m", "scarce.operator.cli", "run", str(spec_file), "--workers", "1"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "below the report's minimum of 7" in proc.stderr
    for column in ("Dataset", "Hardest class", "Real-only", "Gain (pp)", "z vs placebo"):
        assert column in proc.stdout
    assert "surfaces" in proc.stdout and "pit" in proc.stdout
    assert "reports/demo/report.json" in proc.stdout


def test_same_unit_and_seed_give_the_same_result_on_cpu(demo_run, tmp_path):
    _, plan, store_root, _ = demo_run
    copy = tmp_path / "store"  # rerun in a copy: the shared store's results stay as written
    subprocess.run(["cp", "-r", str(store_root), str(copy)], check=True)
    split = json.loads((copy / "results/demo/surfaces/split.json").read_text())
    unit = next(u for u in plan.train if u.arm == "vendor" and u.seed == 1)
    unit = unit.model_copy(update={
        "split_digest": split["splitDigest"],
        "storage": unit.storage.model_copy(update={"uri": f"file://{copy}"}),
    })
    first = json.loads((copy / unit.result_key).read_text())
    proc = subprocess.run(
        [sys.executable, "-m", "scarce.trainer.cli", "train", "--force", "--unit-json",
         json.dumps(unit.to_json_dict())],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    second = json.loads((copy / unit.result_key).read_text())
    assert second["finishedAt"] != first["finishedAt"]  # it really ran again
    assert second["confusionMatrix"] == first["confusionMatrix"]
    assert second["perClassAccuracy"] == first["perClassAccuracy"]
    assert second["finalLoss"] == first["finalLoss"]


def test_packed_seeds_in_one_process_equal_the_separate_units(demo_run, tmp_path):
    """Seed packing: three seeds of one arm in one `scarce-trainer train` process give the same
    results as the three units the local run trained in separate calls (the cached shard is
    shared, the model, data order and augmentation are still a function of each unit's seed)."""
    _, plan, store_root, _ = demo_run
    copy = tmp_path / "store"
    subprocess.run(["cp", "-r", str(store_root), str(copy)], check=True)
    split = json.loads((copy / "results/demo/surfaces/split.json").read_text())
    units = [
        u.model_copy(update={
            "split_digest": split["splitDigest"],
            "storage": u.storage.model_copy(update={"uri": f"file://{copy}"}),
        })
        for u in plan.train if u.arm == "placebo" and u.k is None
    ]
    assert len(units) == 3
    separate = [json.loads((copy / u.result_key).read_text()) for u in units]
    # The local run's two workers had one thread each; float sums depend on the thread count.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "scarce.trainer.cli", "train", "--force", "--unit-json",
         json.dumps([u.to_json_dict() for u in units])],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count(" done in ") == 3, proc.stderr
    for unit, first in zip(units, separate, strict=True):
        packed = json.loads((copy / unit.result_key).read_text())
        assert packed["finishedAt"] != first["finishedAt"]
        assert packed["confusionMatrix"] == first["confusionMatrix"]
        assert packed["finalLoss"] == first["finalLoss"]


def test_a_pack_exits_with_its_worst_outcome_and_stops_at_a_permanent_error(demo_run, tmp_path):
    _, plan, store_root, _ = demo_run
    split = json.loads((store_root / "results/demo/surfaces/split.json").read_text())
    good = plan.train[0].model_copy(update={"split_digest": split["splitDigest"]})
    bad = good.model_copy(update={"split_digest": "0" * 64, "seed": 1})
    later = good.model_copy(update={"seed": 2})
    proc = subprocess.run(
        [sys.executable, "-m", "scarce.trainer.cli", "train", "--unit-json",
         json.dumps([u.to_json_dict() for u in (good, bad, later)])],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == EXIT_PERMANENT, proc.stderr
    assert f"unit {good.key} skipped" in proc.stderr  # its valid result is kept, not retrained
    assert f"unit {bad.key} failed" in proc.stderr and "0" * 64 in proc.stderr
    assert later.key not in proc.stderr  # not started after the permanent failure


def test_auto_hardest_class_pilot_and_few_shot(demo_data, tmp_path):
    document = demo_document(
        demo_data, str(tmp_path / "store"), seeds=2, arms=["real", "vendor"], fewShot=[2],
        pilotSeeds=2,
    )
    dataset = document["spec"]["datasets"][0]
    dataset["hardestClass"] = "auto"
    dataset["split"] = {"testFraction": 0.3, "valFraction": 0.2, "splitSeed": 0}
    outcome, plan = run_document(document, tmp_path)
    assert not outcome.failed, outcome.failed
    assert len(plan.pilot) == 2
    store = tmp_path / "store" / "results" / "demo" / "surfaces"
    pilots = [json.loads(p.read_text()) for p in sorted((store / "pilot").glob("seed*.json"))]
    assert [p["evalRole"] for p in pilots] == ["val", "val"]
    split = json.loads((store / "split.json").read_text())
    assert all(sum(p["evalCounts"].values()) == sum(c["val"] for c in split["counts"].values())
               for p in pilots)
    report = outcome.report["datasets"][0]
    selection = report["hardestClassSelection"]
    assert set(selection["evidence"]) == {"pit", "scratch", "spot"}
    means = {c: statistics.fmean(p["perClassAccuracy"][c] for p in pilots)
             for c in selection["evidence"]}
    lowest = min(means.values())
    tied = [c for c, m in means.items() if m == pytest.approx(lowest)]
    assert selection["chosen"] == min(tied, key=lambda c: selection["evidence"][c]["trainLabels"])
    assert report["hardestClass"] == selection["chosen"]
    few_shot = [r for r in read_results(tmp_path / "store", "demo", "surfaces")
                if r["unit"]["k"] == 2]
    assert len(few_shot) == 4
    for result in few_shot:
        assert result["trainComposition"]["real"] == {c: 2 for c in result["classes"]}
    curves = report["fewShot"]["curves"]
    assert set(curves) == {"real", "vendor"}
    assert curves["real"]["2"]["n"] == 2
    (saving,) = report["fewShot"]["labelSaving"]
    assert saving["arm"] == "vendor" and saving["kMin"] == 2
    figure = tmp_path / "store" / "reports" / "demo" / "figures" / "surfaces-few-shot.png"
    assert figure.read_bytes().startswith(b"\x89PNG")
    assert curves["vendor"]["2"]["mean"] == pytest.approx(statistics.fmean(
        r["perClassAccuracy"][selection["chosen"]] for r in few_shot
        if r["unit"]["arm"] == "vendor"))


def test_scarce_report_rebuilds_the_identical_report_from_results_alone(demo_run, tmp_path):
    _, _, store, _ = demo_run
    written = store / "reports" / "demo"
    out = tmp_path / "rebuilt"
    proc = subprocess.run(
        [sys.executable, "-m", "scarce.operator.cli", "report", f"{store}/results/demo",
         "--out", str(out), "--format", "md"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.json").read_bytes() == (written / "report.json").read_bytes()
    assert proc.stdout == (written / "report.md").read_text()
    for name in ("report.html", "per_seed.csv", "all_classes.csv",
                 "figures/surfaces-paired-seeds.png"):
        assert (out / name).read_bytes() == (written / name).read_bytes(), name


def test_report_on_another_hardest_class_from_the_same_results(demo_run):
    _, _, store_root, _ = demo_run
    split = json.loads((store_root / "results/demo/surfaces/split.json").read_text())
    other = next(c for c in split["counts"] if c not in (split["goodClass"], "pit"))
    cli = [sys.executable, "-m", "scarce.operator.cli", "report", str(store_root / "results/demo")]
    proc = subprocess.run([*cli, "--hardest-class", f"surfaces={other}", "--format", "json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)["datasets"][0]
    assert summary["hardestClass"] == other
    for arm, values in summary["arms"].items():
        expected = [
            r["perClassAccuracy"][other] for r in read_results(store_root, "demo", "surfaces")
            if r["unit"]["arm"] == arm and r["unit"].get("k") is None
        ]
        assert values["mean"] == pytest.approx(statistics.fmean(expected), abs=1e-6)
    bad = subprocess.run([*cli, "--hardest-class", "surfaces=nonesuch"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert "nonesuch" in bad.stderr and "not a defect class" in bad.stderr
    assert other in bad.stderr


def test_report_files_hold_every_unit_and_every_class(demo_run):
    import pandas as pd

    _, _, store, _ = demo_run
    folder = store / "reports" / "demo"
    per_seed = pd.read_csv(folder / "per_seed.csv")
    results = read_results(store, "demo", "surfaces")
    assert len(per_seed) == len(results) == 9
    for result in results:
        row = per_seed[(per_seed.arm == result["unit"]["arm"])
                       & (per_seed.seed == result["unit"]["seed"])].iloc[0]
        assert row.hardestAccuracy == pytest.approx(result["perClassAccuracy"]["pit"], abs=1e-4)
    classes = pd.read_csv(folder / "all_classes.csv")
    assert len(classes) == 3 * 4  # every class in every arm, nothing left out
    html = (folder / "report.html").read_text()
    assert "data:image/png;base64," in html and "Verdicts" in html
    report = json.loads((folder / "report.json").read_text())
    for comparison in report["datasets"][0]["comparisons"]:
        for field in ("pValue", "ci95", "ciBootstrap95", "wilcoxonP", "probImprovement",
                      "holmP", "verdict"):
            assert field in comparison


def test_magnetic_tile_auto_hardest_class_records_pilot_evidence(tmp_path):
    """hardestClass: auto on the real Magnetic Tile data: the pilot trains on a validation split
    carved from the training pool and its evidence for every defect class is in the report."""
    document = {
        "apiVersion": "scarce.dev/v1alpha1", "kind": "ScarceBenchmark",
        "metadata": {"name": "mt-auto"},
        "spec": {
            "storage": {"uri": str(tmp_path / "store")},
            "datasets": [{"name": "magnetic-tile", "format": "magnetic-tile",
                          "source": str(MAGNETIC_TILE), "hardestClass": "auto",
                          "split": {"testFraction": 0.3, "valFraction": 0.15}}],
            "arms": ["real"], "seeds": 2, "pilotSeeds": 2,
            "model": {"backbone": "test_resnet", "imageSize": 32, "channels": 1},
            "schedule": {"epochs": 1, "batchSize": 64},
        },
    }
    outcome, _ = run_document(document, tmp_path)
    assert not outcome.failed, outcome.failed
    selection = outcome.report["datasets"][0]["hardestClassSelection"]
    assert set(selection["evidence"]) == {"Blowhole", "Break", "Crack", "Fray", "Uneven"}
    split = json.loads(
        (tmp_path / "store/results/mt-auto/magnetic-tile/split.json").read_text())
    for cls, evidence in selection["evidence"].items():
        counts = split["counts"][cls]
        assert evidence["trainLabels"] == counts["train"] + counts["val"]
        assert evidence["seeds"] == 2
    assert outcome.report["datasets"][0]["hardestClass"] == selection["chosen"]
    assert selection["chosen"] in selection["evidence"]
