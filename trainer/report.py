"""Report rendering: the Table 1 rows and report.md (torch-free, no I/O)."""

from __future__ import annotations

from typing import Any

TABLE_HEADER = (
    "Dataset",
    "Hardest class",
    "Arm",
    "Real-only",
    "+Arm",
    "Gain (pp)",
    "z",
    "vs placebo (pp)",
    "z vs placebo",
    "n",
    "95% CI (pp)",
)


def _fmt(value: float | None, digits: int = 1, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _ci(interval: list[float] | None) -> str:
    if not interval:
        return "n/a"
    return f"[{interval[0]:+.1f}, {interval[1]:+.1f}]"


def table_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per dataset and non-real arm, in the layout of the report's Table 1."""
    rows = []
    for ds in report["datasets"]:
        arms = ds["arms"]
        real = arms.get("real", {}).get("mean")
        by_pair = {(c["arm"], c["baseline"]): c for c in ds["comparisons"]}
        for arm in arms:
            if arm == "real":
                continue
            vs_real = by_pair.get((arm, "real"), {})
            vs_placebo = by_pair.get((arm, "placebo"), {})
            rows.append(
                (
                    ds["dataset"],
                    ds["hardestClass"],
                    arm,
                    _fmt(real),
                    _fmt(arms[arm].get("mean")),
                    _fmt(vs_real.get("gainPp"), signed=True),
                    _fmt(vs_real.get("z")),
                    _fmt(vs_placebo.get("gainPp"), signed=True) if vs_placebo else "-",
                    _fmt(vs_placebo.get("z")) if vs_placebo else "-",
                    str(vs_real.get("n", arms[arm].get("n", 0))),
                    _ci(vs_real.get("ci95")),
                )
            )
    return rows


def render_markdown(report: dict[str, Any], all_classes: Any = None) -> str:
    """report.md: Table 1, verdicts, per-dataset notes and per-seed values, and (given the
    all-classes frame) the supplementary table of every class in every arm."""
    lines = [
        f"# SCARCE report: {report['benchmark']}",
        "",
        "Accuracy (recall, %) on the hardest class of each dataset, on its frozen, real-only "
        "test split, paired by seed. Gain is the mean per-seed difference in percentage points; "
        f"{report['statistic']}.",
        "",
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|" + "---|" * len(TABLE_HEADER),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    lines.append("")
    verdicts = [
        f"- {ds['dataset']} / {c['arm']}: {c['verdict']}"
        for ds in report["datasets"] for c in ds["comparisons"]
        if c["baseline"] == "real" and c.get("verdict")
    ]
    if verdicts:
        thresholds = report.get("thresholds", {})
        lines += [
            f"Verdicts (|z| ≥ {thresholds.get('minAbsZ')}, Holm-adjusted p < "
            f"{thresholds.get('alpha')}):",
            "",
            *verdicts,
            "",
        ]
    for ds in report["datasets"]:
        notes = [
            f"- {c['arm']} vs {c['baseline']}: {c['note']}" for c in ds["comparisons"] if c["note"]
        ]
        notes += [
            f"- {c['arm']} vs {c['baseline']}: seeds {c['unpairedSeeds']} have no pair and "
            "were dropped"
            for c in ds["comparisons"]
            if c["unpairedSeeds"]
        ]
        notes += [f"- warning: {w}" for w in ds.get("warnings", [])]
        notes += [
            f"- {c['arm']} vs {c['baseline']}: p = {_p(c.get('pValue'))}, Holm p = "
            f"{_p(c.get('holmP'))}, Wilcoxon p = {_p(c.get('wilcoxonP'))}, bootstrap 95% CI "
            f"{_ci(c.get('ciBootstrap95'))}, P(improvement) = {_fmt(c.get('probImprovement'), 2)}"
            for c in ds["comparisons"]
        ]
        for saving in ds.get("fewShot", {}).get("labelSaving", []):
            if saving["reached"]:
                notes.append(
                    f"- few-shot: {saving['arm']} at k={saving['kMin']} "
                    f"({saving['syntheticAccuracy']:.1f}%) matches real-only at "
                    f"k={saving['kEquivalent']:.2f}: {saving['savingPercent']:.1f}% fewer labels"
                )
            else:
                notes.append(f"- few-shot: {saving['arm']}: {saving['note']}")
        selection = ds.get("hardestClassSelection")
        if selection:
            evidence = ", ".join(
                f"{cls} {ev['meanValAccuracy']:.1f}% ({ev['trainLabels']} labels)"
                for cls, ev in selection["evidence"].items()
            )
            notes.append(
                f"- hardest class chosen by the pilot on the validation split (seeds "
                f"{selection['pilotSeeds']}): {selection['chosen']}; {evidence}"
            )
        if notes:
            lines += [f"## {ds['dataset']}", "", *notes, ""]
        lines += [
            f"Per-seed hardest-class accuracy ({ds['dataset']}, {ds['hardestClass']}):",
            "",
            "| Arm | " + " | ".join(f"seed {s}" for s in _seeds(ds)) + " | mean | sd |",
            "|---|" + "---|" * (len(_seeds(ds)) + 2),
        ]
        for arm, summary in ds["arms"].items():
            cells = [_fmt(summary["perSeed"].get(str(s))) for s in _seeds(ds)]
            lines.append(
                f"| {arm} | " + " | ".join(cells)
                + f" | {_fmt(summary['mean'])} | {_fmt(summary['sd'])} |"
            )
        lines.append("")
        lines += leakage_markdown(ds) + fidelity_markdown(ds)
    if all_classes is not None and len(all_classes):
        lines += [
            "## Every class in every arm (supplementary)",
            "",
            "Mean accuracy (%) of each class on the test split, whole training pool.",
            "",
            "| Dataset | Arm | Class | Mean | n |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['dataset']} | {r['arm']} | {r['class']}{' (hardest)' if r['hardest'] else ''}"
            f" | {r['meanAccuracy']:.1f} | {r['n']} |"
            for r in all_classes.to_dict("records")
        ]
        lines.append("")
    return "\n".join(lines)


def _p(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def _seeds(ds: dict[str, Any]) -> list[int]:
    return sorted({int(s) for arm in ds["arms"].values() for s in arm["perSeed"]})


def leakage_markdown(ds: dict[str, Any]) -> list[str]:
    """What the leakage check found for one dataset ("none" when nothing)."""
    leakage = ds.get("leakage")
    if leakage is None:
        return []
    lines = [
        f"Leakage check ({ds['dataset']}; policy {leakage['policy']}, near duplicate = "
        f"perceptual-hash distance ≤ {leakage['maxHashDistance']} bits, or identical bytes):",
        "",
    ]
    pairs = leakage.get("trainTest", [])
    count = leakage.get("trainTestCount", len(pairs))
    lines.append(
        "- training vs test split: none" if not count else
        f"- training vs test split: {count} near-duplicate pair(s), e.g. "
        + "; ".join(f"{p['train']} ~ {p['test']} ({_match(p)})" for p in pairs[:3])
        + " (the split is the data: flagged, not refused)"
    )
    for source, matches in leakage.get("synthetic", {}).items():
        counts = leakage.get("syntheticCounts", {}).get(source, {})
        error = leakage.get("refused", {}).get(source)
        if error:
            lines.append(f"- {source}: REFUSED, its arms did not run: {error}")
        elif not matches:
            lines.append(f"- {source}: none")
        else:
            shown = "; ".join(
                f"{m['synthetic']} ~ {m['against']} image {m['real']} ({_match(m)})"
                for m in matches[:3]
            )
            test = counts.get("test", 0)
            why = ""
            if test and not counts.get("refusing"):
                why = (" (none leaks test information: each is a built-in generator's image, "
                       "which never sees test pixels, or its test image already has a training "
                       "near duplicate)")
            elif counts.get("refusing"):
                why = f" ({counts['refusing']} of them leak test information; flagged, trained on)"
            lines.append(
                f"- {source}: {test} match(es) with test images{why}, "
                f"{counts.get('training', 0)} with training images, e.g. {shown}"
            )
    if any(c.get("training") for c in leakage.get("syntheticCounts", {}).values()):
        lines.append(
            "- (a generator that pastes defects onto training images makes near duplicates of "
            "them by design; from a vendor, they are real training images sold as synthetic)"
        )
    return [*lines, ""]


def fidelity_markdown(ds: dict[str, Any]) -> list[str]:
    """Figure 1's numbers: mean cosine of each synthetic image to its nearest real defect."""
    fidelity = ds.get("fidelity")
    if not fidelity:
        return []
    extractor = fidelity["extractor"]
    reference = fidelity.get("realReference", {})
    lines = [
        f"Fidelity ({ds['dataset']}): mean feature-space cosine similarity of each synthetic "
        "image to its nearest real training defect of the same class. Extractor: "
        f"{extractor['name']} ({extractor['backbone']}, {extractor['imageSize']} px, "
        f"weights {extractor['weights']}). Real-to-real: the same for each real training "
        "defect and its nearest other one.",
        "",
        "| Source | Class | Mean cosine | sd | n | Real-to-real |",
        "|---|---|---|---|---|---|",
    ]
    for source, found in fidelity["sources"].items():
        if "error" in found:
            lines.append(f"| {source} | - | not measured: refused | | | |")
            continue
        for cls, v in found["perClass"].items():
            hardest = " (hardest)" if cls == ds["hardestClass"] else ""
            real = reference.get(cls, {}).get("meanCosine")
            lines.append(
                f"| {source} | {cls}{hardest} | {v['meanCosine']:.3f} | "
                f"{_fmt(v.get('sdCosine'), 3)} | {v['n']} | {_fmt(real, 3)} |"
            )
    return [*lines, ""]


def _match(match: dict[str, Any]) -> str:
    return "identical bytes" if match["exact"] else f"distance {match['distance']}"
