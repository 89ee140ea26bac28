"""Spec -> work units (scarce.operator.plan): counts per stage, deterministic keys, resolved
URIs, config hashes and split digests. Pure functions: no store, no cluster."""

from __future__ import annotations

import re
from itertools import product
from pathlib import Path
from typing import Any

import pytest

from scarce.operator.plan import Plan, bind_digests, plan_benchmark, resolve_uri
from scarce.operator.spec import ScarceBenchmark, validate_document
from scarce.trainer.unit import WorkUnit

BASE = Path("/srv/specs/team")


def document(
    *,
    datasets: tuple[str, ...] = ("tiles",),
    synthetic: tuple[str, ...] = ("vendor",),
    seeds: int = 3,
    **spec: Any,
) -> dict[str, Any]:
    """A valid ScarceBenchmark document; extra keyword arguments go into `spec` as is."""
    body: dict[str, Any] = {
        "storage": {"uri": "runs/store"},
        "datasets": [
            {"name": name, "format": "imagefolder", "source": f"data/{name}", "hardestClass": "pit"}
            for name in datasets
        ],
        "synthetic": [
            {"name": name, "kind": "external", "uri": f"drops/{name}", "perClass": 10}
            for name in synthetic
        ],
        "seeds": seeds,
        **spec,
    }
    return {
        "apiVersion": "scarce.dev/v1alpha1",
        "kind": "ScarceBenchmark",
        "metadata": {"name": "bench"},
        "spec": body,
    }


def plan_of(doc: dict[str, Any], base_dir: Path = BASE) -> Plan:
    return plan_benchmark(validate_document(doc), base_dir=base_dir)


def with_auto(doc: dict[str, Any], index: int = 0) -> dict[str, Any]:
    """Make dataset `index` pick its hardest class with the pilot stage."""
    doc["spec"]["datasets"][index].update(hardestClass="auto", split={"valFraction": 0.2})
    return doc


def all_units(plan: Plan) -> list[WorkUnit]:
    return [unit for _, units in plan.stages for unit in units]


# --- counts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "split", "train"),
    [
        # 1 dataset, arm real only, 2 seeds
        (document(synthetic=(), seeds=2), 1, 2),
        # 1 dataset, arms real placebo vendor, 3 seeds: 3 * 3
        (document(), 1, 9),
        # 2 datasets, arms real placebo vendor cutpaste, 7 seeds: 2 * 4 * 7
        (document(datasets=("tiles", "rails"), synthetic=("vendor", "cutpaste"), seeds=7), 2, 56),
        # explicit arms without placebo: 2 datasets * 2 arms * 3 seeds
        (document(datasets=("tiles", "rails"), arms=["real", "vendor"]), 2, 12),
        # few-shot adds real and vendor (not placebo) at k = 2, 3, 5: 9 + 2 * 3 * 3
        (document(fewShot=[2, 3, 5]), 1, 27),
    ],
)
def test_unit_counts(doc, split, train):
    plan = plan_of(doc)
    assert len(plan.split) == split
    assert len(plan.pilot) == 0
    assert len(plan.train) == train
    # one fidelity unit per dataset with synthetic sources
    assert len(plan.fidelity) == (split if doc["spec"]["synthetic"] else 0)
    assert plan.total == split + train + len(plan.fidelity) + 1
    assert [name for name, _ in plan.stages] == ["split", "pilot", "train", "fidelity", "reduce"]
    assert plan.stages[-1][1] == [plan.reduce]


def test_full_pool_units_cover_dataset_arm_seed():
    plan = plan_of(document(datasets=("tiles", "rails"), synthetic=("vendor", "cutpaste")))
    full = {(u.dataset.name, u.arm, u.seed) for u in plan.train if u.k is None}
    arms = ["real", "placebo", "vendor", "cutpaste"]
    assert full == set(product(["tiles", "rails"], arms, range(3)))


