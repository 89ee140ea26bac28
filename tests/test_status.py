"""The ScarceBenchmark status (scarce.operator.status, and the status that
scarce.operator.reconcile writes): counts, progress, the outcome ledger, conditions, missing
pairs, and the size bound at 5,000 units. Pure: no cluster, no store."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from scarce.operator.jobs import JobSettings, Owner
from scarce.operator.plan import plan_benchmark
from scarce.operator.reconcile import reconcile
from scarce.operator.spec import validate_document
from scarce.operator.status import (
    FAILED,
    PENDING,
    SUCCEEDED,
    Counts,
    TrainKey,
    condition,
    decode_ledger,
    encode_ledger,
    listing,
    missing_pairs,
    pairs_by_dataset,
    progress,
    truncate,
)
from scarce.trainer.cluster_status import compact_summary, headline_gain, status_fields

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def test_counts_and_progress_say_done_of_total():
    counts = Counts.of(["pending", "running", "succeeded", "succeeded", "failed"])
    assert counts == Counts(pending=1, running=1, succeeded=2, failed=1)
    assert counts.as_dict() == {"total": 5, "pending": 1, "running": 1, "succeeded": 2,
                                "failed": 1}
    assert progress(counts) == "3/5"


def test_ledger_round_trips_and_refuses_a_foreign_plan():
    keys = [f"train/d/real/kfull/seed{i}" for i in range(9)]
    states = {keys[0]: SUCCEEDED, keys[4]: FAILED, keys[8]: SUCCEEDED, keys[5]: "running"}
    ledger = encode_ledger(keys, states)
    assert decode_ledger(ledger, keys) == {keys[0]: SUCCEEDED, keys[4]: FAILED,
                                           keys[8]: SUCCEEDED}
    assert decode_ledger(ledger, keys[:-1]) == {}  # another plan: not read at all
    assert decode_ledger({**ledger, "units": "!!"}, keys) == {}
    assert decode_ledger(None, keys) == {}


def test_ledger_of_5000_units_is_small():
    keys = [f"train/dataset/arm/kfull/seed{i}" for i in range(5000)]
    ledger = encode_ledger(keys, dict.fromkeys(keys, FAILED))
    assert len(json.dumps(ledger)) < 1800
    assert set(decode_ledger(ledger, keys).values()) == {FAILED}


def test_last_transition_time_moves_only_when_the_status_flips():
    first = condition("Degraded", False, "NoFailures", "", now=T0, generation=3)
    assert first == {"type": "Degraded", "status": "False", "reason": "NoFailures",
                     "message": "", "lastTransitionTime": "2026-03-01T12:00:00Z",
                     "observedGeneration": 3}
    later = T0 + dt.timedelta(minutes=5)
    same = condition("Degraded", False, "Other", "new text", now=later, generation=4,
                     previous=[first])
    assert same["lastTransitionTime"] == "2026-03-01T12:00:00Z"
    assert same["reason"] == "Other" and same["observedGeneration"] == 4
    flipped = condition("Degraded", True, "UnitsFailed", "x", now=later, generation=4,
                        previous=[same])
    assert flipped["lastTransitionTime"] == "2026-03-01T12:05:00Z"


def test_long_messages_are_cut_and_say_how_many_more():
    items = [f"train/dataset/vendor/kfull/seed{i}" for i in range(200)]
    text = listing(items, 200)
    assert len(text) <= 200 and text.endswith(" more")
    shown = text.count("train/")
    assert text.endswith(f" and {200 - shown} more")
    assert listing(["a", "b"]) == "a, b"
    assert truncate("x" * 2000).endswith("(truncated)") and len(truncate("x" * 2000)) == 1000


def outcomes(failed: set[tuple[str, int]], seeds: int = 7,
             arms: tuple[str, ...] = ("real", "placebo", "vendor")) -> dict[TrainKey, str]:
    return {TrainKey("tiles", arm, None, s): FAILED if (arm, s) in failed else SUCCEEDED
            for arm in arms for s in range(seeds)}


def test_missing_pairs_name_the_comparison_and_seeds():
    result = outcomes({("vendor", 3), ("real", 5)})
    assert missing_pairs(result) == [
        "tiles placebo vs real (kfull): seeds 5",
        "tiles vendor vs real (kfull): seeds 3 5",
    ]
    assert pairs_by_dataset(result) == {"tiles": 5}
    pending = outcomes(set())
    pending[TrainKey("tiles", "vendor", None, 6)] = PENDING
    assert missing_pairs(pending) == []  # not finished is not missing
    assert pairs_by_dataset(outcomes({("real", 0)}, arms=("real",))) == {"tiles": 6}


# --- the reducer's summary ----------------------------------------------------------------------


def report(datasets: dict[str, list[str]], seeds: int = 7) -> dict[str, Any]:
    """A report.json shaped like trainer.reduce's, with every synthetic arm +5 pp over real."""
    out = []
    for name, arms in datasets.items():
        comparisons = []
        for i, arm in enumerate(a for a in arms if a != "real"):
            comparisons.append({"arm": arm, "baseline": "real", "gainPp": 5.0 + i, "z": 4.2,
                                "n": seeds, "verdict": "holds vs real and vs placebo"})
            if arm != "placebo" and "placebo" in arms:
                comparisons.append({"arm": arm, "baseline": "placebo", "gainPp": 2.0,
                                    "z": 1.5, "n": seeds, "verdict": "x"})
        out.append({"dataset": name, "hardestClass": "pit",
                    "arms": {a: {"mean": 60.0, "n": seeds} for a in arms},
                    "comparisons": comparisons})
    return {"benchmark": "bench", "datasets": out}


