"""The reducer: pair results by seed, compute the statistics, write the report files.

`summarize_dataset` and `finish_report` are pure (result bodies in, report dict out);
`reduce_benchmark` reads the result objects of a benchmark from the store, and
`run_reduce_unit` also writes ``reports/<benchmark>/`` (report.json, .md, .html, per_seed.csv,
all_classes.csv, figures/*.png). Only results whose split digest matches the dataset's frozen
split are used, so a stale result can never slip in. The reduce unit itself is saved as
``results/<benchmark>/benchmark.json`` so `scarce report` can rebuild the same report from the
result objects alone.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from scarce.trainer.config import AUTO, PLACEBO_ARM, REAL_ARM, VerdictConfig
from scarce.trainer.integrity_report import (
    fidelity_figures,
    fidelity_section,
    leakage_section,
    uses_refused_source,
)
from scarce.trainer.stats import (
    bootstrap_ci,
    holm_bonferroni,
    label_saving,
    paired_t_test,
    paired_z,
    prob_improvement,
    verdict,
    wilcoxon_signed_rank,
)
from scarce.trainer.store import ObjectNotFound, Store
from scarce.trainer.unit import WorkUnit, fidelity_key

REPORT_SCHEMA = "scarce.report/v1"
BENCHMARK_KEY = "results/{benchmark}/benchmark.json"


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(float(value), digits)


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
    arm: str, baseline: str, arms: Mapping[str, Mapping[int, float]], *, bootstrap_seed: int = 0
) -> dict[str, Any]:
    """Pair `arm` with `baseline` by seed: eq. (1) and the statistics of the full report.

    Seeds present in only one of the two arms are dropped and listed in `unpairedSeeds`.
    """
    treated, control = arms.get(arm, {}), arms.get(baseline, {})
    seeds = sorted(set(treated) & set(control))
    a = [treated[s] for s in seeds]
    b = [control[s] for s in seeds]
    z = paired_z(a, b)
    t = paired_t_test(a, b)
    w = wilcoxon_signed_rank(a, b)
    boot = bootstrap_ci([x - y for x, y in zip(a, b, strict=True)], seed=bootstrap_seed)
    notes = [n for n in (z.note, w.note) if n]
    return {
        "arm": arm,
        "baseline": baseline,
        "gainPp": _round(z.mean_diff),
        "z": _round(z.z),
        "n": z.n,
        "sdDiff": _round(z.sd_diff),
        "pValue": _round(t.pvalue, 12),
        "ci95": None if t.ci95 is None else [_round(t.ci95[0]), _round(t.ci95[1])],
        "ciBootstrap95": None if boot is None else [_round(boot[0]), _round(boot[1])],
        "wilcoxonP": _round(w.pvalue, 12),
        "wilcoxonMethod": w.method,
        "probImprovement": _round(prob_improvement(a, b)),
        "pairedSeeds": seeds,
        "unpairedSeeds": sorted(set(treated) ^ set(control)),
        "note": "; ".join(notes) if notes else None,
    }


def _few_shot_section(
    few_shot: Mapping[str, Mapping[int, Mapping[int, float]]], arm_order: list[str]
) -> dict[str, Any]:
    curves = {
        arm: {
            str(k): {
                "mean": round(statistics.fmean(seeds.values()), 6),
                "n": len(seeds),
                "perSeed": {str(s): round(v, 6) for s, v in sorted(seeds.items())},
            }
            for k, seeds in sorted(few_shot[arm].items())
        }
        for arm in arm_order
        if arm in few_shot
    }
    savings = []
    real = curves.get(REAL_ARM)
    if real:
        ks = sorted(int(k) for k in real)
        real_curve = [real[str(k)]["mean"] for k in ks]
        for arm, curve in curves.items():
            if arm == REAL_ARM or str(ks[0]) not in curve:
                continue
            synthetic = curve[str(ks[0])]["mean"]
            saving = label_saving(ks, real_curve, synthetic)
            savings.append({
                "arm": arm,
                "kMin": ks[0],
                "syntheticAccuracy": synthetic,
                "kEquivalent": _round(saving.k_equivalent),
                "savingPercent": _round(saving.saving_percent),
                "reached": saving.reached,
                "note": saving.note,
            })
    return {"curves": curves, "labelSaving": savings}


def summarize_dataset(
    *,
    dataset: str,
    hardest_class: str,
    results: Iterable[Mapping[str, Any]],
    arm_order: list[str],
    selection: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Per-arm hardest-class accuracy by seed, the comparisons of Table 1 and every class."""
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
            arm: {
                cls: {"mean": round(statistics.fmean(v), 6), "n": len(v)}
                for cls, v in sorted(classes.items())
            }
            for arm, classes in per_class.items()
        },
        "warnings": [],
    }
    if selection is not None:
        summary["hardestClassSelection"] = selection
        if selection["chosen"] != hardest_class:
            summary["warnings"].append(
                f"the spec names {hardest_class!r} as the hardest class, but the pilot on the "
                f"validation split ranks {selection['chosen']!r} lowest"
            )
    if few_shot:
        summary["fewShot"] = _few_shot_section(few_shot, arm_order)
    return summary


