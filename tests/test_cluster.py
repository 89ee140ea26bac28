"""The real control plane (tests/cluster/): what only a real API server, Job controller and garbage
collector do, driven with the real kubectl and the Kubernetes API.

One control plane per session (etcd, kube-apiserver, kube-controller-manager built from Go
modules by ``bash tests/cluster/build.sh``, plus the Python kubelet stand-in); a fresh namespace
per test. Without the binaries these tests fail with a message naming the build command.

What this proves: the CRD's OpenAPI schema and CEL rules as the API server enforces them,
``kubectl explain`` and printer columns, the status subresource, the Job controller's
``backoffLimit``/``podFailurePolicy``/suspend/TTL, the garbage collector, ServiceAccount tokens
and RBAC. What it does not: images, a container runtime, a real kubelet, scheduling.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.controlplane import BUILD_COMMAND, BinariesMissing, ControlPlane
from tests.cluster.kubelet import KubeError, KubeRest, parse_time

ROOT = Path(__file__).resolve().parents[1]
CRD_FILE = ROOT / "crds" / "scarcebenchmark.yaml"
SB = "/apis/scarce.dev/v1alpha1/namespaces/{ns}/scarcebenchmarks"

cluster = pytest.mark.cluster


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def job_condition(api: KubeRest, ns: str, name: str) -> dict[str, Any] | None:
    """The Job's terminal condition (Complete or Failed, status True), if it has one."""
    job = api.get(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}")
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
            return {**cond, "job": job}
    return None


def job_pods(api: KubeRest, ns: str, name: str) -> list[dict[str, Any]]:
    return api.get(f"/api/v1/namespaces/{ns}/pods",
                   query={"labelSelector": f"batch.kubernetes.io/job-name={name}"})["items"]


def python_job(name: str, code: str, **spec: Any) -> dict[str, Any]:
    """A Job whose one container runs ``python -c CODE`` (the project venv's python)."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 6,
            **spec,
            "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "scarce:test",
                                "command": ["python", "-c", code]}],
            }},
        },
    }


def create_job(api: KubeRest, ns: str, job: dict[str, Any]) -> str:
    api.post(f"/apis/batch/v1/namespaces/{ns}/jobs", job)
    return str(job["metadata"]["name"])


def minimal_benchmark(name: str = "bench") -> dict[str, Any]:
    return {
        "apiVersion": "scarce.dev/v1alpha1",
        "kind": "ScarceBenchmark",
        "metadata": {"name": name},
        "spec": {
            "storage": {"uri": "s3://scarce-store/runs"},
            "datasets": [{"name": "surfaces", "format": "imagefolder",
                          "source": "s3://scarce-data/surfaces", "hardestClass": "pit"}],
            "seeds": 3,
            "parallelism": 2,
        },
    }


@pytest.fixture(scope="module")
def crd(k8s_control_plane: ControlPlane) -> str:
    """The project's CRD, applied with kubectl and Established."""
    k8s_control_plane.kubectl("apply", "-f", str(CRD_FILE))
    name = yaml.safe_load_all(CRD_FILE.read_text()).__next__()["metadata"]["name"]
    k8s_control_plane.kubectl("wait", "--for=condition=Established", f"crd/{name}",
                              "--timeout=60s")
    return str(name)


# --- the harness itself ---------------------------------------------------------------------


def test_missing_binaries_fail_with_the_build_command(tmp_path: Path, monkeypatch) -> None:
    from tests.cluster import controlplane

    monkeypatch.setenv("SCARCE_K8S_BIN", str(tmp_path))
    with pytest.raises(BinariesMissing, match=BUILD_COMMAND):
        controlplane.require_binaries()