def test_few_shot_units_are_real_and_synthetic_never_placebo():
    plan = plan_of(document(synthetic=("vendor", "cutpaste"), seeds=2, fewShot=[3, 2]))
    few = [u for u in plan.train if u.k is not None]
    assert {(u.arm, u.k, u.seed) for u in few} == set(
        product(["real", "vendor", "cutpaste"], [2, 3], range(2))
    )
    assert len(few) == 3 * 2 * 2
    assert all(u.placebo_source is None for u in few)
    placebo = [u for u in plan.train if u.arm == "placebo"]
    assert placebo and all(u.k is None for u in placebo)


def test_pilot_units_only_for_hardest_class_auto():
    doc = with_auto(document(datasets=("tiles", "rails")), index=1)
    doc["spec"]["pilotSeeds"] = 4
    plan = plan_of(doc)
    assert [(u.dataset.name, u.arm, u.seed) for u in plan.pilot] == [
        ("rails", "real", 0), ("rails", "real", 1), ("rails", "real", 2), ("rails", "real", 3)
    ]
    assert [u.key for u in plan.pilot] == [f"pilot/rails/seed{s}" for s in range(4)]
    assert all(u.stage == "pilot" and u.k is None for u in plan.pilot)
    assert plan.total == 2 + 4 + 2 * 3 * 3 + 2 + 1


def test_pilot_seeds_default_to_three():
    plan = plan_of(with_auto(document()))
    assert [u.seed for u in plan.pilot] == [0, 1, 2]


def test_exactly_one_reduce_unit_over_every_dataset():
    plan = plan_of(document(datasets=("tiles", "rails"), fewShot=[2]))
    units = all_units(plan)
    assert [u for u in units if u.stage == "reduce"] == [plan.reduce]
    assert plan.reduce.key == "reduce"
    assert plan.reduce.result_key == "reports/bench/report.json"
    assert [d.name for d in plan.reduce.datasets] == ["tiles", "rails"]
    assert plan.reduce.arms == ["real", "placebo", "vendor"]
    assert plan.reduce.seeds == 3


def test_split_units_carry_every_synthetic_source():
    plan = plan_of(document(datasets=("tiles", "rails"), synthetic=("vendor", "cutpaste")))
    assert [u.key for u in plan.split] == ["split/tiles", "split/rails"]
    for unit in plan.split:
        assert [s.name for s in unit.synthetic] == ["vendor", "cutpaste"]
    assert plan.split[0].result_key == "results/bench/tiles/split.json"


# --- keys -------------------------------------------------------------------------------------


def busy_document() -> dict[str, Any]:
    doc = with_auto(document(datasets=("tiles", "rails"), synthetic=("vendor", "cutpaste")))
    doc["spec"]["fewShot"] = [2, 5]
    return doc


def test_keys_and_result_keys_are_unique():
    units = all_units(plan_of(busy_document()))
    keys = [u.key for u in units]
    result_keys = [u.result_key for u in units]
    assert len(set(keys)) == len(keys)
    assert len(set(result_keys)) == len(result_keys)


def test_planning_twice_gives_identical_units():
    first, second = all_units(plan_of(busy_document())), all_units(plan_of(busy_document()))
    assert [u.key for u in first] == [u.key for u in second]
    assert [u.to_json_dict() for u in first] == [u.to_json_dict() for u in second]
    assert [u.config_hash() for u in first] == [u.config_hash() for u in second]
    assert all(re.fullmatch(r"[0-9a-f]{64}", u.config_hash()) for u in first)


def test_train_result_keys_follow_the_store_layout():
    plan = plan_of(busy_document())
    pattern = re.compile(
        r"results/bench/(?P<dataset>[a-z]+)/(?P<arm>[a-z]+)/k(?P<k>full|\d+)/seed(?P<seed>\d+)\.json"
    )
    for unit in plan.train:
        match = pattern.fullmatch(unit.result_key)
        assert match, unit.result_key
        assert match["dataset"] == unit.dataset.name
        assert match["arm"] == unit.arm
        assert match["k"] == ("full" if unit.k is None else str(unit.k))
        assert int(match["seed"]) == unit.seed
    keys = {u.result_key for u in plan.train}
    assert "results/bench/tiles/real/kfull/seed0.json" in keys
    assert "results/bench/rails/cutpaste/k5/seed2.json" in keys
    assert "results/bench/tiles/placebo/kfull/seed1.json" in keys
    assert "results/bench/tiles/placebo/k2/seed1.json" not in keys


