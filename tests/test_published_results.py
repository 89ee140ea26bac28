"""The published replication (docs/results/magnetic-tile) is self-consistent: every figure of
its report tables is recomputed here from the committed per_seed.csv with the project's own
statistics, so a hand-edited number or a table out of step with its per-seed values fails.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest

from scarce.trainer.stats import paired_z

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "magnetic-tile"
FOLDERS = [RESULTS, RESULTS / "blowhole"]


def per_seed(folder: Path) -> tuple[str, dict[str, dict[int, float]]]:
    """Hardest class and arm -> seed -> hardest-class accuracy (full-data units only)."""
    by_arm: dict[str, dict[int, float]] = {}
    classes = set()
    with (folder / "per_seed.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row["k"]:
                continue
            classes.add(row["hardestClass"])
            by_arm.setdefault(row["arm"], {})[int(row["seed"])] = float(row["hardestAccuracy"])
    (hardest,) = classes
    return hardest, by_arm


def table_rows(folder: Path) -> list[list[str]]:
    """Rows of the report's main table (Dataset | Hardest class | Arm | Real-only | ...)."""
    rows = []
    for line in (folder / "report.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 11 and cells[0] == "magnetic-tile":
            rows.append(cells)
    return rows


@pytest.mark.parametrize("folder", FOLDERS, ids=["auto", "blowhole"])
def test_report_table_is_recomputed_from_the_committed_per_seed_values(folder):
    hardest, arms = per_seed(folder)
    rows = table_rows(folder)
    assert {r[2] for r in rows} == set(arms) - {"real"}
    real = arms["real"]
    assert len(real) == 15 and all(len(seeds) == 15 for seeds in arms.values())
    for _, cls, arm, real_mean, arm_mean, gain, z, *_rest, n, _ci in rows:
        assert cls == hardest
        assert float(real_mean) == pytest.approx(statistics.fmean(real.values()), abs=0.05)
        assert float(arm_mean) == pytest.approx(statistics.fmean(arms[arm].values()), abs=0.05)
        diffs = [arms[arm][s] - real[s] for s in sorted(real)]
        assert float(gain) == pytest.approx(statistics.fmean(diffs), abs=0.05)
        assert int(n) == len(diffs)
        expected = paired_z([arms[arm][s] for s in sorted(real)], [real[s] for s in sorted(real)])
        if z == "n/a":
            assert expected.z is None  # undefined: every difference is the same
        else:
            assert float(z) == pytest.approx(expected.z, abs=0.05)


def test_both_reports_come_from_the_same_runs():
    """The Blowhole report retrains nothing: its per-seed rows are the auto report's rows."""
    def rows(folder: Path) -> list[tuple[str, ...]]:
        with (folder / "per_seed.csv").open() as handle:
            return sorted(
                (r["arm"], r["k"], r["seed"], r["acc_Blowhole"], r["acc_Fray"])
                for r in csv.DictReader(handle)
            )
    assert rows(RESULTS) == rows(RESULTS / "blowhole")