@cluster
def test_a_failed_start_prints_the_logs_tails_and_leaves_nothing_running(
        tmp_path: Path, monkeypatch) -> None:
    from tests.cluster import controlplane

    real = controlplane.require_binaries()
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in controlplane.BINARIES:
        (fake / name).symlink_to(real / name)
    (fake / "kube-apiserver").unlink()
    (fake / "kube-apiserver").write_text("#!/bin/sh\necho 'boom: no apiserver today'\nexit 3\n")
    (fake / "kube-apiserver").chmod(0o755)
    monkeypatch.setenv("SCARCE_K8S_BIN", str(fake))
    with pytest.raises(controlplane.StartError) as failure:
        controlplane.start(tmp_path / "state", kubelet=False, log=lambda _m: None)
    message = str(failure.value)
    assert "kube-apiserver /readyz exited with code 3" in message
    assert "----- kube-apiserver.log (last 40 lines) -----" in message
    assert "boom: no apiserver today" in message
    assert "----- etcd.log" in message
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    etcd_pid = state["processes"]["etcd"]["pid"]
    assert not controlplane._alive(etcd_pid, state["processes"]["etcd"]["binary"])


@cluster
def test_control_plane_is_one_release_and_its_node_is_ready(
        k8s_control_plane: ControlPlane, k8s_api: KubeRest) -> None:
    version = json.loads(k8s_control_plane.kubectl("version", "-o", "json").stdout)
    expected = k8s_control_plane.state["version"]
    assert version["serverVersion"]["gitVersion"] == expected
    assert version["clientVersion"]["gitVersion"] == expected  # no client skew
    node = k8s_api.get("/api/v1/nodes/scarce-node")
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert ready["Ready"] == "True"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    assert not node["spec"].get("taints")
    status = k8s_control_plane.status()
    assert status["readyz"] == "ok"
    assert all(status[c]["alive"] for c in ("etcd", "kube-apiserver",
                                            "kube-controller-manager", "kubelet"))


# --- the CRD as the API server enforces it --------------------------------------------------


@cluster
def test_schema_rejects_a_bad_spec_with_the_schema_message(
        k8s_control_plane: ControlPlane, crd: str, k8s_namespace: str) -> None:
    bad = minimal_benchmark("bad-format")
    bad["spec"]["datasets"][0]["format"] = "jpeg"
    result = k8s_control_plane.kubectl("apply", "-n", k8s_namespace, "-f", "-",
                                       input=json.dumps(bad), check=False)
    assert result.returncode != 0
    assert 'spec.datasets[0].format: Unsupported value: "jpeg"' in result.stderr
    assert '"imagefolder"' in result.stderr

    auto = minimal_benchmark("bad-auto")
    auto["spec"]["datasets"][0]["hardestClass"] = "auto"
    result = k8s_control_plane.kubectl("apply", "-n", k8s_namespace, "-f", "-",
                                       input=json.dumps(auto), check=False)
    assert result.returncode != 0
    assert "hardestClass: auto needs split.valFraction > 0" in result.stderr  # a CEL rule
    assert "spec.datasets[0].hardestClass" in result.stderr

    nameless = minimal_benchmark("no-seeds")
    nameless["spec"]["seeds"] = 0
    result = k8s_control_plane.kubectl("apply", "-n", k8s_namespace, "-f", "-",
                                       input=json.dumps(nameless), check=False)
    assert result.returncode != 0
    assert "spec.seeds" in result.stderr


