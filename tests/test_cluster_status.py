"""The reducer's status patch (scarce.trainer.cluster_status): what it sends, that it retries,
that a failure never fails the reducer, and that local runs never touch a cluster.

The patch against an API server is exercised by the kmock operator test (the reducer step)."""

from __future__ import annotations

from typing import Any

from scarce.trainer.cluster_status import publish, publish_from_env, report_uri

REPORT = {"benchmark": "bench", "datasets": [{
    "dataset": "tiles", "hardestClass": "scratch",
    "arms": {"real": {"mean": 40.0, "n": 7}, "vendor": {"mean": 55.0, "n": 7}},
    "comparisons": [{"arm": "vendor", "baseline": "real", "gainPp": 15.0, "z": 5.2, "n": 7,
                     "verdict": "holds vs real"}]}]}


class FakeApi:
    def __init__(self, failures: int = 0) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.failures = failures

    def patch_namespaced_custom_object_status(self, *args: Any) -> None:
        self.calls.append(args)
        if len(self.calls) <= self.failures:
            raise ConnectionError("apiserver unavailable")


def test_the_reducer_patches_summary_report_uri_and_headline():
    api = FakeApi()
    assert publish(REPORT, "s3://b/reports/bench/report.json", name="bench", namespace="team",
                   api=api)
    group, version, namespace, plural, name, body = api.calls[0]
    assert (group, version, namespace, plural, name) == (
        "scarce.dev", "v1alpha1", "team", "scarcebenchmarks", "bench")
    status = body["status"]
    assert status["reportUri"] == "s3://b/reports/bench/report.json"
    assert status["headlineGain"] == "+15.0 pp vendor (z=5.2)"
    assert status["hardestClasses"] == {"tiles": "scratch"}
    assert status["summary"]["datasets"]["tiles"]["arms"]["vendor"]["z"] == 5.2
    assert set(body) == {"status"}  # nothing outside the status subresource


def test_a_failing_patch_is_retried_then_given_up_without_failing(caplog):
    api = FakeApi(failures=1)
    assert publish(REPORT, "u", name="bench", namespace="team", api=api, backoff_s=0)
    assert len(api.calls) == 2
    down = FakeApi(failures=99)
    assert not publish(REPORT, "u", name="bench", namespace="team", api=down, attempts=3,
                       backoff_s=0)
    assert len(down.calls) == 3
    assert "the operator will copy the summary from the report in the store" in caplog.text


def test_local_runs_publish_nothing():
    assert publish_from_env(REPORT, "file:///tmp/store", "bench", env={}) is False
    assert report_uri("s3://bucket/prefix/", "bench") == \
        "s3://bucket/prefix/reports/bench/report.json"
