"""The user's path on a real control plane: ``helm install`` the chart, ``kubectl apply`` a
benchmark, and what the API server, the Job controller, the garbage collector and Prometheus
then do for real (issue 11, part 2).

One chart is installed for the module (tests/cluster/userpath.py: the same helm, kubectl and
``scarce data import`` a user runs), the operator runs as its Deployment (the kubelet stand-in
runs ``kopf run -m scarce.operator.handlers`` as the chart's ServiceAccount), and four small
benchmarks run on the demo data in a moto S3 server, each a module fixture that records what
happened: the plain run, a run with failures, a run whose operator pod is deleted mid-way, and
a run through a Kueue queue. Prometheus (Debian's binary, unpacked) scrapes the operator the
whole time. Every unit is the real ``scarce-trainer`` (test_resnet, 32 px) run as a local
process; failures are caused the way they happen on a cluster: a container killed with SIGKILL
(exit 137, as the OOM killer does) and, in consequence, a fidelity unit that finds no extractor
and exits 3.

What this cannot prove: docs/kubernetes.md, "What the real control plane does not prove".
Each scenario's duration is printed at the end of the module.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scarce.operator.spec import BenchmarkSpec
from scarce.trainer.cluster_status import compact_summary, headline_gain
from tests.cluster.controlplane import ControlPlane
from tests.cluster.kubelet import KubeRest
from tests.cluster.userpath import (
    METRICS_JOB,
    RELEASE,
    SYSTEM_NAMESPACE,
    Ports,
    Prometheus,
    StoreAccess,
    alert_rules,
    apply,
    benchmark_manifest,
    create_namespace,
    dashboard_queries,
    install_chart,
    kubectl_json,
    prometheus_binaries,
    run_helm,
    running_prometheus,
    upload_demo_data,
)
from tests.s3server import S3Server

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[1]
BENCH = "ml-bench"        # the plain, failing and queued benchmarks
RESTART = "ml-restart"    # the restarted run: same name and spec as the plain one, its own store
OPERATOR_SA = f"system:serviceaccount:{SYSTEM_NAMESPACE}:{RELEASE}"
QUEUE = "gpu-queue"
STUCK_AFTER = "10s"       # ScarceBenchmarkStuck's window, short enough to see it fire here
HOLD_S = 14.0             # how long the queued run's first Job waits for "Kueue"
KUEUE_LABEL = "kueue.x-k8s.io/queue-name"
OPERATOR_UP = f'up{{job="{METRICS_JOB}", namespace="{SYSTEM_NAMESPACE}"}}'
#: Seconds each scenario took, printed at the end of the module.
TIMINGS: dict[str, float] = {}


# --- the installed chart ----------------------------------------------------------------------


@dataclass
class UserPath:
    plane: ControlPlane
    api: KubeRest
    s3: S3Server
    store: StoreAccess
    data: dict[str, str]
    ports: Ports
    prometheus: Prometheus
    promtool: Path
    rules_file: Path
    suffix: str
    started: float = field(default_factory=time.time)

    def bucket(self, purpose: str) -> str:
        name = f"scarce-{purpose}-{self.suffix}"
        self.s3.make_bucket(name)
        return name

    def report(self, bucket: str, name: str) -> dict[str, Any]:
        return self.s3.open(f"s3://{bucket}").get_json(f"reports/{name}/report.json")


def _timed(what: str) -> Callable[[], None]:
    started = time.monotonic()

    def done() -> None:
        TIMINGS[what] = round(time.monotonic() - started, 1)
    return done


@pytest.fixture(scope="module")
def user(k8s_control_plane: ControlPlane, s3_server: S3Server,
         tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) \
        -> Iterator[UserPath]:
    """The chart installed into scarce-system with ``helm install``, the demo data in the
    store, the store Secret in every namespace, and Prometheus scraping the operator."""
    done = _timed("install: namespaces, demo data upload, helm install, Prometheus")
    plane = k8s_control_plane
    prometheus_bin, promtool = prometheus_binaries()
    store = StoreAccess(s3_server.endpoint, s3_server.access_key, s3_server.secret_key)
    suffix = uuid.uuid4().hex[:8]
    data_bucket = f"scarce-data-{suffix}"
    s3_server.make_bucket(data_bucket)
    # A first install, as a user's: no CRD left by other tests of the session.
    plane.kubectl("delete", "crd", "scarcebenchmarks.scarce.dev", "--ignore-not-found")
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(_print_timings, request)
        for namespace in (SYSTEM_NAMESPACE, BENCH, RESTART):
            create_namespace(plane, namespace, store)
            cleanup.callback(plane.kubectl, "delete", "namespace", namespace, "--wait=false",
                             check=False)
        ports = Ports.free()
        # Prometheus first: its first scrape comes some seconds after it starts.
        folder = tmp_path_factory.mktemp("prometheus")
        prometheus = cleanup.enter_context(running_prometheus(
            prometheus_bin, folder, metrics_port=ports.metrics,
            rules=alert_rules(plane, stuckAfter=STUCK_AFTER)))
        with ThreadPoolExecutor(1) as pool:  # the upload runs while helm installs
            upload = pool.submit(upload_demo_data, store, data_bucket,
                                 tmp_path_factory.mktemp("demo"))
            cleanup.callback(_uninstall, plane)
            install_chart(plane, benchmark_namespaces=[BENCH, RESTART], store=store, ports=ports)
            data = upload.result()
        deadline = time.monotonic() + 60
        while [s["value"][1] for s in prometheus.query(OPERATOR_UP)] != ["1"]:
            assert time.monotonic() < deadline, f"Prometheus never scraped the operator:\n" \
                f"{prometheus.log()}"
            time.sleep(0.5)
        done()
        yield UserPath(plane, KubeRest(plane.kubeconfig), s3_server, store, data, ports,
                       prometheus, promtool, folder / "rules.yml", suffix)


def _uninstall(plane: ControlPlane) -> None:
    with contextlib.suppress(AssertionError):  # nothing to uninstall when the install failed
        run_helm(plane, "uninstall", RELEASE, "--namespace", SYSTEM_NAMESPACE, "--wait")


def _print_timings(request: pytest.FixtureRequest) -> None:
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("\nuser path on the real control plane, seconds per scenario:")
        for what, seconds in TIMINGS.items():
            reporter.write_line(f"  {seconds:7.1f}  {what}")


def operator_pods(user: UserPath) -> list[dict[str, Any]]:
    return user.api.get(f"/api/v1/namespaces/{SYSTEM_NAMESPACE}/pods", query={
        "labelSelector": "app.kubernetes.io/component=operator"})["items"]


def can_i(user: UserPath, account: str, *request: str) -> bool:
    """``kubectl auth can-i REQUEST --as ACCOUNT``: exit 0 is yes, 1 is no."""
    result = user.plane.kubectl("auth", "can-i", *request, f"--as={account}", check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


def creates(user: UserPath, namespace: str, resource: str = "jobs") -> list[dict[str, Any]]:
    """Successful creates of RESOURCE in NAMESPACE, from the API server's audit log."""
    return [e for e in user.plane.audit_events()
            if e["verb"] == "create" and e.get("objectRef", {}).get("resource") == resource
            and e["objectRef"].get("namespace") == namespace
            and e.get("responseStatus", {}).get("code") == 201]


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    found = [c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind]
    return found[0] if found else {}