@cluster
def test_spec_is_frozen_by_cel_once_status_started_at_is_set(
        k8s_control_plane: ControlPlane, k8s_api: KubeRest, crd: str, k8s_namespace: str) -> None:
    kubectl = k8s_control_plane.kubectl
    ns = k8s_namespace
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(minimal_benchmark()))
    # Before the start every field may change.
    kubectl("patch", "-n", ns, "sb/bench", "--type=merge", "-p", '{"spec":{"seeds":4}}')
    # status is a subresource: a write to the main resource leaves it alone.
    kubectl("patch", "-n", ns, "sb/bench", "--type=merge",
            "-p", '{"status":{"startedAt":"2026-01-01T00:00:00Z"}}')
    assert "status" not in k8s_api.get(SB.format(ns=ns) + "/bench")
    kubectl("patch", "-n", ns, "sb/bench", "--subresource=status", "--type=merge",
            "-p", '{"status":{"startedAt":"2026-01-01T00:00:00Z","phase":"Training"}}')
    assert k8s_api.get(SB.format(ns=ns) + "/bench")["status"]["phase"] == "Training"

    result = kubectl("patch", "-n", ns, "sb/bench", "--type=merge",
                     "-p", '{"spec":{"seeds":5}}', check=False)
    assert result.returncode != 0
    assert "spec.seeds cannot change once the benchmark has started" in result.stderr
    assert "Forbidden" in result.stderr
    result = kubectl("patch", "-n", ns, "sb/bench", "--type=json", "-p",
                     '[{"op":"replace","path":"/spec/datasets/0/source",'
                     '"value":"s3://other/x"}]', check=False)
    assert result.returncode != 0
    assert "spec.datasets cannot change once the benchmark has started" in result.stderr
    # parallelism stays mutable.
    kubectl("patch", "-n", ns, "sb/bench", "--type=merge", "-p", '{"spec":{"parallelism":1}}')
    bench = k8s_api.get(SB.format(ns=ns) + "/bench")
    assert bench["spec"]["parallelism"] == 1
    assert bench["spec"]["seeds"] == 4


@cluster
def test_status_writes_conflict_on_a_stale_resource_version(
        k8s_api: KubeRest, crd: str, k8s_namespace: str) -> None:
    base = SB.format(ns=k8s_namespace)
    created = k8s_api.post(base, minimal_benchmark())
    stale = created["metadata"]["resourceVersion"]
    k8s_api.patch(base + "/bench/status", {"status": {"phase": "Splitting"}})
    status, answer = k8s_api.request(
        "PUT", base + "/bench/status",
        {**created, "metadata": {**created["metadata"], "resourceVersion": stale},
         "status": {"phase": "Piloting"}})
    assert status == 409, answer
    assert "the object has been modified" in answer["message"]


@cluster
def test_kubectl_explain_shows_the_spec_model_descriptions(
        k8s_control_plane: ControlPlane, crd: str) -> None:
    out = k8s_control_plane.kubectl("explain", "scarcebenchmark.spec").stdout
    assert "What to measure: datasets, synthetic sources, arms, seeds" in out
    for field in ("datasets", "seeds", "storage", "parallelism"):
        assert f"  {field}\t" in out or f"  {field} " in out, field
    out = k8s_control_plane.kubectl("explain", "sb.spec.datasets.format").stdout
    assert "imagefolder" in out


@cluster
def test_printer_columns_show_the_status(
        k8s_control_plane: ControlPlane, k8s_api: KubeRest, crd: str, k8s_namespace: str) -> None:
    base = SB.format(ns=k8s_namespace)
    k8s_api.post(base, minimal_benchmark())
    k8s_api.patch(base + "/bench/status", {"status": {
        "phase": "Training", "progress": "12/30", "units": {"failed": 1},
        "headlineGain": "+12.3 pp vendor (z=4.1)"}})
    out = k8s_control_plane.kubectl("get", "sb", "-n", k8s_namespace).stdout
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "DONE/TOTAL", "FAILED", "HARDEST-CLASS", "GAIN",
                              "AGE"]
    assert row.split()[:5] == ["bench", "Training", "12/30", "1", "+12.3"]
    assert "+12.3 pp vendor (z=4.1)" in row


# --- Jobs through the real Job controller and the kubelet stand-in --------------------------


