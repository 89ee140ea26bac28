"""The real kopf operator (``kopf run -m scarce.operator.handlers``) against kmock, a stateful
Kubernetes API mock: benchmarks in, Jobs, status and Events out.

The test plays the Job controller and the trainer: it writes result objects into a file://
store it owns (the operator reads split digests and the report from the store) and marks Jobs
finished by patching their status.

What kmock cannot prove: garbage collection by ownerReferences (there is no garbage
collector), the real Job controller (retries, podFailurePolicy, TTL deletion), admission (the
CRD's OpenAPI schema and CEL rules are not evaluated; label selectors are ignored, so the
operator's own label filter is what is exercised), optimistic concurrency (resourceVersion is
static) and RBAC. The end-to-end tests against a real control plane cover those.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kmock as kmock_lib
import kopf
import kubernetes
import pytest
from kopf.testing import KopfRunner

from scarce.operator import metrics
from scarce.operator.jobs import LABEL_BENCHMARK
from scarce.trainer.cluster_status import publish
from scarce.trainer.store import open_store
from tests.kmock_cluster import BENCHMARKS, serve_benchmarks

JOBS = "batch/v1/jobs"
EVENTS = "v1/events"
NS = "default"


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
async def k8s(kmock: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """kmock serving the ScarceBenchmark resource and the built-in ones, with a kubeconfig
    pointing at it (for kopf's login and the operator's own client)."""
    serve_benchmarks(kmock, tmp_path, monkeypatch, NS)
    monkeypatch.setenv("SCARCE_METRICS_PORT", "0")
    # Read when kopf first imports the handlers: resync often, so a lost event costs little.
    monkeypatch.setenv("SCARCE_RECONCILE_INTERVAL", "0.5")
    monkeypatch.setenv("SCARCE_TRAINER_IMAGE", "registry.test/scarce-trainer:9")
    return kmock


class Operator:
    """Starts and stops the operator in-process (KopfRunner), as often as a test needs."""

    def __init__(self) -> None:
        self.runner: KopfRunner | None = None

    async def start(self) -> None:
        settings = kopf.OperatorSettings()
        # kmock answers GET /api/v1/namespaces with 500, which breaks kopf's namespace
        # scanning; with one fixed namespace there is nothing to scan anyway.
        settings.scanning.disabled = True
        self.runner = KopfRunner(
            ["run", "--standalone", f"--namespace={NS}", "-m", "scarce.operator.handlers"],
            settings=settings, timeout=30)
        # __enter__/__exit__ join a thread: never block kmock's event loop with them.
        await asyncio.to_thread(self.runner.__enter__)

    async def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await asyncio.to_thread(runner.__exit__, None, None, None)
            assert runner.exception is None, runner.output


@pytest.fixture
async def operator(k8s: Any) -> AsyncIterator[Operator]:
    op = Operator()
    await op.start()
    try:
        yield op
    finally:
        await op.stop()


# --- helpers ----------------------------------------------------------------------------------


def benchmark(name: str, store: Path, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "storage": {"uri": f"file://{store}", "endpoint": "minio.minio:9000",
                    "credentials": {"secretName": "minio-creds"}},
        "datasets": [{"name": "tiles", "format": "imagefolder", "source": "file:///data/tiles",
                      "hardestClass": "pit"}],
        "synthetic": [{"name": "vendor", "kind": "external", "uri": "file:///data/drop",
                       "perClass": 10}],
        "arms": ["real", "vendor"],
        "seeds": 3,
        "parallelism": 2,
        **spec,
    }
    return {
        "apiVersion": "scarce.dev/v1alpha1", "kind": "ScarceBenchmark",
        # kmock stores bodies as sent: give it what an apiserver would have filled in.
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1,
                     "resourceVersion": "1", "creationTimestamp": "2026-03-01T12:00:00Z"},
        "spec": body,
    }


async def create(k8s: Any, body: dict[str, Any]) -> None:
    url = f"/apis/scarce.dev/v1alpha1/namespaces/{NS}/scarcebenchmarks"
    async with k8s.post(url, json=body) as response:
        assert response.status in (200, 201), await response.text()


async def patch_spec(k8s: Any, name: str, spec: dict[str, Any]) -> None:
    url = f"/apis/scarce.dev/v1alpha1/namespaces/{NS}/scarcebenchmarks/{name}"
    async with k8s.patch(url, json={"spec": spec, "metadata": {"generation": 2}}) as response:
        assert response.status == 200, await response.text()


def bench_of(k8s: Any, name: str) -> dict[str, Any]:
    return dict(k8s.objects[BENCHMARKS, NS, name])


def jobs_of(k8s: Any, name: str) -> dict[str, dict[str, Any]]:
    return {key[2]: dict(obj) for key, obj in k8s.objects.items()
            if key[0] == kmock_lib.resource(JOBS) and not obj.deleted
            and obj["metadata"]["labels"].get(LABEL_BENCHMARK) == name}


def unfinished(jobs: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(n for n, j in jobs.items() if not (j.get("status") or {}).get("conditions"))


def events_of(k8s: Any, name: str) -> list[dict[str, Any]]:
    return [dict(obj) for key, obj in k8s.objects.items()
            if key[0] == kmock_lib.resource(EVENTS) and not obj.deleted
            and obj["involvedObject"]["name"] == name]


async def until(check: Callable[[], Any], what: str, timeout: float = 8.0) -> Any:
    """Poll `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def finish_job(k8s: Any, job: dict[str, Any], store_root: Path, ok: bool = True) -> None:
    """Play the trainer and the Job controller: write the unit's result, mark the Job."""
    labels = job["metadata"]["labels"]
    store = open_store(f"file://{store_root}")
    bench, stage = labels[LABEL_BENCHMARK], labels["scarce.dev/stage"]
    if ok and stage == "split":
        dataset = labels["scarce.dev/dataset"]
        store.put_json(f"results/{bench}/{dataset}/split.json",
                       {"splitDigest": f"digest-of-{dataset}", "synthetic": {}})
    if ok and stage == "reduce":
        store.put_json(f"reports/{bench}/report.json", REPORT)
    kind = "Complete" if ok else "Failed"
    status = {"conditions": [{"type": kind, "status": "True", "reason": "Test"}],
              "startTime": "2026-03-01T12:00:00Z", "completionTime": "2026-03-01T12:01:00Z",
              "succeeded" if ok else "failed": 1}
    url = f"/apis/batch/v1/namespaces/{NS}/jobs/{job['metadata']['name']}/status"
    async with k8s.patch(url, json={"status": status}) as response:
        assert response.status == 200, await response.text()


REPORT = {"benchmark": "b", "datasets": [{
    "dataset": "tiles", "hardestClass": "pit",
    "arms": {"real": {"mean": 50.0, "n": 3}, "vendor": {"mean": 62.5, "n": 3}},
    "comparisons": [{"arm": "vendor", "baseline": "real", "gainPp": 12.5, "z": 4.1, "n": 3,
                     "verdict": "holds vs real"}]}]}


# --- the guarantees ---------------------------------------------------------------------------


async def test_a_new_benchmark_gets_split_jobs_owned_labelled_and_with_secret_refs(
        k8s, operator, tmp_path):
    await create(k8s, benchmark("b1", tmp_path / "store", datasets=[
        {"name": n, "format": "imagefolder", "source": f"file:///data/{n}", "hardestClass": "pit"}
        for n in ("tiles", "nuts")]))
    jobs = await until(lambda: len(jobs_of(k8s, "b1")) == 2 and jobs_of(k8s, "b1"),
                       "two split Jobs")
    for name, job in jobs.items():
        labels = job["metadata"]["labels"]
        assert labels["scarce.dev/stage"] == "split"
        assert labels["scarce.dev/dataset"] in ("tiles", "nuts")
        assert name.startswith("b1-split-")
        assert job["metadata"]["ownerReferences"][0] == {
            "apiVersion": "scarce.dev/v1alpha1", "kind": "ScarceBenchmark", "name": "b1",
            "uid": "uid-b1", "controller": True, "blockOwnerDeletion": True}
        pod = job["spec"]["template"]["spec"]
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["SCARCE_S3_SECRET_KEY"] == {"name": "SCARCE_S3_SECRET_KEY", "valueFrom": {
            "secretKeyRef": {"name": "minio-creds", "key": "secretKey"}}}
        assert pod["containers"][0]["image"] == "registry.test/scarce-trainer:9"
        assert job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2, 3]
    status = await until(lambda: bench_of(k8s, "b1").get("status", {}).get("phase")
                         == "Splitting" and bench_of(k8s, "b1")["status"], "phase Splitting")
    # 2 x (split, 2 arms x 3 seeds, fidelity), reduce
    assert status["startedAt"] and status["progress"] == "0/17"
    reasons = await until(lambda: [e["reason"] for e in events_of(k8s, "b1")], "an Event")
    assert "Splitting" in reasons


async def test_train_jobs_never_exceed_parallelism_and_the_benchmark_succeeds(
        k8s, operator, tmp_path):
    store = tmp_path / "store"
    await create(k8s, benchmark("b2", store))
    split = await until(lambda: jobs_of(k8s, "b2"), "the split Job")
    await finish_job(k8s, next(iter(split.values())), store)
    stages_seen = []
    most_running = 0
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        jobs = jobs_of(k8s, "b2")
        running = unfinished(jobs)
        most_running = max(most_running, len(running))
        assert len(running) <= 2, running
        for name in running:
            stage = jobs[name]["metadata"]["labels"]["scarce.dev/stage"]
            stages_seen.append(stage)
            if stage == "reduce":
                # The reducer publishes the summary with its own client, as in its Job.
                api = kubernetes.client.CustomObjectsApi(kubernetes.config.new_client_from_config())
                assert await asyncio.to_thread(
                    publish, REPORT, f"file://{store}/reports/b2/report.json", name="b2",
                    namespace=NS, api=api, attempts=1)
            await finish_job(k8s, jobs[name], store)
        if bench_of(k8s, "b2").get("status", {}).get("phase") == "Succeeded":
            break
        await asyncio.sleep(0.1)
    status = bench_of(k8s, "b2")["status"]
    assert status["phase"] == "Succeeded", status
    assert most_running == 2
    assert stages_seen[-1] == "reduce" and "fidelity" in stages_seen
    assert status["splitDigests"] == {"tiles": "digest-of-tiles"}
    assert status["progress"] == "9/9" and status["units"]["failed"] == 0
    assert status["headlineGain"] == "+12.5 pp vendor (z=4.1)"
    assert status["summary"]["datasets"]["tiles"]["arms"]["vendor"]["z"] == 4.1
    complete = next(c for c in status["conditions"] if c["type"] == "Complete")
    assert complete["status"] == "True"
    # Once recorded in the status, finished Jobs get their TTL.
    await until(lambda: all("ttlSecondsAfterFinished" in j["spec"]
                            for j in jobs_of(k8s, "b2").values()), "TTLs on finished Jobs")
    # The operator's metrics follow the benchmark (and its reducer summary).
    # (the handler updates them after its patches, so wait rather than read at once)
    sample = metrics.REGISTRY.get_sample_value
    await until(lambda: sample("scarce_units", {"namespace": NS, "benchmark": "b2",
                                                "state": "succeeded"}) == 9,
                "scarce_units{state=succeeded} == 9")
    assert sample("scarce_paired_z", {"namespace": NS, "benchmark": "b2", "dataset": "tiles",
                                      "arm": "vendor", "baseline": "real"}) == 4.1
    # Events are posted last, after the status and the Jobs.
    await until(lambda: "Succeeded" in [e["reason"] for e in events_of(k8s, "b2")],
                "the Succeeded Event")


async def test_an_invalid_spec_fails_with_an_event_and_no_jobs_then_can_be_fixed(
        k8s, operator, tmp_path):
    body = benchmark("b3", tmp_path / "store", seeds=1)
    await create(k8s, body)
    status = await until(lambda: bench_of(k8s, "b3").get("status", {}).get("phase")
                         == "Failed" and bench_of(k8s, "b3")["status"], "phase Failed")
    spec_valid = next(c for c in status["conditions"] if c["type"] == "SpecValid")
    assert spec_valid["status"] == "False"
    assert spec_valid["message"] == "spec.seeds: must be at least 2, got 1"
    events = await until(lambda: events_of(k8s, "b3"), "the SpecInvalid Event")
    assert [(e["type"], e["reason"]) for e in events] == [("Warning", "SpecInvalid")]
    await asyncio.sleep(0.5)
    assert jobs_of(k8s, "b3") == {}
    # Not a crash loop: fixing the spec starts the benchmark.
    await patch_spec(k8s, "b3", {"seeds": 3})
    await until(lambda: jobs_of(k8s, "b3"), "the split Job after the fix")


async def test_a_relative_store_path_is_refused_on_a_cluster(k8s, operator, tmp_path):
    body = benchmark("b4", tmp_path / "store")
    body["spec"]["storage"]["uri"] = "runs/store"
    await create(k8s, body)
    status = await until(lambda: bench_of(k8s, "b4").get("status", {}).get("phase")
                         == "Failed" and bench_of(k8s, "b4")["status"], "phase Failed")
    assert status["message"].startswith(
        "spec.storage.uri: a relative path has no meaning on a cluster")
    assert jobs_of(k8s, "b4") == {}


async def test_operator_restart_creates_no_duplicate_jobs(k8s, operator, tmp_path):
    store = tmp_path / "store"
    await create(k8s, benchmark("b5", store, parallelism=3))
    split = await until(lambda: jobs_of(k8s, "b5"), "the split Job")
    await finish_job(k8s, next(iter(split.values())), store)
    await until(lambda: len(unfinished(jobs_of(k8s, "b5"))) == 3, "three train Jobs")
    await operator.stop()
    before = set(jobs_of(k8s, "b5"))
    await operator.start()
    # The restarted operator resumes: it sees the same Jobs and creates none of them again.
    await until(lambda: bench_of(k8s, "b5")["status"].get("ledger"), "a reconcile")
    await asyncio.sleep(0.5)
    assert set(jobs_of(k8s, "b5")) == before
    first = unfinished(jobs_of(k8s, "b5"))[0]
    await finish_job(k8s, jobs_of(k8s, "b5")[first], store)
    after = await until(lambda: len(jobs_of(k8s, "b5")) == len(before) + 1
                        and jobs_of(k8s, "b5"), "one new train Job")
    assert before < set(after)
    posts = [r for r in k8s._requests if r.method.value == "POST"
             and r.resource == kmock_lib.resource(JOBS)]
    names = [r.data["metadata"]["name"] for r in posts]
    assert len(names) == len(set(names)), "a Job was created twice"


async def test_suspend_stops_new_jobs_until_resumed(k8s, operator, tmp_path):
    store = tmp_path / "store"
    await create(k8s, benchmark("b6", store, parallelism=1))
    split = await until(lambda: jobs_of(k8s, "b6"), "the split Job")
    await finish_job(k8s, next(iter(split.values())), store)
    train = await until(lambda: unfinished(jobs_of(k8s, "b6")), "a train Job")
    await patch_spec(k8s, "b6", {"suspend": True})
    await until(lambda: bench_of(k8s, "b6")["status"].get("suspended"), "status.suspended")
    await finish_job(k8s, jobs_of(k8s, "b6")[train[0]], store)
    await until(lambda: bench_of(k8s, "b6")["status"]["progress"] == "2/9", "progress 2/9")
    await asyncio.sleep(0.5)
    assert unfinished(jobs_of(k8s, "b6")) == [] and len(jobs_of(k8s, "b6")) == 2
    training = next(c for c in bench_of(k8s, "b6")["status"]["conditions"]
                    if c["type"] == "Training")
    assert training["reason"] == "Suspended"
    await patch_spec(k8s, "b6", {"suspend": False})
    await until(lambda: len(unfinished(jobs_of(k8s, "b6"))) == 1, "a new Job after resuming")