def finished(sb: dict[str, Any]) -> bool:
    return (sb.get("status") or {}).get("phase") in ("Succeeded", "Failed")


# --- one benchmark run ------------------------------------------------------------------------


@dataclass
class Run:
    """What a benchmark run left: its final object, every Job seen (by label) and when."""

    name: str
    namespace: str
    bucket: str
    started: float
    finished: float = 0.0
    sb: dict[str, Any] = field(default_factory=dict)
    job_uids: dict[str, set[str]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def selector(self) -> str:
        return f"scarce.dev/benchmark={self.name}"


def start_run(user: UserPath, name: str, namespace: str, purpose: str, **spec: Any) -> Run:
    bucket = user.bucket(purpose)
    manifest = benchmark_manifest(name, namespace, store=user.store, store_uri=f"s3://{bucket}",
                                  data=user.data, **spec)
    run = Run(name, namespace, bucket, started=time.time())
    result = apply(user.plane, manifest)
    assert f"scarcebenchmark.scarce.dev/{name} created" in result.stdout
    return run


def follow(user: UserPath, run: Run, on_tick: Callable[[dict[str, Any], dict[str, Any]], None]
           = lambda sb, jobs: None, timeout: float = 420) -> Run:
    """Poll the benchmark and its Jobs (by label) until it finished, recording every Job's uid
    so that a Job created twice (even one deleted in between) is seen."""
    deadline = time.monotonic() + timeout
    base = f"/apis/scarce.dev/v1alpha1/namespaces/{run.namespace}/scarcebenchmarks/{run.name}"
    while True:
        sb = user.api.get(base)
        jobs = {j["metadata"]["name"]: j for j in user.api.get(
            f"/apis/batch/v1/namespaces/{run.namespace}/jobs",
            query={"labelSelector": run.selector})["items"]}
        for job_name, job in jobs.items():
            run.job_uids.setdefault(job_name, set()).add(job["metadata"]["uid"])
            run.jobs[job_name] = job
        on_tick(sb, jobs)
        if finished(sb):
            run.sb, run.finished = sb, time.time()
            return run
        assert time.monotonic() < deadline, (
            f"{run.namespace}/{run.name} not finished after {timeout:.0f}s: "
            f"{json.dumps(sb.get('status'), indent=1)[:3000]}")
        time.sleep(0.25)


def trainer_pid(pod: dict[str, Any]) -> int | None:
    """The pid of a running trainer container (the stand-in reports ``local-process://PID``),
    checked to be that very pod's ``scarce-trainer`` process."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if "running" not in (status.get("state") or {}):
            continue
        pid = int(status.get("containerID", "local-process://0").rsplit("/", 1)[1])
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return None
        if b"scarce-trainer" in cmdline and \
                f"HOSTNAME={pod['metadata']['name']}\0".encode() in environ:
            return pid
    return None


# --- the scenarios (module fixtures, so that each test can ask for the run it checks) ----------


@pytest.fixture(scope="module")
def main_run(user: UserPath) -> Run:
    """Two seeds of real and vendor, one Job per arm (seedsPerJob 2), applied with kubectl and
    awaited with ``kubectl wait``."""
    done = _timed("main run: kubectl apply -> kubectl wait Complete (5 Jobs)")
    run = start_run(user, "demo", BENCH, "main")
    wait = user.plane.kubectl("-n", BENCH, "wait", "--for=condition=Complete", "sb/demo",
                              "--timeout=420s", check=False, timeout=450)
    run.notes["wait"] = wait
    follow(user, run, timeout=30)
    run.notes["get"] = user.plane.kubectl("-n", BENCH, "get", "sb").stdout
    done()
    return run


@pytest.fixture(scope="module")
def failure_run(user: UserPath) -> Run:
    """Three seeds, one retry per Job. Real seed 0 is killed twice (its retries exhausted),
    vendor seed 1 once (retried, then it succeeds); the fidelity unit then finds no extractor
    (real seed 0 saves it) and exits 3."""
    done = _timed("failure run: 2 kills exhaust a Job, 1 kill is retried, exit 3 (9 Jobs)")
    run = start_run(user, "faulty", BENCH, "faulty", seeds=3, seedsPerJob=1, parallelism=3,
                    schedule={"epochs": 1, "batchSize": 16, "lr": 0.02},
                    jobs={"cpu": "1", "memory": "2Gi", "backoffLimit": 1})
    wanted = {("real", "0"): 2, ("vendor", "1"): 1}
    killed: dict[tuple[str, str], list[str]] = {key: [] for key in wanted}
    run.notes["killed"] = killed

    def kill(sb: dict[str, Any], jobs: dict[str, Any]) -> None:
        pods = user.api.get(f"/api/v1/namespaces/{BENCH}/pods", query={
            "labelSelector": f"{run.selector},scarce.dev/stage=train"})["items"]
        for pod in pods:
            labels = pod["metadata"]["labels"]
            key = (labels.get("scarce.dev/arm"), labels.get("scarce.dev/seed"))
            if key not in wanted or len(killed[key]) >= wanted[key] or \
                    pod["metadata"]["name"] in killed[key]:
                continue
            pid = trainer_pid(pod)
            if pid is not None:
                os.killpg(pid, signal.SIGKILL)  # what the OOM killer does to a container
                killed[key].append(pod["metadata"]["name"])

    follow(user, run, kill)
    run.notes["get"] = user.plane.kubectl("-n", BENCH, "get", "sb", "faulty").stdout
    run.notes["pods"] = user.api.get(f"/api/v1/namespaces/{BENCH}/pods",
                                     query={"labelSelector": run.selector})["items"]
    run.notes["events"] = [e for e in user.api.get(f"/api/v1/namespaces/{BENCH}/events")["items"]
                           if e["involvedObject"]["name"] == "faulty"]
    done()
    return run


@pytest.fixture(scope="module")
def restart_run(user: UserPath, main_run: Run) -> Run:
    """The plain run's spec in another namespace and store; the operator pod is deleted once
    the first train Job runs. Finished Jobs are deleted at once (ttlSecondsAfterFinished: 0),
    so the new operator must take their outcomes from the status ledger."""
    done = _timed("restart run: operator pod deleted mid-run (5 Jobs, TTL 0)")
    before = {p["metadata"]["name"] for p in operator_pods(user)}
    run = start_run(user, "demo", RESTART, "restart",
                    jobs={"cpu": "1", "memory": "2Gi", "ttlSecondsAfterFinished": 0})

    def restart(sb: dict[str, Any], jobs: dict[str, Any]) -> None:
        if "deleted_at" in run.notes:
            return
        train = [j for j in jobs.values()
                 if j["metadata"]["labels"]["scarce.dev/stage"] == "train"
                 and (j.get("status") or {}).get("active")]
        if train:
            (old,) = before
            user.plane.kubectl("-n", SYSTEM_NAMESPACE, "delete", "pod", old, "--wait=false")
            run.notes["deleted_at"] = time.time()
            run.notes["deleted_pod"] = old
            run.notes["done_at_restart"] = (sb.get("status") or {}).get("progress")

    follow(user, run, restart)
    run.notes["operator_pods"] = operator_pods(user)
    done()
    return run


@pytest.fixture(scope="module")
def queued_run(user: UserPath) -> Run:
    """A real-only benchmark with spec.queueName; the test admits each Job as Kueue would, the
    first one only after holding it for longer than ScarceBenchmarkStuck's window."""
    done = _timed("queued run: suspended Jobs admitted by the test (3 Jobs, 14 s held)")
    run = start_run(user, "queued", BENCH, "queued", queueName=QUEUE, arms=["real"],
                    synthetic=[], seeds=2, seedsPerJob=2,
                    schedule={"epochs": 1, "batchSize": 16, "lr": 0.02})
    first_seen: dict[str, dict[str, Any]] = {}
    run.notes["first_seen"] = first_seen

    def admit(sb: dict[str, Any], jobs: dict[str, Any]) -> None:
        for job_name, job in jobs.items():
            if job_name not in first_seen:
                first_seen[job_name] = {"suspend": job["spec"].get("suspend"),
                                        "labels": dict(job["metadata"]["labels"]),
                                        "seen": time.time(), "pods_before": 0}
            seen = first_seen[job_name]
            if not job["spec"].get("suspend"):
                continue
            pods = user.api.get(f"/api/v1/namespaces/{BENCH}/pods",
                                query={"labelSelector": f"job-name={job_name}"})["items"]
            seen["pods_before"] = max(seen["pods_before"], len(pods))
            seen["suspended_condition"] = condition(job, "Suspended").get("status")
            # Admit once the Job controller has seen the suspension (or give up waiting for
            # that after 5 s, which the test then reports); hold the first Job longer.
            hold = HOLD_S if len(first_seen) == 1 else 0.0
            acknowledged = seen["suspended_condition"] == "True" or \
                time.time() - seen["seen"] > 5
            if time.time() - seen["seen"] >= hold and acknowledged:
                user.api.patch(f"/apis/batch/v1/namespaces/{BENCH}/jobs/{job_name}",
                               {"spec": {"suspend": False}})
                seen["admitted"] = time.time()
                run.notes.setdefault("held", (seen["seen"], seen["admitted"]))

    follow(user, run, admit)
    done()
    return run


# --- 1. install -------------------------------------------------------------------------------


def test_helm_install_establishes_the_crd_and_runs_the_operator_as_its_service_account(
        user: UserPath) -> None:
    crd = kubectl_json(user.plane, "get", "crd", "scarcebenchmarks.scarce.dev")
    assert condition(crd, "Established").get("status") == "True"
    explained = user.plane.kubectl("explain", "scarcebenchmark.spec.seeds").stdout
    description = BenchmarkSpec.model_fields["seeds"].description
    assert description and description in " ".join(explained.split()), explained
    deployment = kubectl_json(user.plane, "-n", SYSTEM_NAMESPACE, "get", "deployment", RELEASE)
    assert deployment["status"].get("availableReplicas") == 1
    (pod,) = operator_pods(user)
    assert pod["spec"]["serviceAccountName"] == RELEASE
    assert pod["status"]["phase"] == "Running"
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["kopf", "run", "-m", "scarce.operator.handlers"]
    assert f"--namespace={BENCH}" in container["args"]
    # The process the stand-in runs logs in with the pod's own service-account token.
    kubeconfig = json.loads(Path(next(user.plane.pods_dir.glob(
        f"{SYSTEM_NAMESPACE}_{pod['metadata']['name']}_*/kubeconfig"))).read_text())
    assert kubeconfig["users"][0]["name"] == OPERATOR_SA


def test_auth_can_i_grants_each_account_what_it_needs_and_nothing_more(user: UserPath) -> None:
    reducer = f"system:serviceaccount:{BENCH}:scarce-reducer"
    trainer = f"system:serviceaccount:{BENCH}:scarce-trainer"
    allowed = {
        OPERATOR_SA: [
            *[(v, "jobs", "-n", BENCH) for v in ("create", "get", "list", "watch", "patch",
                                                 "delete")],
            ("patch", "scarcebenchmarks", "-n", RESTART),
            ("patch", "scarcebenchmarks", "--subresource=status", "-n", BENCH),
            ("create", "events", "-n", BENCH),
            ("list", "pods", "-n", BENCH),
            ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
            ("list", "namespaces"),
        ],
        reducer: [("patch", "scarcebenchmarks", "--subresource=status", "-n", BENCH),
                  ("get", "scarcebenchmarks", "--subresource=status", "-n", BENCH)],
    }
    denied = {
        OPERATOR_SA: [("get", "secrets", "-n", BENCH), ("list", "secrets", "-n", SYSTEM_NAMESPACE),
                      ("create", "jobs", "-n", "default"), ("create", "jobs", "--all-namespaces"),
                      ("delete", "namespaces"), ("create", "pods", "-n", BENCH),
                      ("create", "clusterrolebindings"), ("update", "scarcebenchmarks", "-n",
                                                           BENCH)],
        reducer: [("patch", "scarcebenchmarks", "-n", BENCH),
                  ("get", "scarcebenchmarks", "-n", BENCH),
                  ("patch", "scarcebenchmarks", "--subresource=status", "-n", RESTART),
                  ("create", "jobs", "-n", BENCH), ("get", "secrets", "-n", BENCH)],
        trainer: [("get", "scarcebenchmarks", "-n", BENCH), ("list", "pods", "-n", BENCH),
                  ("get", "secrets", "-n", BENCH), ("create", "jobs", "-n", BENCH)],
    }
    wrong = [(who, r) for who, rs in allowed.items() for r in rs if not can_i(user, who, *r)]
    wrong += [(who, r) for who, rs in denied.items() for r in rs if can_i(user, who, *r)]
    assert not wrong, wrong
    # The trainer's whole list is the defaults every authenticated user has.
    listing = user.plane.kubectl("auth", "can-i", "--list", "-n", BENCH, f"--as={trainer}").stdout
    resources = {line.split()[0] for line in listing.splitlines()[1:]
                 if line and not line.startswith(" ")}
    assert resources == {"selfsubjectreviews.authentication.k8s.io",
                         "selfsubjectaccessreviews.authorization.k8s.io",
                         "selfsubjectrulesreviews.authorization.k8s.io"}, listing
    sa = kubectl_json(user.plane, "-n", BENCH, "get", "serviceaccount", "scarce-trainer")
    assert sa["automountServiceAccountToken"] is False


# --- 2. kubectl apply, the Job controller, the reducer, kubectl wait and get ------------------


def test_applied_benchmark_runs_every_unit_as_a_job_through_the_job_controller(
        user: UserPath, main_run: Run) -> None:
    assert main_run.notes["wait"].returncode == 0, main_run.notes["wait"].stderr
    assert "scarcebenchmark.scarce.dev/demo condition met" in main_run.notes["wait"].stdout
    jobs = main_run.jobs
    stages = sorted((j["metadata"]["labels"]["scarce.dev/stage"],
                     j["metadata"]["labels"].get("scarce.dev/arm", ""),
                     j["metadata"]["labels"].get("scarce.dev/seed", "")) for j in jobs.values())
    assert stages == [("fidelity", "", ""), ("reduce", "", ""), ("split", "", ""),
                      ("train", "real", "0-1"), ("train", "vendor", "0-1")], stages
    uid = main_run.sb["metadata"]["uid"]
    for job in jobs.values():
        assert condition(job, "Complete").get("status") == "True", job["status"]
        assert job["status"].get("succeeded") == 1 and not job["status"].get("failed")
        assert job["metadata"]["ownerReferences"][0]["uid"] == uid
    pods = user.api.get(f"/api/v1/namespaces/{BENCH}/pods",
                        query={"labelSelector": main_run.selector})["items"]
    assert len(pods) == len(jobs)
    for pod in pods:
        (status,) = pod["status"]["containerStatuses"]
        assert pod["status"]["phase"] == "Succeeded"
        assert status["state"]["terminated"]["exitCode"] == 0
        assert pod["spec"]["containers"][0]["command"][0] == "scarce-trainer"
    made = creates(user, BENCH)
    ours = [e for e in made if e["objectRef"]["name"] in jobs]
    assert sorted(e["objectRef"]["name"] for e in ours) == sorted(jobs)
    assert {e["user"]["username"] for e in ours} == {OPERATOR_SA}


def test_reducer_pod_patches_the_status_as_the_reducer_account(user: UserPath,
                                                               main_run: Run) -> None:
    patches = [e for e in user.plane.audit_events()
               if e["verb"] == "patch" and e.get("objectRef", {}).get("subresource") == "status"
               and e["objectRef"].get("resource") == "scarcebenchmarks"
               and e["objectRef"].get("namespace") == BENCH
               and e["objectRef"].get("name") == "demo"]
    by_reducer = [e for e in patches
                  if e["user"]["username"] == f"system:serviceaccount:{BENCH}:scarce-reducer"]
    assert len(by_reducer) == 1, [e["user"]["username"] for e in patches]
    assert by_reducer[0]["responseStatus"]["code"] == 200
    (reduce_job,) = [n for n, j in main_run.jobs.items()
                     if j["metadata"]["labels"]["scarce.dev/stage"] == "reduce"]
    pod_name = by_reducer[0]["user"]["extra"]["authentication.kubernetes.io/pod-name"][0]
    assert pod_name.startswith(reduce_job + "-")
    assert "could not patch" not in user.plane.pod_log(BENCH, pod_name, "trainer")


def test_get_sb_shows_real_values_and_the_status_summary_is_report_json(
        user: UserPath, main_run: Run) -> None:
    status = main_run.sb["status"]
    report = user.report(main_run.bucket, "demo")
    assert status["summary"] == compact_summary(report)
    assert status["headlineGain"] == headline_gain(report)
    assert status["reportUri"] == f"s3://{main_run.bucket}/reports/demo/report.json"
    lines = main_run.notes["get"].splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "DONE/TOTAL", "FAILED", "HARDEST-CLASS", "GAIN",
                                "AGE"]
    row = re.split(r"\s{2,}", lines[1])
    assert row[:4] == ["demo", "Succeeded", "7/7", "0"], lines
    assert row[4] == status["headlineGain"]
    assert re.fullmatch(r"[+-]\d+\.\d pp vendor \(z=(-?\d+\.\d|n/a)\)", row[4]), row
    means = [arm["mean"] for arm in status["summary"]["datasets"]["surfaces"]["arms"].values()]
    assert any(m > 0 for m in means), status["summary"]  # a trained model, not a column of 0