def test_unit_keys_name_stage_dataset_arm_k_and_seed():
    keys = {u.key for u in all_units(plan_of(busy_document()))}
    assert {"split/tiles", "pilot/tiles/seed2", "train/rails/vendor/kfull/seed0",
            "train/tiles/real/k2/seed1", "reduce"} <= keys
    pilot = next(u for u in plan_of(busy_document()).pilot)
    assert pilot.result_key == "results/bench/tiles/pilot/seed0.json"


# --- URIs -------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_base_dir(tmp_path):
    doc = document()
    doc["spec"]["datasets"][0]["source"] = "../data/tiles"
    plan = plan_of(doc, base_dir=tmp_path / "specs")
    for unit in all_units(plan):
        assert unit.storage.uri == f"file://{tmp_path}/specs/runs/store"
    assert plan.split[0].dataset.source == f"file://{tmp_path}/data/tiles"
    assert plan.split[0].synthetic[0].uri == f"file://{tmp_path}/specs/drops/vendor"
    assert all(u.dataset.source == f"file://{tmp_path}/data/tiles" for u in plan.train)


def test_absolute_and_remote_uris_are_kept(tmp_path):
    doc = document()
    doc["spec"]["storage"] = {"uri": "s3://scarce-results/team", "endpoint": "minio:9000"}
    doc["spec"]["datasets"][0]["source"] = "file:///data/tiles"
    doc["spec"]["synthetic"][0]["uri"] = "s3://vendor-drop/v2"
    plan = plan_of(doc, base_dir=tmp_path)
    assert plan.reduce.storage.uri == "s3://scarce-results/team"
    assert plan.reduce.storage.endpoint == "minio:9000"
    assert plan.split[0].dataset.source == "file:///data/tiles"
    assert plan.split[0].synthetic[0].uri == "s3://vendor-drop/v2"


def test_resolve_uri(tmp_path):
    assert resolve_uri("s3://bucket/prefix", tmp_path) == "s3://bucket/prefix"
    assert resolve_uri("file:///abs/store", tmp_path) == "file:///abs/store"
    assert resolve_uri("/abs/store", tmp_path) == "file:///abs/store"
    assert resolve_uri("store", tmp_path) == f"file://{tmp_path}/store"
    assert resolve_uri("a/../b", tmp_path) == f"file://{tmp_path}/b"


def test_credentials_do_not_travel_in_units():
    doc = document()
    doc["spec"]["storage"] = {"uri": "s3://bucket/p", "credentials": {"secretName": "minio"}}
    plan = plan_of(doc)
    assert plan.reduce.storage.to_json_dict() == {
        "uri": "s3://bucket/p", "endpoint": None, "secure": None
    }


# --- placebo ----------------------------------------------------------------------------------


def test_only_placebo_units_carry_the_placebo_source():
    doc = document(synthetic=("vendor", "cutpaste"), fewShot=[2], placeboMatches="cutpaste")
    plan = plan_of(doc)
    placebo = [u for u in plan.train if u.arm == "placebo"]
    assert len(placebo) == 3
    assert all(u.placebo_source == "cutpaste" for u in placebo)
    others = [u for u in all_units(plan) if u.arm != "placebo"]
    assert all(u.placebo_source is None for u in others)


def test_placebo_source_defaults_to_first_synthetic_source():
    plan = plan_of(document(synthetic=("vendor", "cutpaste")))
    assert {u.placebo_source for u in plan.train if u.arm == "placebo"} == {"vendor"}


# --- config hashes ----------------------------------------------------------------------------


