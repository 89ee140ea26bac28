"""Units of an already split benchmark, for the benchmark scripts (not part of the package).

The scripts time real `scarce-trainer` processes on real units: they plan the spec, read the
split digest from the split result in the spec's store (run `scarce run SPEC --stop-after
split` first), and rename the benchmark so their results never overwrite the run's own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from scarce.operator.plan import bind_digests, plan_benchmark
from scarce.operator.spec import load_spec
from scarce.trainer.store import open_store
from scarce.trainer.unit import WorkUnit


def train_units(
    spec_path: Path, *, arm: str, seeds: int, epochs: int | None, benchmark: str
) -> list[WorkUnit]:
    """Train units (k=None) of one arm and the first dataset, seeds 0..seeds-1, bound to the
    split digest, renamed to `benchmark`, with the schedule's epochs optionally overridden."""
    spec = load_spec(spec_path)
    plan = plan_benchmark(spec, base_dir=spec_path.resolve().parent)
    dataset = plan.split[0]
    store = open_store(dataset.storage.uri, endpoint=dataset.storage.endpoint)
    try:
        split = store.get_json(dataset.result_key)
    except Exception as error:
        raise SystemExit(
            f"{spec_path}: no split result at {dataset.storage.uri}/{dataset.result_key} "
            f"({error}); run `scarce run {spec_path} --stop-after split` first"
        ) from None
    chosen = [
        u for u in plan.train
        if u.arm == arm and u.k is None and u.dataset.name == dataset.dataset.name
    ]
    if not chosen:
        raise SystemExit(f"{spec_path}: no arm {arm!r} (arms: {spec.spec.resolved_arms})")
    units = []
    for seed in range(seeds):
        unit = chosen[0].model_copy(update={"seed": seed, "benchmark": benchmark})
        if epochs is not None:
            unit = unit.model_copy(
                update={"schedule": unit.schedule.model_copy(update={"epochs": epochs})}
            )
        units.append(unit)
    return bind_digests(units, {dataset.dataset.name: split["splitDigest"]})


def run_trainer(units: list[WorkUnit], device: str) -> float:
    """Run `scarce-trainer train --force` on the units in one new process; wall seconds."""
    payload = json.dumps([u.to_json_dict() for u in units])
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "scarce.trainer.cli", "train", "--force", "--device", device,
         "--unit-json", payload],
        capture_output=True, text=True,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"scarce-trainer exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return wall


def read_result(unit: WorkUnit) -> dict:
    """The result object the unit wrote."""
    store = open_store(unit.storage.uri, endpoint=unit.storage.endpoint)
    return store.get_json(unit.result_key)