# --- 3. admission: schema, CEL, and what may still change -----------------------------------


def test_api_server_rejects_bad_specs_naming_the_field_and_frozen_changes_but_not_parallelism(
        user: UserPath, main_run: Run) -> None:
    bad = benchmark_manifest("bad", BENCH, store=user.store, store_uri="s3://nowhere",
                             data=user.data, seeds=1, parallelism=0)
    bad["spec"]["datasets"][0]["hardestClass"] = "auto"
    refused = apply(user.plane, bad, check=False)
    assert refused.returncode != 0
    for message in ("spec.seeds: Invalid value: 1: spec.seeds in body should be greater than "
                    "or equal to 2",
                    "spec.parallelism: Invalid value: 0",
                    "spec.datasets[0].hardestClass",
                    "hardestClass: auto needs split.valFraction > 0"):
        assert message in refused.stderr, refused.stderr
    unknown = benchmark_manifest("bad", BENCH, store=user.store, store_uri="s3://nowhere",
                                 data=user.data, seedz=3)
    refused = apply(user.plane, unknown, check=False)
    assert 'unknown field "spec.seedz"' in refused.stderr, refused.stderr

    frozen = user.plane.kubectl("-n", BENCH, "patch", "sb", "demo", "--type=merge",
                                "-p", '{"spec":{"seeds":3}}', check=False)
    assert frozen.returncode != 0
    assert "spec.seeds: Forbidden: spec.seeds cannot change once the benchmark has started" \
        in frozen.stderr, frozen.stderr
    changed = user.plane.kubectl("-n", BENCH, "patch", "sb", "demo", "--type=merge",
                                 "-p", '{"spec":{"parallelism":3}}')
    assert "patched" in changed.stdout
    assert kubectl_json(user.plane, "-n", BENCH, "get", "sb", "demo")["spec"]["parallelism"] == 3