@cluster
def test_a_job_completes_and_its_pod_is_reported_like_a_kubelet_would(
        k8s_control_plane: ControlPlane, k8s_api: KubeRest, k8s_namespace: str) -> None:
    ns = k8s_namespace
    name = create_job(k8s_api, ns, python_job("ok", "print('hello from the pod')"))
    cond = wait_for(lambda: job_condition(k8s_api, ns, name), 60, "the Job to finish")
    assert cond["type"] == "Complete"
    assert cond["job"]["status"]["succeeded"] == 1
    (pod,) = job_pods(k8s_api, ns, name)
    assert pod["spec"]["nodeName"] == "scarce-node"
    assert pod["status"]["phase"] == "Succeeded"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0 and terminated["reason"] == "Completed"
    assert terminated["finishedAt"] >= terminated["startedAt"]
    conditions = {c["type"]: c for c in pod["status"]["conditions"]}
    assert conditions["PodScheduled"]["status"] == "True"
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["reason"] == "PodCompleted"
    # The Job controller removed its tracking finalizer itself once it counted the pod.
    wait_for(lambda: not job_pods(k8s_api, ns, name)[0]["metadata"].get("finalizers"), 30,
             "the job-tracking finalizer to go")
    assert "hello from the pod" in k8s_control_plane.pod_log(ns, pod["metadata"]["name"],
                                                             "main")


@cluster
def test_backoff_limit_zero_fails_the_job_on_the_first_failure(
        k8s_api: KubeRest, k8s_namespace: str) -> None:
    ns = k8s_namespace
    name = create_job(k8s_api, ns, python_job("once", "raise SystemExit(1)", backoffLimit=0))
    cond = wait_for(lambda: job_condition(k8s_api, ns, name), 60, "the Job to fail")
    assert (cond["type"], cond["reason"]) == ("Failed", "BackoffLimitExceeded")
    assert cond["job"]["status"]["failed"] == 1
    assert len(job_pods(k8s_api, ns, name)) == 1


FAIL_ON_3 = {"rules": [{"action": "FailJob",
                        "onExitCodes": {"containerName": "main", "operator": "In",
                                        "values": [3]}}]}


@cluster
def test_pod_failure_policy_fails_the_job_at_once_on_exit_code_3(
        k8s_api: KubeRest, k8s_namespace: str) -> None:
    ns = k8s_namespace
    name = create_job(k8s_api, ns, python_job("exit3", "raise SystemExit(3)", backoffLimit=6,
                                              podFailurePolicy=FAIL_ON_3))
    cond = wait_for(lambda: job_condition(k8s_api, ns, name), 60, "the Job to fail")
    assert (cond["type"], cond["reason"]) == ("Failed", "PodFailurePolicy")
    assert "failed with exit code 3 matching FailJob rule at index 0" in cond["message"]
    (pod,) = job_pods(k8s_api, ns, name)  # no retry although backoffLimit is 6
    finished = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert finished["exitCode"] == 3
    assert cond["job"]["status"]["failed"] == 1
    # At once: well inside the 10 s back-off a retry would have waited.
    time.sleep(3)
    assert len(job_pods(k8s_api, ns, name)) == 1


