"""Prometheus metrics of the operator, served at ``/metrics`` on ``$SCARCE_METRICS_PORT``
(default 9090).

The names and labels are a contract with the Grafana dashboard of the Helm chart; do not
rename them. Labels hold only namespace, benchmark, dataset, arm, stage, state and phase
names, never spec contents or credentials. Per-benchmark series come from the benchmark's
last reconcile (`BenchmarkCollector`), so a deleted benchmark's series disappear with it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from scarce.operator.jobs import job_duration, job_retries
from scarce.operator.status import PHASES, STATES, Counts

DEFAULT_PORT = 9090

#: The operator's own registry (not the process-global default), so tests and embedding
#: never collide with other exporters.
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

UNIT_DURATION = Histogram(
    "scarce_unit_duration_seconds",
    "Wall-clock seconds of finished unit Jobs, from the Job's start to its end (retries "
    "included).",
    ["stage"],
    buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400),
    registry=REGISTRY,
)
UNIT_RETRIES = Counter(
    "scarce_unit_retries",  # exposed as scarce_unit_retries_total
    "Failed pods of finished unit Jobs (each one a retry or a final failed attempt).",
    ["stage"],
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "scarce_reconcile_errors",  # exposed as scarce_reconcile_errors_total
    "Reconciles that raised (API or store errors); each one is retried.",
    registry=REGISTRY,
)


@dataclass(frozen=True)
class Snapshot:
    """What the metrics show of one benchmark, from its last reconcile."""

    phase: str
    counts: Counts = field(default_factory=Counts)
    summary: Mapping[str, Any] | None = None


class BenchmarkCollector:
    """Per-benchmark gauges, computed at scrape time from the latest snapshots."""

    def __init__(self) -> None:
        self._snapshots: dict[tuple[str, str], Snapshot] = {}
        self._lock = threading.Lock()  # scrapes run in the HTTP server's thread

    def update(self, namespace: str, name: str, snapshot: Snapshot) -> None:
        """Replace a benchmark's snapshot."""
        with self._lock:
            self._snapshots[(namespace, name)] = snapshot

    def known(self) -> list[tuple[str, str]]:
        """(namespace, name) of every benchmark with a snapshot."""
        with self._lock:
            return sorted(self._snapshots)

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted benchmark: its series disappear from the next scrape."""
        with self._lock:
            self._snapshots.pop((namespace, name), None)

    def collect(self) -> Iterator[Metric]:
        """The gauges of every known benchmark."""
        with self._lock:
            snapshots = dict(self._snapshots)
        units = GaugeMetricFamily("scarce_units", "Units of a benchmark by state.",
                                  labels=["namespace", "benchmark", "state"])
        ratio = GaugeMetricFamily("scarce_benchmark_progress_ratio",
                                  "Finished units (succeeded or failed) of all units, 0-1.",
                                  labels=["namespace", "benchmark"])
        phases = GaugeMetricFamily("scarce_benchmarks", "Benchmarks by phase.",
                                   labels=["phase"])
        accuracy = GaugeMetricFamily(
            "scarce_hardest_class_accuracy",
            "Mean hardest-class accuracy (recall, percent) of an arm on the frozen test split, "
            "from the reducer's summary.", labels=["namespace", "benchmark", "dataset", "arm"])
        paired_z = GaugeMetricFamily(
            "scarce_paired_z",
            "Paired standardized difference z = mean(d) / (sd(d) / sqrt(n)) of an arm vs a "
            "baseline (report eq. 1), from the reducer's summary.",
            labels=["namespace", "benchmark", "dataset", "arm", "baseline"])
        by_phase = dict.fromkeys(PHASES, 0)
        for (namespace, name), snap in sorted(snapshots.items()):
            by_phase[snap.phase] = by_phase.get(snap.phase, 0) + 1
            for state in STATES:
                units.add_metric([namespace, name, state], getattr(snap.counts, state))
            total = snap.counts.total
            ratio.add_metric([namespace, name], snap.counts.done / total if total else 0.0)
            for dataset, arm, baseline, z, mean in _summary_rows(snap.summary):
                if mean is not None:
                    accuracy.add_metric([namespace, name, dataset, arm], mean)
                if z is not None:
                    paired_z.add_metric([namespace, name, dataset, arm, baseline], z)
        for phase, count in by_phase.items():
            phases.add_metric([phase], count)
        yield from (units, ratio, phases, accuracy, paired_z)


def _summary_rows(summary: Mapping[str, Any] | None) -> Iterator[tuple]:
    """(dataset, arm, baseline, z, mean) rows of a compact summary; mean only on the
    vs-real row so each arm's accuracy is emitted once."""
    datasets = (summary or {}).get("datasets") or {}
    for dataset, ds in sorted(datasets.items()):
        for arm, entry in sorted((ds.get("arms") or {}).items()):
            yield dataset, arm, "real", entry.get("z"), entry.get("mean")
            placebo = entry.get("vsPlacebo")
            if placebo:
                yield dataset, arm, "placebo", placebo.get("z"), None


BENCHMARKS = BenchmarkCollector()
REGISTRY.register(BENCHMARKS)


def record_finished(stage: str, job: Mapping[str, Any]) -> None:
    """Count a finished Job once: its duration and its failed pods."""
    seconds = job_duration(job)
    if seconds is not None:
        UNIT_DURATION.labels(stage=stage).observe(seconds)
    retries = job_retries(job)
    if retries:
        UNIT_RETRIES.labels(stage=stage).inc(retries)


def port_from_env(env: Mapping[str, str] | None = None) -> int:
    """The metrics port: $SCARCE_METRICS_PORT, default 9090 (0 picks a free port)."""
    env = os.environ if env is None else env
    text = env.get("SCARCE_METRICS_PORT") or str(DEFAULT_PORT)
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"SCARCE_METRICS_PORT: must be a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"SCARCE_METRICS_PORT: must be in 0..65535, got {port}")
    return port


_served: list[int] = []
_serve_lock = threading.Lock()


def serve(port: int, addr: str = "0.0.0.0") -> int:
    """Start the metrics HTTP server once per process (any path serves the metrics;
    ``/metrics`` is the documented one); returns the port it listens on."""
    with _serve_lock:
        if not _served:
            server, _ = start_http_server(port, addr=addr, registry=REGISTRY)
            _served.append(server.server_port)
        return _served[0]