# --- 4. failures ------------------------------------------------------------------------------


def jobs_of(run: Run, stage: str, **labels: str) -> list[dict[str, Any]]:
    return [j for j in run.jobs.values() if j["metadata"]["labels"]["scarce.dev/stage"] == stage
            and all(j["metadata"]["labels"].get(f"scarce.dev/{k}") == v
                    for k, v in labels.items())]


def test_exit_3_fails_at_once_a_kill_is_retried_and_exhausted_units_become_missing_pairs(
        user: UserPath, failure_run: Run) -> None:
    killed = failure_run.notes["killed"]
    assert len(killed[("real", "0")]) == 2 and len(killed[("vendor", "1")]) == 1, killed
    pods = {p["metadata"]["name"]: p for p in failure_run.notes["pods"]}

    (exhausted,) = jobs_of(failure_run, "train", arm="real", seed="0")
    assert condition(exhausted, "Failed")["reason"] == "BackoffLimitExceeded"
    assert exhausted["status"]["failed"] == 2
    for name in killed[("real", "0")]:
        terminated = pods[name]["status"]["containerStatuses"][0]["state"]["terminated"]
        assert terminated["exitCode"] == 137

    (retried,) = jobs_of(failure_run, "train", arm="vendor", seed="1")
    assert condition(retried, "Complete").get("status") == "True"
    assert retried["status"]["failed"] == 1 and retried["status"]["succeeded"] == 1

    (fidelity,) = jobs_of(failure_run, "fidelity")
    failed = condition(fidelity, "Failed")
    assert failed["reason"] == "PodFailurePolicy", failed
    assert "exit code 3" in failed["message"]
    # At once: one pod although backoffLimit allowed a retry.
    assert fidelity["status"]["failed"] == 1 and fidelity["spec"]["backoffLimit"] == 1
    (fidelity_pod,) = [p for n, p in pods.items() if n.startswith(
        fidelity["metadata"]["name"] + "-")]
    log = user.plane.pod_log(BENCH, fidelity_pod["metadata"]["name"], "trainer")
    assert "FidelityError" in log or "extractor" in log, log[-2000:]

    status = failure_run.sb["status"]
    assert status["phase"] == "Succeeded", status  # 2 pairs left >= minPairs 2
    assert status["units"]["failed"] == 2 and status["pairs"] == {"surfaces": 2}
    degraded = condition(failure_run.sb, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "UnitsFailed"
    assert "surfaces vendor vs real (kfull): seeds 0" in degraded["message"], degraded
    report = user.report(failure_run.bucket, "faulty")
    (vs_real,) = [c for c in report["datasets"][0]["comparisons"]
                  if c["arm"] == "vendor" and c["baseline"] == "real"]
    assert vs_real["n"] == 2
    reasons = " ".join(e["message"] for e in failure_run.notes["events"]
                       if e["reason"] == "UnitFailed")
    assert "BackoffLimitExceeded" in reasons and "PodFailurePolicy" in reasons, reasons
    row = re.split(r"\s{2,}", failure_run.notes["get"].splitlines()[1])
    assert row[:4] == ["faulty", "Succeeded", "9/9", "2"], row


# --- 5. restart -------------------------------------------------------------------------------


def test_operator_restart_mid_run_creates_no_job_twice_and_reports_the_same(
        user: UserPath, main_run: Run, restart_run: Run) -> None:
    assert "deleted_at" in restart_run.notes, "no train Job ran: the operator was not restarted"
    done, total = map(int, restart_run.notes["done_at_restart"].split("/"))
    assert 0 < done < total  # mid-run: the split recorded, the training not
    new_pods = [p for p in restart_run.notes["operator_pods"]
                if p["metadata"]["name"] != restart_run.notes["deleted_pod"]]
    assert len(new_pods) == 1 and new_pods[0]["status"]["phase"] == "Running"
    assert len(restart_run.notes["operator_pods"]) == 1  # the deleted pod is gone
    # By label, polled over the whole run: one uid per Job name.
    assert len(restart_run.job_uids) == 5
    assert all(len(uids) == 1 for uids in restart_run.job_uids.values()), restart_run.job_uids
    # By the API server's audit log: one successful create per Job, by both operator pods.
    made = creates(user, RESTART)
    names = [e["objectRef"]["name"] for e in made]
    assert sorted(names) == sorted(set(names)) and len(names) == 5, names
    makers = {e["user"]["extra"]["authentication.kubernetes.io/pod-name"][0] for e in made}
    assert makers == {restart_run.notes["deleted_pod"], new_pods[0]["metadata"]["name"]}
    # Finished Jobs were deleted by the TTL controller, and none came back.
    deleted = {e["objectRef"]["name"] for e in user.plane.audit_events()
               if e["verb"] == "delete" and e.get("objectRef", {}).get("namespace") == RESTART
               and e["objectRef"].get("resource") == "jobs"}
    assert len(deleted) >= 4, deleted
    assert restart_run.sb["status"]["phase"] == "Succeeded"
    report = user.report(restart_run.bucket, "demo")
    uninterrupted = user.report(main_run.bucket, "demo")
    assert report["datasets"] == uninterrupted["datasets"]
    assert restart_run.sb["status"]["summary"] == main_run.sb["status"]["summary"]


# --- 6. Kueue ---------------------------------------------------------------------------------


def test_queue_name_creates_suspended_jobs_that_run_once_admitted(queued_run: Run) -> None:
    seen = queued_run.notes["first_seen"]
    assert len(seen) == 3, seen  # split, one pack of seeds 0-1, reduce
    for name, job in seen.items():
        assert job["suspend"] is True, name
        assert job["labels"][KUEUE_LABEL] == QUEUE, name
        assert job["pods_before"] == 0, f"{name} had pods before it was admitted"
        assert job["suspended_condition"] == "True", name
        assert "admitted" in job, name
    packs = [j["labels"].get("scarce.dev/seed") for j in seen.values()
             if j["labels"]["scarce.dev/stage"] == "train"]
    assert packs == ["0-1"]
    held_from, held_to = queued_run.notes["held"]
    assert held_to - held_from >= HOLD_S
    assert queued_run.sb["status"]["phase"] == "Succeeded"
    assert queued_run.sb["status"]["summary"]["datasets"]["surfaces"]["arms"]["real"]["n"] == 2


# --- 7. Prometheus ----------------------------------------------------------------------------


def grafana(expr: str, window: float) -> str:
    """A dashboard query as Grafana sends it: 'All' for the variables, its intervals filled."""
    return (expr.replace("$__rate_interval", "1m").replace("$__range", f"{math.ceil(window)}s")
            .replace("$namespace", ".*").replace("$benchmark", ".*"))


def test_alert_rules_pass_promtool_check_rules(user: UserPath) -> None:
    proc = subprocess.run([str(user.promtool), "check", "rules", str(user.rules_file)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 4 rules found" in proc.stdout


def test_prometheus_scrapes_the_operator_and_every_dashboard_and_alert_query_returns_data(
        user: UserPath, main_run: Run, failure_run: Run, restart_run: Run,
        queued_run: Run) -> None:
    prom = user.prometheus
    time.sleep(3)  # the last samples of the queued run
    start, end = user.started, time.time()
    up = prom.query_range(OPERATOR_UP, main_run.started, main_run.finished)
    assert up and all(v == "1" for _, v in up[0]["values"]), up
    units = prom.query_range('scarce_units{namespace="ml-bench", benchmark="demo"}',
                             main_run.started, main_run.finished)
    assert {s["metric"]["state"] for s in units} == {"pending", "running", "succeeded",
                                                     "failed"}

    for expr in dashboard_queries():
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", expr)
        if match:
            values = prom.label_values(match[2], grafana(match[1], end - start))
            assert values and (BENCH in values or "demo" in values), (expr, values)
            continue
        series = prom.query_range(grafana(expr, end - start), start, end)
        assert series, f"no data for the dashboard query {expr}"
        if expr.startswith("histogram_quantile"):
            assert any(math.isfinite(float(v)) for s in series for _, v in s["values"]), expr

    rules = {r["name"]: r for g in prom.get("/api/v1/rules")["groups"] for r in g["rules"]}
    assert set(rules) == {"ScarceOperatorDown", "ScarceUnitsFailing", "ScarceBenchmarkStuck",
                          "ScarceReconcileErrors"}
    assert all(r["health"] == "ok" for r in rules.values()), rules
    failing = prom.query_range(rules["ScarceUnitsFailing"]["query"], failure_run.started,
                               failure_run.finished)
    assert {(s["metric"]["namespace"], s["metric"]["benchmark"]) for s in failing} == \
        {(BENCH, "faulty")}, failing
    held_from, held_to = queued_run.notes["held"]
    stuck = prom.query_range(rules["ScarceBenchmarkStuck"]["query"], held_from, held_to, 1)
    # (Others may show too: a window of 10 s is shorter than some units.)
    assert (BENCH, "queued") in {(s["metric"]["namespace"], s["metric"]["benchmark"])
                                 for s in stuck}, stuck
    # ScarceOperatorDown is legitimately empty while the operator is up (the plain run), and
    # holds while its pod is replaced (the restart).
    assert prom.query_range(rules["ScarceOperatorDown"]["query"], main_run.started,
                            main_run.finished) == []
    down = prom.query_range(rules["ScarceOperatorDown"]["query"],
                            restart_run.notes["deleted_at"], restart_run.finished, 0.5)
    assert down, "ScarceOperatorDown's expression never held while the operator was replaced"
    # ScarceReconcileErrors is legitimately empty: no reconcile failed in the whole module;
    # the rate under its threshold does return data.
    query = rules["ScarceReconcileErrors"]["query"]
    assert prom.query_range(query, start, end) == [], "a reconcile failed: see the operator log"
    inner = query.rsplit(">", 1)[0]
    assert [v for s in prom.query_range(inner, start, end) for _, v in s["values"]], inner


# --- RBAC, over the whole module ------------------------------------------------------------


def test_the_chart_rbac_never_refused_the_operator_or_the_reducer(
        user: UserPath, main_run: Run, failure_run: Run, restart_run: Run,
        queued_run: Run) -> None:
    accounts = {OPERATOR_SA, f"system:serviceaccount:{BENCH}:scarce-reducer",
                f"system:serviceaccount:{RESTART}:scarce-reducer"}
    refused = [(e["user"]["username"], e["verb"], e["requestURI"])
               for e in user.plane.audit_events()
               if e["user"]["username"] in accounts
               and e.get("responseStatus", {}).get("code") == 403]
    assert not refused, refused
    # Reads are not audited; kopf logs a refused list or watch.
    logs = sorted(user.plane.pods_dir.glob(f"{SYSTEM_NAMESPACE}_{RELEASE}-*/operator.log"))
    assert len(logs) == 2  # the first operator pod and its replacement
    for log in logs:
        text = log.read_text(errors="replace")
        assert "Forbidden" not in text, text[-3000:]  # APIForbiddenError, (403) Forbidden


# --- 8. deletion ------------------------------------------------------------------------------


def test_kubectl_delete_sb_garbage_collects_every_job_and_pod(
        user: UserPath, main_run: Run, failure_run: Run, restart_run: Run,
        queued_run: Run) -> None:
    done = _timed("kubectl delete sb: garbage collection of every Job and pod")
    runs = [main_run, failure_run, restart_run, queued_run]
    owned = {(r.namespace, r.name): r for r in runs}
    before = sum(len(user.api.get(f"/api/v1/namespaces/{ns}/pods",
                                  query={"labelSelector": r.selector})["items"])
                 for (ns, _), r in owned.items())
    assert before > 0  # finished pods are kept until their Jobs go
    user.plane.kubectl("-n", BENCH, "delete", "sb", "demo", timeout=120)
    user.plane.kubectl("-n", BENCH, "delete", "sb", "--all", timeout=120)
    user.plane.kubectl("-n", RESTART, "delete", "sb", "demo", timeout=120)
    deadline = time.monotonic() + 120
    left: list[str] = []
    while time.monotonic() < deadline:
        left = [f"{kind} {ns}/{obj['metadata']['name']}"
                for (ns, _), run in owned.items()
                for kind, path in (("job", f"/apis/batch/v1/namespaces/{ns}/jobs"),
                                   ("pod", f"/api/v1/namespaces/{ns}/pods"))
                for obj in user.api.get(path, query={"labelSelector": run.selector})["items"]]
        if not left:
            break
        time.sleep(0.5)
    assert not left, left
    collector = "system:serviceaccount:kube-system:generic-garbage-collector"
    gc_deleted = {e["objectRef"]["name"] for e in user.plane.audit_events()
                  if e["verb"] == "delete" and e["user"]["username"] == collector
                  and e.get("objectRef", {}).get("resource") == "jobs"}
    assert set(main_run.jobs) <= gc_deleted
    done()


# --- 9. the captured docs ---------------------------------------------------------------------


def test_docs_explain_block_is_what_kubectl_explain_prints_here(user: UserPath) -> None:
    docs = (REPO / "docs" / "kubernetes.md").read_text()
    block = re.search(r"<!-- BEGIN kubectl-explain .*?-->\n```\n\$ (.+?)\n(.*?)```\n"
                      r"<!-- END kubectl-explain -->", docs, re.S)
    assert block, "docs/kubernetes.md lacks the generated kubectl explain block"
    command = block[1].split()
    assert command[:2] == ["kubectl", "explain"]
    printed = "\n".join(line.rstrip() for line in
                        user.plane.kubectl(*command[1:]).stdout.splitlines())
    assert printed.strip("\n") == block[2].strip("\n"), (
        "docs/kubernetes.md is stale: run .venv/bin/python scripts/capture-kubectl-docs.py")