@cluster
def test_exit_code_1_is_retried_per_backoff_limit(k8s_api: KubeRest, k8s_namespace: str) -> None:
    ns = k8s_namespace
    name = create_job(k8s_api, ns, python_job("exit1", "raise SystemExit(1)", backoffLimit=1,
                                              podFailurePolicy=FAIL_ON_3))
    cond = wait_for(lambda: job_condition(k8s_api, ns, name), 120, "the Job to fail")
    assert (cond["type"], cond["reason"]) == ("Failed", "BackoffLimitExceeded")
    pods = job_pods(k8s_api, ns, name)
    assert len(pods) == 2 and cond["job"]["status"]["failed"] == 2
    finished = sorted(p["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]
                      for p in pods)
    started = sorted(p["metadata"]["creationTimestamp"] for p in pods)
    # The Job controller's back-off (10 s after the first failure) counts from finishedAt.
    assert parse_time(started[1]) - parse_time(finished[0]) >= 8


@cluster
def test_an_ignore_rule_does_not_count_an_evicted_pod(
        k8s_api: KubeRest, k8s_namespace: str, tmp_path: Path) -> None:
    ns = k8s_namespace
    flag = tmp_path / "first-pod-ran"
    code = (f"import os, sys, time\nflag = {str(flag)!r}\n"
            "if os.path.exists(flag): sys.exit(0)\n"
            "open(flag, 'w').close()\ntime.sleep(120)\nsys.exit(1)\n")
    policy = {"rules": [{"action": "Ignore",
                         "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]}
    name = create_job(k8s_api, ns, python_job("evicted", code, backoffLimit=0,
                                              podFailurePolicy=policy))
    wait_for(flag.exists, 60, "the first pod to run")
    (pod,) = job_pods(k8s_api, ns, name)
    pod_name = pod["metadata"]["name"]
    k8s_api.post(f"/api/v1/namespaces/{ns}/pods/{pod_name}/eviction",
                 {"apiVersion": "policy/v1", "kind": "Eviction",
                  "metadata": {"name": pod_name, "namespace": ns}})
    cond = wait_for(lambda: job_condition(k8s_api, ns, name), 90, "the Job to finish")
    assert cond["type"] == "Complete", cond
    status = cond["job"]["status"]
    assert status["succeeded"] == 1
    assert status.get("failed", 0) == 0  # the evicted pod did not count toward backoffLimit 0


@cluster
def test_ttl_after_finished_deletes_the_job(k8s_api: KubeRest, k8s_namespace: str) -> None:
    ns = k8s_namespace
    name = create_job(k8s_api, ns, python_job("ttl", "pass", ttlSecondsAfterFinished=0))
    wait_for(lambda: k8s_api.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/{name}")[0]
             == 404, 60, "the TTL controller to delete the finished Job")
    wait_for(lambda: not job_pods(k8s_api, ns, name), 60, "its pods to go")


@cluster
def test_garbage_collector_deletes_the_jobs_and_pods_of_a_deleted_owner(
        k8s_api: KubeRest, crd: str, k8s_namespace: str) -> None:
    ns = k8s_namespace
    owner = k8s_api.post(SB.format(ns=ns), minimal_benchmark("owner"))
    job = python_job("owned", "import time; time.sleep(300)")
    job["metadata"]["ownerReferences"] = [{
        "apiVersion": "scarce.dev/v1alpha1", "kind": "ScarceBenchmark", "name": "owner",
        "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    name = create_job(k8s_api, ns, job)
    wait_for(lambda: any((p.get("status") or {}).get("phase") == "Running"
                         for p in job_pods(k8s_api, ns, name)), 60, "the owned pod to run")
    k8s_api.delete(SB.format(ns=ns) + "/owner")
    wait_for(lambda: k8s_api.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/{name}")[0]
             == 404, 60, "the garbage collector to delete the owned Job")
    wait_for(lambda: not job_pods(k8s_api, ns, name), 60, "the owned Job's pods to go")


@cluster
def test_a_suspended_job_runs_once_unsuspended(k8s_api: KubeRest, k8s_namespace: str) -> None:
    ns = k8s_namespace
    name = create_job(k8s_api, ns, python_job("later", "pass", suspend=True))
    time.sleep(3)
    assert job_pods(k8s_api, ns, name) == []
    k8s_api.patch(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}", {"spec": {"suspend": False}})
    cond = wait_for(lambda: job_condition(k8s_api, ns, name), 60, "the Job to finish")
    assert cond["type"] == "Complete"


# --- what the kubelet stand-in gives a pod ---------------------------------------------------

ENV_PROBE = """
import json, os
keys = ["PLAIN", "EXPANDED", "POD_NAME", "POD_NS", "JOB_LABEL", "FROM_SECRET", "FROM_CM",
        "CM_GREETING", "S_TOKEN", "MISSING_OPTIONAL", "CPU_LIMIT"]
out = {k: os.environ.get(k) for k in keys}
scratch = os.environ["SCRATCH"]
with open(os.path.join(scratch, "probe.txt"), "w") as f:
    f.write("written in the emptyDir")
out["scratch_is_dir"] = os.path.isdir(scratch)
out["argv_scratch"] = os.sys.argv[1]
out["SCRATCH"] = scratch
out["kubeconfig"] = os.path.exists(os.environ.get("KUBECONFIG", "/nonexistent"))
with open(os.sys.argv[2], "w") as f:
    json.dump(out, f)
"""


@cluster
def test_pod_env_volumes_and_termination_message(
        k8s_control_plane: ControlPlane, k8s_api: KubeRest, k8s_namespace: str) -> None:
    ns = k8s_namespace
    k8s_api.post(f"/api/v1/namespaces/{ns}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
        "stringData": {"password": "s3cr3t", "TOKEN": "tok"}})
    k8s_api.post(f"/api/v1/namespaces/{ns}/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
        "data": {"mode": "fast", "GREETING": "hi"}})
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "probe", "labels": {"batch.kubernetes.io/job-name": "x"}},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [{
                "name": "main", "image": "scarce:test",
                "command": ["python", "-c", ENV_PROBE],
                "args": ["--dir=/scratch/sub", "$(TERM_LOG)"],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                "resources": {"limits": {"cpu": "1500m"}},
                "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CM_"},
                            {"secretRef": {"name": "creds"}, "prefix": "S_"}],
                "env": [
                    {"name": "PLAIN", "value": "plain"},
                    {"name": "EXPANDED", "value": "$(PLAIN)-and-$(POD_NAME)-$$(NOT)"},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {
                        "fieldPath": "metadata.name"}}},
                    {"name": "POD_NS", "valueFrom": {"fieldRef": {
                        "fieldPath": "metadata.namespace"}}},
                    {"name": "JOB_LABEL", "valueFrom": {"fieldRef": {
                        "fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}}},
                    {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {
                        "name": "creds", "key": "password"}}},
                    {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {
                        "name": "settings", "key": "mode"}}},
                    {"name": "MISSING_OPTIONAL", "valueFrom": {"configMapKeyRef": {
                        "name": "nope", "key": "x", "optional": True}}},
                    {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {
                        "resource": "limits.cpu", "divisor": "1m"}}},
                    {"name": "SCRATCH", "value": "/scratch"},
                    {"name": "TERM_LOG", "value": "/dev/termination-log"},
                ],
            }],
        },
    }
    k8s_api.post(f"/api/v1/namespaces/{ns}/pods", pod)

    def finished() -> dict[str, Any] | None:
        got = k8s_api.get(f"/api/v1/namespaces/{ns}/pods/probe")
        return got if got["status"].get("phase") in ("Succeeded", "Failed") else None

    got = wait_for(finished, 60, "the probe pod to finish")
    terminated = got["status"]["containerStatuses"][0]["state"]["terminated"]
    assert got["status"]["phase"] == "Succeeded", k8s_control_plane.pod_log(ns, "probe", "main")
    out = json.loads(terminated["message"])
    assert out["PLAIN"] == "plain"
    # $(POD_NAME) is defined after EXPANDED, so it stays as written, like the kubelet does.
    assert out["EXPANDED"] == "plain-and-$(POD_NAME)-$(NOT)"
    assert (out["POD_NAME"], out["POD_NS"], out["JOB_LABEL"]) == ("probe", ns, "x")
    assert (out["FROM_SECRET"], out["FROM_CM"]) == ("s3cr3t", "fast")
    assert (out["CM_GREETING"], out["S_TOKEN"]) == ("hi", "tok")
    assert out["MISSING_OPTIONAL"] is None
    assert out["CPU_LIMIT"] == "1500"
    # No mounts: the mountPath is rewritten to the pod's emptyDir folder wherever it appears.
    assert out["SCRATCH"].endswith("/volumes/scratch") and out["scratch_is_dir"]
    assert out["kubeconfig"]
    assert out["argv_scratch"].endswith("/volumes/scratch/sub")
    (probe,) = list(k8s_control_plane.pods_dir.glob(f"{ns}_probe_*/volumes/scratch/probe.txt"))
    assert probe.read_text() == "written in the emptyDir"


