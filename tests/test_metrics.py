"""The operator's Prometheus endpoint (scarce.operator.metrics), scraped over HTTP: the metric
names and labels the Grafana dashboard is built on, series removal for deleted benchmarks, and
no spec contents or credentials in any series."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from scarce.operator import metrics
from scarce.operator.metrics import (
    BENCHMARKS,
    RECONCILE_ERRORS,
    REGISTRY,
    Snapshot,
    port_from_env,
    record_finished,
    serve,
)
from scarce.operator.status import Counts

SUMMARY = {"datasets": {"tiles": {"hardestClass": "pit", "arms": {
    "real": {"mean": 50.0, "n": 7},
    "placebo": {"mean": 52.0, "n": 7, "gain": 2.0, "z": 0.8, "pairs": 7, "verdict": "x"},
    "vendor": {"mean": 62.5, "n": 7, "gain": 12.5, "z": 4.1, "pairs": 7, "verdict": "y",
               "vsPlacebo": {"gain": 10.5, "z": 3.6, "pairs": 7}},
}}}}


def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    port = serve(0)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture(autouse=True)
def _no_other_benchmarks():
    """The collector is process-wide: start and end with no benchmark (an in-process operator
    of another test may have left some)."""
    for key in BENCHMARKS.known():
        BENCHMARKS.forget(*key)
    yield
    for key in BENCHMARKS.known():
        BENCHMARKS.forget(*key)


def test_benchmark_gauges_are_served_with_the_dashboards_names():
    BENCHMARKS.update("team-a", "bench", Snapshot(
        phase="Training", counts=Counts(pending=4, running=2, succeeded=3, failed=1),
        summary=SUMMARY))
    BENCHMARKS.update("team-b", "other", Snapshot(phase="Succeeded"))
    samples = scrape()
    for state, expected in (("pending", 4), ("running", 2), ("succeeded", 3), ("failed", 1)):
        assert value(samples, "scarce_units", namespace="team-a", benchmark="bench",
                     state=state) == expected
    assert value(samples, "scarce_benchmark_progress_ratio", namespace="team-a",
                 benchmark="bench") == 0.4
    assert value(samples, "scarce_benchmarks", phase="Training") == 1
    assert value(samples, "scarce_benchmarks", phase="Succeeded") == 1
    assert value(samples, "scarce_benchmarks", phase="Failed") == 0
    assert value(samples, "scarce_hardest_class_accuracy", namespace="team-a",
                 benchmark="bench", dataset="tiles", arm="vendor") == 62.5
    assert value(samples, "scarce_hardest_class_accuracy", namespace="team-a",
                 benchmark="bench", dataset="tiles", arm="real") == 50.0
    assert value(samples, "scarce_paired_z", namespace="team-a", benchmark="bench",
                 dataset="tiles", arm="vendor", baseline="real") == 4.1
    assert value(samples, "scarce_paired_z", namespace="team-a", benchmark="bench",
                 dataset="tiles", arm="vendor", baseline="placebo") == 3.6
    assert value(samples, "scarce_paired_z", namespace="team-a", benchmark="bench",
                 dataset="tiles", arm="real", baseline="real") is None  # real has no z


def test_a_deleted_benchmarks_series_disappear():
    BENCHMARKS.update("team-a", "gone", Snapshot(phase="Failed", counts=Counts(failed=2),
                                                 summary=SUMMARY))
    assert value(scrape(), "scarce_units", namespace="team-a", benchmark="gone",
                 state="failed") == 2
    BENCHMARKS.forget("team-a", "gone")
    samples = scrape()
    assert not [k for k in samples if ("benchmark", "gone") in k[1]]
    assert value(samples, "scarce_benchmarks", phase="Failed") == 0


def test_unit_durations_retries_and_reconcile_errors_are_counted():
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    count = sample("scarce_unit_duration_seconds_count", stage="train")
    fast = sample("scarce_unit_duration_seconds_bucket", stage="train", le="300.0")
    retries = sample("scarce_unit_retries_total", stage="train")
    errors = sample("scarce_reconcile_errors_total")
    record_finished("train", {"status": {
        "startTime": "2026-03-01T12:00:00Z", "completionTime": "2026-03-01T12:04:00Z",
        "failed": 2, "conditions": [{"type": "Complete", "status": "True"}]}})
    RECONCILE_ERRORS.inc()
    samples = scrape()
    assert value(samples, "scarce_unit_duration_seconds_count", stage="train") == count + 1
    assert value(samples, "scarce_unit_duration_seconds_bucket", stage="train",
                 le="300.0") == fast + 1
    assert value(samples, "scarce_unit_duration_seconds_sum", stage="train") >= 240
    assert value(samples, "scarce_unit_retries_total", stage="train") == retries + 2
    assert value(samples, "scarce_reconcile_errors_total") == errors + 1


def test_no_spec_contents_or_credentials_in_any_series():
    BENCHMARKS.update("team-a", "bench", Snapshot(phase="Training", counts=Counts(running=1),
                                                  summary=SUMMARY))
    port = serve(0)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    labels = {name for family in text_string_to_metric_families(text)
              if family.name.startswith("scarce_") for s in family.samples for name in s.labels}
    assert labels <= {"namespace", "benchmark", "state", "phase", "dataset", "arm", "baseline",
                      "stage", "le"}
    assert "verdict" not in text and "hardestClass" not in text


def test_the_port_comes_from_the_environment():
    assert port_from_env({}) == 9090
    assert port_from_env({"SCARCE_METRICS_PORT": "9100"}) == 9100
    with pytest.raises(ValueError, match="SCARCE_METRICS_PORT: must be a port number, got 'x'"):
        port_from_env({"SCARCE_METRICS_PORT": "x"})
    with pytest.raises(ValueError, match=r"must be in 0\.\.65535, got 70000"):
        port_from_env({"SCARCE_METRICS_PORT": "70000"})
    assert serve(0) == serve(1234) == metrics._served[0]  # one server per process
