"""The reducer: pair results by seed, compute the statistics, write the report.

`build_report` is pure (result bodies in, report dict out); `run_reduce_unit` reads the result
objects from the store and writes ``reports/<benchmark>/report.{json,md}``. Only results whose
split digest matches the benchmark's split are used, so a stale result can never slip in.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from scarce.trainer.config import AUTO, PLACEBO_ARM, REAL_ARM
from scarce.trainer.report import render_markdown
from scarce.trainer.stats import paired_z
from scarce.trainer.store import Store
from scarce.trainer.unit import WorkUnit

REPORT_SCHEMA = "scarce.report/v1"


def choose_hardest_class(
    pilot_results: Iterable[Mapping[str, Any]], good_class: str, train_counts: Mapping[str, int]
) -> dict[str, Any]:
    """Pick the defect class with the lowest mean validation accuracy over the pilot seeds.

    Ties go to the class with fewer training labels (report §4: weakest and most label-scarce).
    The evidence (every class's pilot accuracy and label count) is returned with the choice.
    """
    per_class: dict[str, list[float]] = defaultdict(list)
    seeds = []
    for result in pilot_results:
        seeds.append(result["unit"]["seed"])
        for cls, acc in result["perClassAccuracy"].items():
            if cls != good_class and acc is not None:
                per_class[cls].append(acc)
    if not per_class:
        raise ValueError("no pilot results with validation accuracy for any defect class")
    evidence = {
        cls: {
            "meanValAccuracy": round(statistics.fmean(accs), 6),
            "trainLabels": int(train_counts.get(cls, 0)),
            "seeds": len(accs),
        }
        for cls, accs in sorted(per_class.items())
    }
    chosen = min(
        evidence,
        key=lambda c: (evidence[c]["meanValAccuracy"], evidence[c]["trainLabels"], c),
    )
    return {"chosen": chosen, "pilotSeeds": sorted(seeds), "evidence": evidence}


def _arm_summary(per_seed: Mapping[int, float]) -> dict[str, Any]:
    values = list(per_seed.values())
    return {
        "perSeed": {str(s): round(v, 6) for s, v in sorted(per_seed.items())},
        "mean": round(statistics.fmean(values), 6) if values else None,
        "sd": round(statistics.stdev(values), 6) if len(values) > 1 else None,
        "n": len(values),
    }


def compare(
    arm: str, baseline: str, arms: Mapping[str, Mapping[int, float]]
) -> dict[str, Any]:
    """Pair `arm` with `baseline` by seed and compute eq. (1); unpaired seeds are counted."""
    treated, control = arms.get(arm, {}), arms.get(baseline, {})
    seeds = sorted(set(treated) & set(control))
    result = paired_z([treated[s] for s in seeds], [control[s] for s in seeds])
    return {
        "arm": arm,
        "baseline": baseline,
        "gainPp": None if result.mean_diff is None else round(result.mean_diff, 6),
        "z": None if result.z is None else round(result.z, 6),
        "n": result.n,
        "sdDiff": None if result.sd_diff is None else round(result.sd_diff, 6),
        "pairedSeeds": seeds,
        "unpairedSeeds": sorted(set(treated) ^ set(control)),
        "note": result.note,
    }


def summarize_dataset(
    *,
    dataset: str,
    hardest_class: str,
    results: Iterable[Mapping[str, Any]],
    arm_order: list[str],
    selection: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Per-arm hardest-class accuracy by seed, and the comparisons of report Table 1."""
    full: dict[str, dict[int, float]] = defaultdict(dict)
    few_shot: dict[str, dict[int, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    per_class: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        unit = result["unit"]
        accuracy = result["perClassAccuracy"].get(hardest_class)
        if accuracy is None:
            continue
        if unit.get("k") is None:
            full[unit["arm"]][unit["seed"]] = accuracy
            for cls, acc in result["perClassAccuracy"].items():
                if acc is not None:
                    per_class[unit["arm"]][cls].append(acc)
        else:
            few_shot[unit["arm"]][unit["k"]][unit["seed"]] = accuracy

    arms = {arm: _arm_summary(full[arm]) for arm in arm_order if arm in full}
    synthetic_arms = [a for a in arm_order if a not in (REAL_ARM, PLACEBO_ARM)]
    comparisons = []
    for arm in [*synthetic_arms, PLACEBO_ARM]:
        if arm in full and REAL_ARM in full:
            comparisons.append(compare(arm, REAL_ARM, full))
    for arm in synthetic_arms:
        if arm in full and PLACEBO_ARM in full:
            comparisons.append(compare(arm, PLACEBO_ARM, full))
    summary: dict[str, Any] = {
        "dataset": dataset,
        "hardestClass": hardest_class,
        "arms": arms,
        "comparisons": comparisons,
        "allClasses": {
            arm: {cls: round(statistics.fmean(v), 6) for cls, v in sorted(classes.items())}
            for arm, classes in per_class.items()
        },
    }
    if selection is not None:
        summary["hardestClassSelection"] = selection
    if few_shot:
        summary["fewShot"] = {
            arm: {
                str(k): {
                    "mean": round(statistics.fmean(seeds.values()), 6),
                    "n": len(seeds),
                    "perSeed": {str(s): round(v, 6) for s, v in sorted(seeds.items())},
                }
                for k, seeds in sorted(by_k.items())
            }
            for arm, by_k in few_shot.items()
        }
    return summary


def build_report(
    *, benchmark: str, datasets: list[dict[str, Any]], results_used: int
) -> dict[str, Any]:
    """Assemble the report document from per-dataset summaries."""
    return {
        "schema": REPORT_SCHEMA,
        "benchmark": benchmark,
        "statistic": "z = mean(d) / (sd(d) / sqrt(n)), d = arm - baseline per seed "
        "(report eq. 1; the paired t statistic with n - 1 degrees of freedom)",
        "resultsUsed": results_used,
        "datasets": datasets,
    }


def load_results(store: Store, benchmark: str, dataset: str) -> list[dict[str, Any]]:
    """Every train result of a dataset (pilot and split results excluded)."""
    prefix = f"results/{benchmark}/{dataset}/"
    keys = [
        k for k in store.list(prefix)
        if k.endswith(".json") and "/pilot/" not in k and not k.endswith("/split.json")
    ]
    return [store.get_json(k) for k in keys]


def run_reduce_unit(unit: WorkUnit, store: Store) -> dict[str, Any]:
    """Read every result of the benchmark, write report.json and report.md, return the report."""
    summaries = []
    found = 0
    for dataset in unit.datasets:
        split = store.get_json(f"results/{unit.benchmark}/{dataset.name}/split.json")
        digest = split["splitDigest"]
        results = [
            r for r in load_results(store, unit.benchmark, dataset.name)
            if r.get("splitDigest") == digest
        ]
        found += len(results)
        selection = None
        hardest = dataset.hardest_class
        if hardest == AUTO:
            pilots = [
                store.get_json(k)
                for k in store.list(f"results/{unit.benchmark}/{dataset.name}/pilot/")
            ]
            train_counts = {c: v["train"] + v["val"] for c, v in split["counts"].items()}
            selection = choose_hardest_class(
                [p for p in pilots if p.get("splitDigest") == digest],
                split["goodClass"],
                train_counts,
            )
            hardest = selection["chosen"]
        summaries.append(
            summarize_dataset(
                dataset=dataset.name,
                hardest_class=hardest,
                results=results,
                arm_order=list(unit.arms),
                selection=selection,
            )
        )
        summaries[-1]["splitDigest"] = digest
    report = build_report(benchmark=unit.benchmark, datasets=summaries, results_used=found)
    store.put_bytes(
        f"reports/{unit.benchmark}/report.md",
        render_markdown(report).encode(),
        content_type="text/markdown",
    )
    return report