def finish_report(
    *, benchmark: str, datasets: list[dict[str, Any]], thresholds: VerdictConfig,
    results_used: int,
) -> dict[str, Any]:
    """Holm-adjust every comparison's p-value across the benchmark and add the verdicts."""
    comparisons = [c for ds in datasets for c in ds["comparisons"]]
    for comparison, adjusted in zip(
        comparisons, holm_bonferroni([c["pValue"] for c in comparisons]), strict=True
    ):
        comparison["holmP"] = _round(adjusted, 12)
    for ds in datasets:
        by_pair = {(c["arm"], c["baseline"]): c for c in ds["comparisons"]}
        for comparison in ds["comparisons"]:
            if comparison["baseline"] != REAL_ARM:
                continue
            vs_placebo = by_pair.get((comparison["arm"], PLACEBO_ARM), {})
            comparison["verdict"] = verdict(
                comparison["z"], comparison["holmP"], vs_placebo.get("z"),
                vs_placebo.get("holmP"), min_abs_z=thresholds.min_abs_z, alpha=thresholds.alpha,
                placebo_applies=comparison["arm"] != PLACEBO_ARM and PLACEBO_ARM in ds["arms"],
            )
        for comparison in ds["comparisons"]:
            if comparison["baseline"] == PLACEBO_ARM:
                comparison["verdict"] = by_pair[(comparison["arm"], REAL_ARM)].get("verdict")
    return {
        "schema": REPORT_SCHEMA,
        "benchmark": benchmark,
        "statistic": "z = mean(d) / (sd(d) / sqrt(n)), d = arm - baseline per seed "
        "(report eq. 1; it is the paired t statistic with n - 1 degrees of freedom, whose "
        "two-sided p-value is pValue; holmP adjusts pValue over every comparison of the "
        "benchmark, vs real and vs placebo alike)",
        "thresholds": {"minAbsZ": thresholds.min_abs_z, "alpha": thresholds.alpha},
        "resultsUsed": results_used,
        "datasets": datasets,
    }


def load_results(store: Store, benchmark: str, dataset: str) -> list[dict[str, Any]]:
    """Every train result of a dataset (pilot, split and fidelity results excluded)."""
    prefix = f"results/{benchmark}/{dataset}/"
    keys = [
        k for k in store.list(prefix)
        if k.endswith(".json") and "/pilot/" not in k
        and not k.endswith(("/split.json", "/fidelity.json"))
    ]
    return [store.get_json(k) for k in keys]


def reduce_benchmark(unit: WorkUnit, store: Store) -> tuple[dict[str, Any], list[dict]]:
    """Build the report from the benchmark's result objects; also return the results used."""
    summaries = []
    used: list[dict] = []
    for dataset in unit.datasets:
        split = store.get_json(f"results/{unit.benchmark}/{dataset.name}/split.json")
        digest = split["splitDigest"]
        leakage = leakage_section(split)
        refused = leakage["refused"] if leakage else {}
        results = [
            r for r in load_results(store, unit.benchmark, dataset.name)
            if r.get("splitDigest") == digest and not uses_refused_source(r["unit"], refused)
        ]
        used += results
        pilot_keys = store.list(f"results/{unit.benchmark}/{dataset.name}/pilot/")
        pilots = [
            p for p in (store.get_json(k) for k in pilot_keys if k.endswith(".json"))
            if p.get("splitDigest") == digest
        ]
        selection = None
        if pilots:
            train_counts = {c: v["train"] + v["val"] for c, v in split["counts"].items()}
            selection = choose_hardest_class(pilots, split["goodClass"], train_counts)
        hardest = dataset.hardest_class
        if hardest == AUTO:
            if selection is None:
                raise ValueError(
                    f"dataset {dataset.name!r}: hardestClass auto but no pilot result found"
                )
            hardest = selection["chosen"]
        summary = summarize_dataset(
            dataset=dataset.name, hardest_class=hardest, results=results,
            arm_order=list(unit.arms), selection=selection,
        )
        summary["splitDigest"] = digest
        if leakage is not None:
            summary["leakage"] = leakage
        _add_fidelity(summary, store, unit)
        summaries.append(summary)
    report = finish_report(
        benchmark=unit.benchmark, datasets=summaries, thresholds=unit.verdict,
        results_used=len(used),
    )
    return report, used


def _add_fidelity(summary: dict[str, Any], store: Store, unit: WorkUnit) -> None:
    """Copy the dataset's fidelity result into its summary (or warn that it is missing)."""
    try:
        result = store.get_json(fidelity_key(unit.benchmark, summary["dataset"]))
    except ObjectNotFound:
        result = None
    if result is not None and result.get("splitDigest") == summary["splitDigest"]:
        summary["fidelity"] = fidelity_section(result)
    elif any(arm not in (REAL_ARM, PLACEBO_ARM) for arm in unit.arms):
        summary["warnings"].append(
            f"no fidelity result for this split (fidelity/{summary['dataset']} did not run or "
            "failed): the similarity of synthetic to real images is not reported"
        )


def run_reduce_unit(unit: WorkUnit, store: Store) -> dict[str, Any]:
    """Reduce, then write every report file; returns the report (written as report.json)."""
    from scarce.trainer.report_files import write_report_files

    store.put_json(BENCHMARK_KEY.format(benchmark=unit.benchmark), unit.to_json_dict())
    report, used = reduce_benchmark(unit, store)
    pngs = fidelity_figures(store, unit.benchmark, report)
    write_report_files(store, f"reports/{unit.benchmark}", report, used, extra_pngs=pngs)
    return report