def finished_pod(api: KubeRest, ns: str, name: str, timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        got = api.get(f"/api/v1/namespaces/{ns}/pods/{name}")
        return got if got["status"].get("phase") in ("Succeeded", "Failed") else None

    return wait_for(done, timeout, f"pod {name} to finish")


@cluster
def test_a_command_that_is_not_installed_fails_with_start_error(
        k8s_api: KubeRest, k8s_namespace: str) -> None:
    ns = k8s_namespace
    for name, container in (("not-installed", {"command": ["scarce-no-such-tool"]}),
                            ("image-entrypoint", {"args": ["--help"]})):
        k8s_api.post(f"/api/v1/namespaces/{ns}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "containers": [
                {"name": "main", "image": "scarce:test", **container}]}})
        got = finished_pod(k8s_api, ns, name)
        assert got["status"]["phase"] == "Failed"
        terminated = got["status"]["containerStatuses"][0]["state"]["terminated"]
        assert (terminated["exitCode"], terminated["reason"]) == (128, "StartError")
    assert "executable file not found" in terminated["message"] or \
        "needs a command" in terminated["message"]


@cluster
def test_on_failure_restarts_the_container_in_place(
        k8s_api: KubeRest, k8s_namespace: str, tmp_path: Path) -> None:
    ns = k8s_namespace
    flag = tmp_path / "failed-once"
    code = (f"import os, sys\nflag = {str(flag)!r}\n"
            "if os.path.exists(flag): sys.exit(0)\nopen(flag, 'w').close()\nsys.exit(7)\n")
    k8s_api.post(f"/api/v1/namespaces/{ns}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "flaky"},
        "spec": {"restartPolicy": "OnFailure", "containers": [
            {"name": "main", "image": "scarce:test", "command": ["python", "-c", code]}]}})
    got = finished_pod(k8s_api, ns, "flaky", timeout=60)  # the kubelet's 10 s back-off
    assert got["status"]["phase"] == "Succeeded"
    (status,) = got["status"]["containerStatuses"]
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 7
    assert status["state"]["terminated"]["exitCode"] == 0