def train_unit(plan: Plan, key: str) -> WorkUnit:
    return next(u for u in plan.train if u.key == key)


def test_config_hash_ignores_storage_and_threads():
    unit = plan_of(document()).train[0]
    moved = unit.model_copy(
        update={"storage": unit.storage.model_copy(update={"uri": "s3://elsewhere/x"}),
                "threads": 16}
    )
    assert moved.config_hash() == unit.config_hash()


def test_config_hash_survives_a_moved_relative_store():
    # Only the store is relative here; a relative dataset source would move too, and where
    # the data lies is part of the config.
    doc = document()
    doc["spec"]["datasets"][0]["source"] = "file:///data/tiles"
    here = plan_of(doc, base_dir=Path("/here")).train[0]
    there = plan_of(doc, base_dir=Path("/there")).train[0]
    assert (here.storage.uri, there.storage.uri) == (
        "file:///here/runs/store", "file:///there/runs/store"
    )
    assert here.config_hash() == there.config_hash()


def test_config_hash_changes_with_seed_arm_k_and_schedule():
    plan = plan_of(document(fewShot=[2]))
    base = train_unit(plan, "train/tiles/real/kfull/seed0")
    differ = [
        train_unit(plan, "train/tiles/real/kfull/seed1"),
        train_unit(plan, "train/tiles/vendor/kfull/seed0"),
        train_unit(plan, "train/tiles/placebo/kfull/seed0"),
        train_unit(plan, "train/tiles/real/k2/seed0"),
        train_unit(plan_of(document(fewShot=[2], schedule={"epochs": 31})), base.key),
        train_unit(plan_of(document(fewShot=[2], model={"imageSize": 64})), base.key),
    ]
    hashes = [base.config_hash()] + [u.config_hash() for u in differ]
    assert len(set(hashes)) == len(hashes)


def test_changing_a_synthetic_source_does_not_invalidate_real_results():
    before = plan_of(document())
    doc = document()
    doc["spec"]["synthetic"][0]["perClass"] = 80
    after = plan_of(doc)
    key = "train/tiles/real/kfull/seed0"
    assert train_unit(after, key).config_hash() == train_unit(before, key).config_hash()


@pytest.mark.parametrize("arm", ["vendor", "placebo"])
def test_changing_a_synthetic_source_invalidates_the_arms_that_use_it(arm):
    # A vendor (or placebo) result trained on perClass 10 must not be reused once perClass is
    # 80: the split unit remakes the synthetic set, but today train units carry no synthetic
    # config, so their config_hash (what existing_result compares) does not change.
    before = plan_of(document())
    doc = document()
    doc["spec"]["synthetic"][0]["perClass"] = 80
    after = plan_of(doc)
    key = f"train/tiles/{arm}/kfull/seed0"
    assert train_unit(after, key).config_hash() != train_unit(before, key).config_hash()


# --- split digests ----------------------------------------------------------------------------


def test_bind_digests_sets_each_units_split_digest():
    plan = plan_of(with_auto(document(datasets=("tiles", "rails"))))
    digests = {"tiles": "a" * 64, "rails": "b" * 64}
    units = plan.pilot + plan.train
    bound = bind_digests(units, digests)
    assert [u.key for u in bound] == [u.key for u in units]
    assert all(u.split_digest == digests[u.dataset.name] for u in bound)
    assert all(u.split_digest is None for u in units)  # the plan itself is untouched
    assert bound[0].config_hash() != units[0].config_hash()


def test_bind_digests_raises_for_an_unknown_dataset():
    plan = plan_of(document(datasets=("tiles", "rails")))
    with pytest.raises(KeyError, match="no split digest for dataset 'rails'"):
        bind_digests(plan.train, {"tiles": "a" * 64})


def test_plan_of_a_loaded_benchmark_is_typed():
    benchmark = validate_document(document())
    assert isinstance(benchmark, ScarceBenchmark)
    assert plan_benchmark(benchmark, base_dir=BASE).benchmark == "bench"
