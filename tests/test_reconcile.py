"""One reconcile, decided from what exists (scarce.operator.reconcile): stage order, parallelism,
suspend, partial success, split and leakage failures, seed packs, the TTL hand-off and restart
safety. Pure: a dict plays the cluster's Jobs and another the store.

What these tests cannot prove: the Kubernetes API calls and kopf's triggering (the kmock tests
do), and the real Job controller's behaviour (the end-to-end tests do).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from scarce.operator.jobs import JobSettings, Owner
from scarce.operator.plan import plan_benchmark
from scarce.operator.reconcile import Decision, invalid_spec, reconcile
from scarce.operator.spec import ScarceBenchmark, validate_document
from scarce.trainer.unit import WorkUnit

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
OWNER = Owner("bench", "default", "uid-1")


def benchmark(**spec: Any) -> ScarceBenchmark:
    body: dict[str, Any] = {
        "storage": {"uri": "s3://bucket/runs"},
        "datasets": [{"name": "tiles", "format": "imagefolder", "source": "s3://bucket/tiles",
                      "hardestClass": "pit"}],
        "synthetic": [{"name": "vendor", "kind": "external", "uri": "s3://bucket/drop",
                       "perClass": 10}],
        "seeds": 7,
        "parallelism": 3,
        **spec,
    }
    return validate_document({"apiVersion": "scarce.dev/v1alpha1", "kind": "ScarceBenchmark",
                              "metadata": {"name": "bench"}, "spec": body})


class Store:
    """Result objects by dataset / unit key."""

    def __init__(self) -> None:
        self.splits: dict[str, dict[str, Any]] = {}
        self.results: set[str] = set()
        self.report_json: dict[str, Any] | None = None

    def split_result(self, dataset: str) -> dict[str, Any] | None:
        return self.splits.get(dataset)

    def has_result(self, unit: WorkUnit) -> bool:
        assert unit.split_digest, "a result is checked with the bound unit"
        return unit.key in self.results

    def report(self) -> dict[str, Any] | None:
        return self.report_json


class Cluster:
    """Applies decisions as the handlers do: status first, then Jobs, then TTLs."""

    def __init__(self, bench: ScarceBenchmark, store: Store | None = None) -> None:
        self.bench = bench
        self.plan = plan_benchmark(bench)
        self.store = store or Store()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.status: dict[str, Any] = {}
        self.created: list[str] = []
        self.events: list[tuple[str, str, str]] = []
        self.now = T0

    def step(self) -> Decision:
        self.now += dt.timedelta(seconds=30)
        decision = reconcile(self.bench, owner=OWNER, status=self.status, generation=1,
                             jobs=self.jobs, reader=self.store, settings=JobSettings(),
                             plan=self.plan, now=self.now)
        self.status = {**self.status, **decision.status}
        for manifest in decision.create:
            name = manifest["metadata"]["name"]
            assert name not in self.jobs, f"{name} created twice"
            self.jobs[name] = manifest
            self.created.append(name)
        for name in decision.ttl:
            self.jobs[name]["spec"]["ttlSecondsAfterFinished"] = decision.ttl_seconds
        self.events += [(e.type, e.reason, e.message) for e in decision.events]
        return decision

    def running(self) -> list[str]:
        return [n for n, j in self.jobs.items() if not (j.get("status") or {}).get("conditions")]

    def finish(self, name: str, ok: bool = True, reason: str = "BackoffLimitExceeded") -> None:
        job = self.jobs[name]
        kind = "Complete" if ok else "Failed"
        job["status"] = {"conditions": [{"type": kind, "status": "True", "reason": reason}],
                         "startTime": "2026-03-01T12:00:00Z",
                         "completionTime": "2026-03-01T12:05:00Z", "failed": 0 if ok else 3}
        units = job["metadata"]["annotations"]["scarce.dev/units"].split(",")
        if ok:
            self.store.results.update(units)
            stage = job["metadata"]["labels"]["scarce.dev/stage"]
            if stage == "split":
                dataset = job["metadata"]["labels"]["scarce.dev/dataset"]
                self.store.splits.setdefault(dataset, {"splitDigest": f"digest-{dataset}"})

    def ttl_delete(self) -> None:
        """The TTL controller: finished Jobs with a TTL disappear."""
        for name in [n for n, j in self.jobs.items() if "ttlSecondsAfterFinished" in j["spec"]]:
            del self.jobs[name]

    def run(self, fail: set[str] = frozenset(), steps: int = 200) -> None:
        """Reconcile and finish every running Job until the benchmark ends; Jobs whose unit
        keys contain one of `fail` fail."""
        for _ in range(steps):
            self.step()
            if self.status["phase"] in ("Succeeded", "Failed"):
                return
            for name in self.running():
                keys = self.jobs[name]["metadata"]["annotations"]["scarce.dev/units"]
                self.finish(name, ok=not any(f in keys for f in fail))
        raise AssertionError(f"not finished: {self.status['phase']}")

    def condition(self, kind: str) -> dict[str, Any]:
        return next(c for c in self.status["conditions"] if c["type"] == kind)


def stage_of(job: dict[str, Any]) -> str:
    return job["metadata"]["labels"]["scarce.dev/stage"]


def test_first_reconcile_sets_started_at_and_creates_the_split_jobs_only():
    cluster = Cluster(benchmark(datasets=[
        {"name": n, "format": "imagefolder", "source": f"s3://bucket/{n}", "hardestClass": "pit"}
        for n in ("tiles", "nuts")]))
    decision = cluster.step()
    assert [stage_of(m) for m in decision.create] == ["split", "split"]
    assert decision.status["startedAt"] == "2026-03-01T12:00:30Z"
    assert decision.status["phase"] == "Splitting"
    assert decision.status["progress"] == "0/47"  # 2 x (split, 21 train, fidelity), reduce
    assert cluster.condition("SplitsFrozen")["status"] == "False"
    assert ("Normal", "Splitting") in [e[:2] for e in cluster.events]


def test_stages_run_in_order_and_parallelism_is_never_exceeded():
    cluster = Cluster(benchmark(parallelism=4, fewShot=[2]))
    seen_stages: list[str] = []
    for _ in range(100):
        cluster.step()
        assert len(cluster.running()) <= 4
        stages = {stage_of(cluster.jobs[n]) for n in cluster.running()}
        assert len(stages) <= 1, stages  # never two stages at once
        seen_stages += [s for s in stages if not seen_stages or seen_stages[-1] != s]
        if cluster.status["phase"] == "Succeeded":
            break
        for name in cluster.running()[:3]:  # finish some, keep others running
            cluster.finish(name)
    assert cluster.status["phase"] == "Succeeded"
    assert seen_stages == ["split", "train", "fidelity", "reduce"]
    assert cluster.status["splitDigests"] == {"tiles": "digest-tiles"}
    assert cluster.condition("SplitsFrozen")["message"] == "test splits frozen: tiles=digest-tiles"
    assert cluster.condition("Complete")["status"] == "True"
    # split, 3 arms x 7 seeds, real and vendor x 7 seeds at k=2, fidelity, reduce
    assert cluster.status["units"] == {"total": 38, "pending": 0, "running": 0,
                                       "succeeded": 38, "failed": 0}


def test_the_reducer_gets_only_datasets_whose_split_succeeded():
    cluster = Cluster(benchmark(datasets=[
        {"name": n, "format": "imagefolder", "source": f"s3://bucket/{n}", "hardestClass": "pit"}
        for n in ("tiles", "nuts")]))
    cluster.run(fail={"split/nuts"})
    reduce_job = next(j for j in cluster.jobs.values() if stage_of(j) == "reduce")
    unit = reduce_job["spec"]["template"]["spec"]["containers"][0]["command"][3]
    assert '"name":"tiles"' in unit and '"name":"nuts"' not in unit
    assert cluster.status["stages"]["train"]["failed"] == 21  # every nuts unit, without Jobs
    assert not any(j["metadata"]["labels"].get("scarce.dev/dataset") == "nuts"
                   and stage_of(j) == "train" for j in cluster.jobs.values())
    assert "split failed: nuts" in cluster.condition("SplitsFrozen")["message"]
    # The report is written for tiles, but nuts has no pair at all: below minPairs.
    assert cluster.status["phase"] == "Failed"
    assert cluster.condition("Complete")["message"] == \
        "fewer than minPairs=7 seed pairs: nuts has 0"


def test_every_split_failing_fails_the_benchmark_without_a_reducer():
    cluster = Cluster(benchmark())
    cluster.run(fail={"split/tiles"})
    assert cluster.status["phase"] == "Failed"
    assert cluster.condition("Complete")["reason"] == "NoSplits"
    assert not any(stage_of(j) == "reduce" for j in cluster.jobs.values())
    assert ("Warning", "Failed") in [e[:2] for e in cluster.events]


def test_units_of_a_refused_source_fail_without_jobs():
    store = Store()
    store.splits["tiles"] = {"splitDigest": "d1", "synthetic": {
        "vendor": {"error": "3 synthetic images match test images: a.png, b.png, c.png"}}}
    cluster = Cluster(benchmark(), store)
    cluster.run()
    arms = {j["metadata"]["labels"].get("scarce.dev/arm") for j in cluster.jobs.values()
            if stage_of(j) == "train"}
    assert arms == {"real"}  # vendor and placebo (which copies vendor's counts) were refused
    assert cluster.status["refusedSources"] == {"tiles": {
        "vendor": "3 synthetic images match test images: a.png, b.png, c.png"}}
    failed = [e for e in cluster.events if e[1] == "UnitFailed"]
    assert "a.png" in failed[0][2]
    # No pair at all for vendor: fewer than minPairs, the benchmark fails.
    assert cluster.status["phase"] == "Failed"
    assert cluster.condition("Complete")["reason"] == "InsufficientPairs"


def test_partial_success_succeeds_degraded_naming_the_missing_pairs():
    cluster = Cluster(benchmark(seeds=8))
    cluster.run(fail={"train/tiles/vendor/kfull/seed3"})
    assert cluster.status["phase"] == "Succeeded"
    degraded = cluster.condition("Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "UnitsFailed"
    assert degraded["message"] == ("1 unit(s) failed: train/tiles/vendor/kfull/seed3; missing "
                                   "pairs: tiles vendor vs real (kfull): seeds 3")
    assert cluster.status["pairs"] == {"tiles": 7}
    assert cluster.status["units"]["failed"] == 1
    # The reducer ran after the failure, with nothing pending or running.
    assert any(stage_of(j) == "reduce" for j in cluster.jobs.values())


def test_fewer_pairs_than_min_pairs_fails_the_benchmark():
    cluster = Cluster(benchmark(seeds=8, minPairs=8))
    cluster.run(fail={"train/tiles/real/kfull/seed3"})
    assert cluster.status["phase"] == "Failed"
    complete = cluster.condition("Complete")
    assert complete["reason"] == "InsufficientPairs"
    assert complete["message"] == "fewer than minPairs=8 seed pairs: tiles has 7"


def test_min_pairs_is_capped_at_the_seeds_asked_for():
    cluster = Cluster(benchmark(seeds=3))  # minPairs 7 by default
    cluster.run()
    assert cluster.status["phase"] == "Succeeded"


def test_suspend_stops_new_jobs_and_resume_goes_on():
    bench = benchmark(parallelism=2)
    cluster = Cluster(bench)
    cluster.step()
    cluster.finish(cluster.running()[0])
    cluster.step()
    assert len(cluster.running()) == 2
    cluster.bench = bench.model_copy(update={"spec": bench.spec.model_copy(
        update={"suspend": True})})
    before = len(cluster.created)
    for name in cluster.running():
        cluster.finish(name)
    for _ in range(3):
        cluster.step()
    assert len(cluster.created) == before and cluster.running() == []
    assert cluster.condition("Training")["reason"] == "Suspended"
    assert cluster.status["suspended"] is True
    assert ("Normal", "Suspended") in [e[:2] for e in cluster.events]
    cluster.bench = bench
    cluster.step()
    assert len(cluster.created) == before + 2
    assert ("Normal", "Resumed") in [e[:2] for e in cluster.events]


def test_suspended_from_the_start_stays_pending_and_unstarted():
    cluster = Cluster(benchmark(suspend=True))
    decision = cluster.step()
    assert decision.create == [] and decision.status["phase"] == "Pending"
    assert "startedAt" not in decision.status


def test_reconciling_again_or_after_a_restart_creates_nothing_twice():
    cluster = Cluster(benchmark(parallelism=5))
    cluster.step()
    cluster.finish(cluster.running()[0])
    cluster.step()
    first = set(cluster.created)
    # A restarted operator has nothing but the cluster: the same Jobs and status.
    again = reconcile(cluster.bench, owner=OWNER, status=cluster.status, generation=1,
                      jobs=cluster.jobs, reader=cluster.store, settings=JobSettings(),
                      plan=plan_benchmark(cluster.bench), now=cluster.now)
    assert again.create == []
    assert set(cluster.created) == first
    # Even with the status lost, the Jobs alone prevent duplicates.
    lost = reconcile(cluster.bench, owner=OWNER, status={}, generation=1, jobs=cluster.jobs,
                     reader=cluster.store, settings=JobSettings(),
                     plan=plan_benchmark(cluster.bench), now=cluster.now)
    assert {m["metadata"]["name"] for m in lost.create}.isdisjoint(cluster.jobs)


def test_finished_jobs_get_a_ttl_only_once_recorded_and_stay_recorded_when_deleted():
    cluster = Cluster(benchmark(parallelism=2, jobs={"ttlSecondsAfterFinished": 600}))
    cluster.step()
    split = cluster.running()[0]
    cluster.finish(split)
    decision = cluster.step()
    assert decision.ttl == [split] and decision.ttl_seconds == 600
    assert [stage for stage, _ in decision.finished] == ["split"]
    assert cluster.step().ttl == []  # already has its TTL
    assert cluster.step().finished == []  # recorded once: metrics count it once
    train = cluster.running()
    cluster.finish(train[0], ok=False)
    cluster.step()
    cluster.ttl_delete()
    assert split not in cluster.jobs and train[0] not in cluster.jobs
    decision = cluster.step()
    assert decision.status["stages"]["split"]["succeeded"] == 1
    assert decision.status["stages"]["train"]["failed"] == 1
    assert split not in [m["metadata"]["name"] for m in decision.create]
    assert train[0] not in [m["metadata"]["name"] for m in decision.create]


def test_in_a_failed_pack_seeds_with_results_count_as_succeeded():
    cluster = Cluster(benchmark(seedsPerJob=3, parallelism=10))
    cluster.step()
    cluster.finish(cluster.running()[0])
    cluster.step()
    pack = next(n for n in cluster.running()
                if cluster.jobs[n]["metadata"]["labels"]["scarce.dev/seed"] == "0-2"
                and cluster.jobs[n]["metadata"]["labels"]["scarce.dev/arm"] == "real")
    # Seeds 0 and 1 wrote their results before seed 2 failed permanently.
    cluster.store.results.update({"train/tiles/real/kfull/seed0",
                                  "train/tiles/real/kfull/seed1"})
    cluster.finish(pack, ok=False, reason="PodFailurePolicy")
    cluster.step()
    assert cluster.status["stages"]["train"]["failed"] == 1
    assert cluster.status["stages"]["train"]["succeeded"] == 2
    failed = [e for e in cluster.events if e[1] == "UnitFailed"]
    assert "train/tiles/real/kfull/seed2" in failed[0][2]
    assert "PodFailurePolicy" in failed[0][2]


def test_the_summary_is_copied_from_the_store_when_the_reducer_did_not_patch_it():
    store = Store()
    store.report_json = {"benchmark": "bench", "datasets": [{
        "dataset": "tiles", "hardestClass": "pit",
        "arms": {"real": {"mean": 50.0, "n": 7}, "vendor": {"mean": 62.5, "n": 7}},
        "comparisons": [{"arm": "vendor", "baseline": "real", "gainPp": 12.5, "z": 4.1, "n": 7,
                         "verdict": "holds vs real"}]}]}
    cluster = Cluster(benchmark(arms=["real", "vendor"]), store)
    cluster.run()
    assert cluster.status["headlineGain"] == "+12.5 pp vendor (z=4.1)"
    assert cluster.status["reportUri"] == "s3://bucket/runs/reports/bench/report.json"
    assert cluster.status["summary"]["datasets"]["tiles"]["arms"]["vendor"]["gain"] == 12.5
    # The reducer's own patch wins: the operator never overwrites a summary.
    cluster.status["summary"] = {"datasets": {}, "from": "reducer"}
    assert "summary" not in cluster.step().status


def test_an_invalid_spec_fails_with_spec_valid_false_and_one_event():
    messages = ["spec.seeds: must be at least 2, got 1"]
    decision = invalid_spec({}, messages, now=T0, generation=2)
    assert decision.status["phase"] == "Failed"
    spec_valid = decision.status["conditions"][0]
    assert spec_valid["type"] == "SpecValid" and spec_valid["status"] == "False"
    assert spec_valid["message"] == "spec.seeds: must be at least 2, got 1"
    assert spec_valid["observedGeneration"] == 2
    assert decision.create == []
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "SpecInvalid")]
    again = invalid_spec(decision.status, messages, now=T0 + dt.timedelta(hours=1), generation=2)
    assert again.events == []  # the same problem is not announced every reconcile
    assert again.status["conditions"][0]["lastTransitionTime"] == spec_valid["lastTransitionTime"]


def test_events_name_phase_changes_and_the_final_verdict():
    cluster = Cluster(benchmark(seeds=2, parallelism=10))
    cluster.run()
    reasons = [e[1] for e in cluster.events]
    assert reasons == ["Splitting", "Training", "Reducing", "Succeeded"]
    assert cluster.events[-1][2].startswith("Succeeded: the report is written (")


def test_the_decision_modules_are_pure_and_the_operator_never_loads_torch():
    import subprocess
    import sys
    from pathlib import Path

    from tests.test_layering import imported_modules

    io_modules = {"scarce.trainer.store", "minio", "kubernetes", "kopf", "subprocess", "torch",
                  "scarce.operator.handlers", "socket", "urllib"}
    imports = imported_modules(Path(__file__).resolve().parents[1] / "operator")
    for path in ("operator/jobs.py", "operator/status.py", "operator/reconcile.py"):
        assert not imports[path] & io_modules, path
    code = ("import sys, scarce.operator.handlers, scarce.operator.metrics\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