@cluster
def test_a_missing_secret_keeps_the_pod_pending_until_it_exists(
        k8s_api: KubeRest, k8s_namespace: str) -> None:
    ns = k8s_namespace
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "needs-secret"},
           "spec": {"restartPolicy": "Never", "containers": [{
               "name": "main", "image": "scarce:test",
               "command": ["python", "-c", "import os; assert os.environ['K'] == 'v'"],
               "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "later",
                                                                   "key": "k"}}}]}]}}
    k8s_api.post(f"/api/v1/namespaces/{ns}/pods", pod)

    def waiting_reason() -> str | None:
        got = k8s_api.get(f"/api/v1/namespaces/{ns}/pods/needs-secret")
        for cs in got["status"].get("containerStatuses") or []:
            return (cs["state"].get("waiting") or {}).get("reason")
        return None

    assert wait_for(waiting_reason, 30, "CreateContainerConfigError") == \
        "CreateContainerConfigError"
    assert k8s_api.get(f"/api/v1/namespaces/{ns}/pods/needs-secret")["status"]["phase"] == \
        "Pending"
    k8s_api.post(f"/api/v1/namespaces/{ns}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "later"},
        "stringData": {"k": "v"}})
    wait_for(lambda: k8s_api.get(f"/api/v1/namespaces/{ns}/pods/needs-secret")["status"]
             .get("phase") == "Succeeded", 30, "the pod to run once the Secret exists")


WHOAMI = """
import json, sys
from kubernetes import client, config
config.load_kube_config()  # the KUBECONFIG the kubelet stand-in wrote
review = client.AuthenticationV1Api().create_self_subject_review(
    {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
user = review.status.user_info.username
try:
    client.CoreV1Api().list_namespaced_pod(sys.argv[1])
    code = 200
except client.ApiException as exc:
    code = exc.status
with open(sys.argv[2], "w") as f:
    json.dump({"user": user, "list_pods": code}, f)
"""