def test_compact_summary_and_headline():
    summary = compact_summary(report({"tiles": ["real", "placebo", "vendor"]}))
    arms = summary["datasets"]["tiles"]["arms"]
    assert arms["real"] == {"mean": 60.0, "n": 7}
    assert arms["vendor"] == {"mean": 60.0, "n": 7, "gain": 6.0, "z": 4.2, "pairs": 7,
                              "verdict": "holds vs real and vs placebo",
                              "vsPlacebo": {"gain": 2.0, "z": 1.5, "pairs": 7}}
    assert headline_gain(report({"tiles": ["real", "placebo", "vendor"]})) == \
        "+6.0 pp vendor (z=4.2)"
    assert headline_gain(report({"a": ["real", "vendor"], "b": ["real", "x", "vendor"]})) == \
        "+6.0 pp vendor on b (z=4.2)"
    assert headline_gain(report({"tiles": ["real"]})) is None
    fields = status_fields(report({"tiles": ["real", "vendor"]}), "s3://b/reports/x.json")
    assert fields["reportUri"] == "s3://b/reports/x.json"
    assert fields["hardestClasses"] == {"tiles": "pit"}


# --- size at 5,000 units ------------------------------------------------------------------------


def big_benchmark() -> Any:
    """5 datasets x 5 arms (real, placebo, 3 sources) x 200 seeds = 5,000 train units."""
    spec = {
        "storage": {"uri": "s3://bucket/runs"},
        "datasets": [{"name": f"dataset-{i}", "format": "imagefolder",
                      "source": f"s3://bucket/d{i}", "hardestClass": "pit"} for i in range(5)],
        "synthetic": [{"name": f"vendor-{j}", "kind": "external", "uri": f"s3://bucket/v{j}",
                       "perClass": 10} for j in range(3)],
        "seeds": 200,
        "parallelism": 500,
    }
    return validate_document({"apiVersion": "scarce.dev/v1alpha1", "kind": "ScarceBenchmark",
                              "metadata": {"name": "big-benchmark"}, "spec": spec})


class Reader:
    def __init__(self, rep: dict[str, Any] | None = None) -> None:
        self.rep = rep

    def split_result(self, dataset: str) -> dict[str, Any]:
        return {"splitDigest": "f" * 64}

    def has_result(self, unit: Any) -> bool:
        return False

    def report(self) -> dict[str, Any] | None:
        return self.rep


def test_status_stays_under_64_kib_at_5000_units_with_failures_and_summary():
    bench = big_benchmark()
    plan = plan_benchmark(bench)
    assert len(plan.train) == 5000
    arms = bench.spec.resolved_arms
    rep = report({d.name: arms for d in bench.spec.datasets}, seeds=200)
    owner = Owner("big-benchmark", "default", "uid")
    status: dict[str, Any] = {}
    jobs: dict[str, dict[str, Any]] = {}
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True",
                                         "reason": "BackoffLimitExceeded",
                                         "message": "Job has reached the backoff limit"}]}}
    done = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    biggest = 0
    for step in range(40):
        decision = reconcile(bench, owner=owner, status=status, generation=1, jobs=jobs,
                             reader=Reader(rep), settings=JobSettings(), plan=plan,
                             now=T0 + dt.timedelta(minutes=step))
        status = {**status, **decision.status}
        biggest = max(biggest, len(json.dumps(status)))
        for i, manifest in enumerate(decision.create):
            # Every third train unit fails: the worst case for the failure messages.
            train = manifest["metadata"]["labels"]["scarce.dev/stage"] == "train"
            jobs[manifest["metadata"]["name"]] = failed if train and i % 3 == 0 else done
        if status["phase"] in ("Succeeded", "Failed"):
            break
    assert status["phase"] == "Succeeded", status["message"]
    assert status["units"]["total"] == 5000 + 5 + 3 * 0 + 5 + 1  # train, split, fidelity, reduce
    assert status["units"]["failed"] > 1000
    assert "summary" in status and status["headlineGain"]
    assert biggest < 64 * 1024, biggest
    print(f"status size at 5,000 units: {biggest} bytes")
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and len(degraded["message"]) <= 1000


@pytest.mark.parametrize("arms", [["real", "placebo", "vendor"]])
def test_a_huge_summary_is_left_for_the_report(arms):
    rep = report({f"dataset-{i}": arms + [f"source-{j}" for j in range(30)] for i in range(60)})
    fields = status_fields(rep, "s3://b/r.json")
    assert fields["summary"]["truncated"] is True
    assert len(json.dumps(fields)) < 2048
