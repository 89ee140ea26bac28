"""Publish the reducer's result to the ScarceBenchmark's status (trainer side).

A reducer Job runs with ``SCARCE_BENCHMARK_NAME``/``SCARCE_BENCHMARK_NAMESPACE`` set; after
writing the report to the store it patches ``status.summary``, ``reportUri``, ``headlineGain``
and ``hardestClasses`` through the Kubernetes API with its own service account (which may only
get and patch ``scarcebenchmarks/status``). The summary is compact: per dataset and arm, the
mean hardest-class accuracy (percent), the gain over real (pp), z, n and the verdict; the full
report stays in the store at ``reportUri``.

`compact_summary`, `headline_gain` and `status_fields` are pure; the operator uses them too, to
fill the same fields from the store when a reducer could not patch the status. This module never
imports ``scarce.operator`` (the layering contract); it keeps its own copy of the resource's
coordinates.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from scarce.trainer.config import PLACEBO_ARM, REAL_ARM

log = logging.getLogger("scarce.trainer")

GROUP, VERSION, PLURAL = "scarce.dev", "v1alpha1", "scarcebenchmarks"
ENV_NAME, ENV_NAMESPACE = "SCARCE_BENCHMARK_NAME", "SCARCE_BENCHMARK_NAMESPACE"
#: Beyond this size the summary is left out of the status (reportUri still points at the full
#: report), keeping the object far below etcd's 1.5 MiB limit.
MAX_SUMMARY_BYTES = 32 * 1024


def report_uri(storage_uri: str, benchmark: str) -> str:
    """Where the reducer writes a benchmark's report.json."""
    return f"{storage_uri.rstrip('/')}/reports/{benchmark}/report.json"


def _num(value: Any, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


def compact_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """Per dataset and arm: mean (hardest-class accuracy, %), n, and vs real the gain (pp), z and
    verdict; vs placebo the gain, z and n. ``n`` is the arm's seeds with a result; a
    comparison's ``pairs`` the seeds paired with its baseline."""
    datasets: dict[str, Any] = {}
    for ds in report.get("datasets", []):
        by_pair = {(c["arm"], c["baseline"]): c for c in ds.get("comparisons", [])}
        arms: dict[str, Any] = {}
        for arm, values in ds.get("arms", {}).items():
            entry: dict[str, Any] = {"mean": _num(values.get("mean")), "n": values.get("n", 0)}
            vs_real = by_pair.get((arm, REAL_ARM))
            if vs_real:
                entry.update(gain=_num(vs_real.get("gainPp")), z=_num(vs_real.get("z")),
                             pairs=vs_real.get("n", 0), verdict=vs_real.get("verdict"))
            vs_placebo = by_pair.get((arm, PLACEBO_ARM))
            if vs_placebo:
                entry["vsPlacebo"] = {"gain": _num(vs_placebo.get("gainPp")),
                                      "z": _num(vs_placebo.get("z")),
                                      "pairs": vs_placebo.get("n", 0)}
            arms[arm] = entry
        datasets[ds["dataset"]] = {"hardestClass": ds.get("hardestClass"), "arms": arms}
    return {"datasets": datasets}


def headline_gain(report: Mapping[str, Any]) -> str | None:
    """The one-line result of the Hardest-class gain column: the synthetic arm with the
    largest gain over real, e.g. ``+12.3 pp vendor (z=4.1)`` (``on <dataset>`` when the
    benchmark has several datasets); None without a synthetic arm."""
    datasets = report.get("datasets", [])
    best: tuple[float, str, Any, str] | None = None
    for ds in datasets:
        for c in ds.get("comparisons", []):
            if c["baseline"] != REAL_ARM or c["arm"] == PLACEBO_ARM or c.get("gainPp") is None:
                continue
            if best is None or c["gainPp"] > best[0]:
                best = (c["gainPp"], c["arm"], c.get("z"), ds["dataset"])
    if best is None:
        return None
    gain, arm, z, dataset = best
    z_text = "n/a" if z is None else f"{z:.1f}"
    where = f" on {dataset}" if len(datasets) > 1 else ""
    return f"{gain:+.1f} pp {arm}{where} (z={z_text})"


def status_fields(report: Mapping[str, Any], uri: str) -> dict[str, Any]:
    """The status fields the reducer owns: summary, reportUri, headlineGain, hardestClasses."""
    summary: dict[str, Any] = compact_summary(report)
    if len(json.dumps(summary)) > MAX_SUMMARY_BYTES:
        summary = {"truncated": True, "note": "too large for the status; see reportUri"}
    return {
        "summary": summary,
        "reportUri": uri,
        "headlineGain": headline_gain(report),
        "hardestClasses": {ds["dataset"]: ds.get("hardestClass")
                           for ds in report.get("datasets", [])},
    }


def _custom_objects_api() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()  # outside a pod (tests, a kubelet stand-in)
    return client.CustomObjectsApi()


def publish(
    report: Mapping[str, Any], uri: str, *, name: str, namespace: str, api: Any = None,
    attempts: int = 3, backoff_s: float = 1.0,
) -> bool:
    """Merge-patch the benchmark's status with `status_fields`; True when it was written.

    A failure is logged and returns False instead of failing the reducer: the report is safe
    in the store, and the operator copies the same fields from it when the status lacks them.
    """
    body = {"status": status_fields(report, uri)}
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            api = api or _custom_objects_api()
            api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name,
                                                      body)
            return True
        except Exception as error:  # API errors, refused connections, bad config: all retried
            last = error
            if attempt + 1 < attempts:
                time.sleep(backoff_s * 2**attempt)
    log.warning("could not patch the status of %s/%s (%s); the operator will copy the "
                "summary from the report in the store", namespace, name, last)
    return False


def publish_from_env(report: Mapping[str, Any], storage_uri: str, benchmark: str,
                     env: Mapping[str, str] | None = None) -> bool:
    """Publish when the reducer runs in a cluster Job (SCARCE_BENCHMARK_NAME set); a no-op
    for local runs."""
    env = os.environ if env is None else env
    name, namespace = env.get(ENV_NAME), env.get(ENV_NAMESPACE)
    if not name:
        return False
    return publish(report, report_uri(storage_uri, benchmark), name=name,
                   namespace=namespace or "default")