@cluster
def test_service_account_identity_is_enforced_by_rbac(
        k8s_control_plane: ControlPlane, k8s_api: KubeRest, k8s_namespace: str) -> None:
    ns = k8s_namespace
    for sa in ("nobody", "reader"):
        k8s_api.post(f"/api/v1/namespaces/{ns}/serviceaccounts",
                     {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}})
    k8s_api.post(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]})
    k8s_api.post(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]})

    # From outside: a TokenRequest token used with the real kubectl.
    token = k8s_api.post(f"/api/v1/namespaces/{ns}/serviceaccounts/nobody/token", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 600}})["status"]["token"]
    result = k8s_control_plane.kubectl("get", "pods", "-n", ns, f"--token={token}", check=False)
    assert result.returncode != 0
    assert (f'User "system:serviceaccount:{ns}:nobody" cannot list resource "pods"'
            in result.stderr)
    assert "Forbidden" in result.stderr

    # From inside pods: the stand-in's kubeconfig makes in-pod code that service account.
    for sa in ("nobody", "reader"):
        k8s_api.post(f"/api/v1/namespaces/{ns}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"as-{sa}"},
            "spec": {"restartPolicy": "Never", "serviceAccountName": sa, "containers": [{
                "name": "main", "image": "scarce:test",
                "command": ["python", "-c", WHOAMI, ns, "/dev/termination-log"]}]}})
    results = {}
    for sa in ("nobody", "reader"):
        def done(sa: str = sa) -> dict[str, Any] | None:
            got = k8s_api.get(f"/api/v1/namespaces/{ns}/pods/as-{sa}")
            return got if got["status"].get("phase") in ("Succeeded", "Failed") else None

        got = wait_for(done, 60, f"pod as-{sa} to finish")
        assert got["status"]["phase"] == "Succeeded", k8s_control_plane.pod_log(
            ns, f"as-{sa}", "main")
        results[sa] = json.loads(
            got["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert results["nobody"] == {"user": f"system:serviceaccount:{ns}:nobody", "list_pods": 403}
    assert results["reader"] == {"user": f"system:serviceaccount:{ns}:reader", "list_pods": 200}


@cluster
def test_a_deployment_pod_runs_until_deleted_and_is_replaced(
        k8s_control_plane: ControlPlane, k8s_api: KubeRest, k8s_namespace: str) -> None:
    ns = k8s_namespace
    k8s_api.post(f"/apis/apps/v1/namespaces/{ns}/deployments", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "server"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "server"}},
                 "template": {"metadata": {"labels": {"app": "server"}}, "spec": {
                     "terminationGracePeriodSeconds": 5,
                     "containers": [{"name": "main", "image": "scarce:test",
                                     "command": ["python", "-c",
                                                 "import time\nwhile True: time.sleep(1)"]}]}}}})

    def available() -> bool:
        dep = k8s_api.get(f"/apis/apps/v1/namespaces/{ns}/deployments/server")
        return (dep.get("status") or {}).get("availableReplicas") == 1

    wait_for(available, 90, "the Deployment to be available")
    pods = k8s_api.get(f"/api/v1/namespaces/{ns}/pods", query={"labelSelector": "app=server"})
    (first,) = pods["items"]
    pid = int(first["status"]["containerStatuses"][0]["containerID"].rsplit("/", 1)[1])
    assert Path(f"/proc/{pid}").exists()
    k8s_control_plane.kubectl("delete", "pod", "-n", ns, first["metadata"]["name"],
                              "--wait=true", "--timeout=60s")
    assert not Path(f"/proc/{pid}").exists() or \
        Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"

    def replaced() -> bool:
        items = k8s_api.get(f"/api/v1/namespaces/{ns}/pods",
                            query={"labelSelector": "app=server"})["items"]
        return any(p["metadata"]["uid"] != first["metadata"]["uid"]
                   and (p.get("status") or {}).get("phase") == "Running" for p in items)

    wait_for(replaced, 60, "the ReplicaSet's replacement pod to run")
    with pytest.raises(KubeError):
        k8s_api.get(f"/api/v1/namespaces/{ns}/pods/{first['metadata']['name']}")
