"""A kubelet stand-in for the real control plane of the cluster tests (tests/cluster/).

It registers one Ready Node (allocatable ``cpu``, ``memory``, ``pods`` and ``nvidia.com/gpu``),
binds every pending pod that fits to it through ``pods/binding`` (there is no scheduler), and runs
each pod's containers as **local processes on this machine**:

* **No image is pulled or run.** A container's ``command`` + ``args`` is executed as it stands,
  found on ``PATH`` (the project's virtualenv ``bin`` folder comes first), so the command must exist
  in the installed project (``scarce``, ``scarce-trainer``, the venv's ``python``) or on the host. A
  container without ``command`` fails with ``StartError`` (exit 128): the image's entrypoint is
  unknown here. The image name is only echoed in the status.
* **Env** is resolved like the kubelet's: ``value`` (with ``$(VAR)`` expansion), ``fieldRef``,
  ``resourceFieldRef``, ``secretKeyRef``, ``configMapKeyRef`` and ``envFrom`` (with ``prefix`` and
  ``optional``); a missing non-optional Secret/ConfigMap leaves the pod Pending with
  ``CreateContainerConfigError`` until it exists. ``$(VAR)`` is expanded in command and args too.
  The host environment is not inherited, except ``PATH``, locale, ``TZ`` and ``OPENBLAS_*``.
* **Service account.** For the pod's service account a token is requested with TokenRequest
  (bound to the pod, so deleting the pod revokes it) and written into a kubeconfig that
  ``KUBECONFIG`` names: in-pod code that loads a kubeconfig talks to the API server as
  ``system:serviceaccount:NS:SA``, so RBAC applies to it for real. ``automountServiceAccountToken:
  false`` gives no kubeconfig.
* **Volumes.** Each pod gets a folder (``<state>/pods/<ns>_<name>_<uid8>/``). ``emptyDir`` (and a
  PVC, treated as one) is a folder in it; ``configMap``, ``secret``, ``downwardAPI`` and
  ``projected`` volumes (including the service-account token volume) are written into it as files;
  ``hostPath`` is the host path. There are no mounts: a ``mountPath`` (with ``subPath``) that
  appears in command, args, env values or ``workingDir`` is rewritten to the local folder, as is
  ``terminationMessagePath``. ``HOME`` is the pod folder; ``XDG_CACHE_HOME`` a node-wide cache.
* **Status** is written like the kubelet's, with strategic-merge patches of ``pods/status`` (so
  conditions written by others, e.g. ``DisruptionTarget`` from an eviction, stay): ``Running``
  with Ready conditions, then ``Succeeded``/``Failed`` with
  ``containerStatuses[].state.terminated`` (``exitCode``, ``reason`` Completed/Error/StartError,
  truthful ``startedAt``/``finishedAt``; killed by signal N → 128+N), which is what the Job
  controller's ``backoffLimit`` and ``podFailurePolicy`` read. ``restartPolicy: OnFailure`` and
  ``Always`` restart the container in place with the kubelet's back-off (``restartCount``,
  ``lastState``, ``CrashLoopBackOff``), so a Deployment's pod runs until it is deleted.
  ``terminationMessagePolicy: FallbackToLogsOnError`` and pod ``activeDeadlineSeconds`` work.
* **Deletion** is honoured: SIGTERM to the container's process group, SIGKILL after the grace
  period (at most ``--max-grace`` seconds), the terminal phase written, then a grace-0 delete with a
  UID precondition, exactly like the kubelet. The Job controller's
  ``batch.kubernetes.io/job-tracking`` finalizer is never touched.

Not covered: probes (a running container is Ready), sidecar init containers, ``kubectl logs`` and
``exec`` (there is no kubelet API; logs are files ``<pod folder>/<container>.log``), resource
limits, node affinity and taints/tolerations (only ``nodeSelector`` and requests are checked
before binding), image pulls, networking (the pod IP is 127.0.0.1, Services are not routed).

Run it as a script (it imports nothing from the project, so the repository's ``operator/`` folder
can't shadow the standard library)::

    .venv/bin/python tests/cluster/kubelet.py --kubeconfig ADMIN.kubeconfig --state-dir DIR

``tests/cluster/controlplane.py`` starts it with the control plane.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import config as k8s_config
from kubernetes.client import Configuration
from kubernetes.utils.quantity import parse_quantity

SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JOB_FINALIZER = "batch.kubernetes.io/job-tracking"
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_SCHEDULER = "default-scheduler"
TERMINAL = ("Succeeded", "Failed")
PASS_ENV = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class KubeError(RuntimeError):
    """An API call answered with an error status."""

    def __init__(self, status: int, body: Any, method: str, path: str):
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else str(body)
        super().__init__(f"{method} {path}: HTTP {status}: {message}")


class KubeRest:
    """A small JSON client for the API server: the ``kubernetes`` client's kubeconfig loader for
    the credentials, urllib3 for the calls (dicts in, dicts out, any patch content type)."""

    def __init__(self, kubeconfig: str | os.PathLike[str]):
        cfg = Configuration()
        k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        self.host = cfg.host.rstrip("/")
        self.ca_file = cfg.ssl_ca_cert
        self._cfg = cfg
        self._pool = urllib3.PoolManager(
            maxsize=8,
            cert_reqs="CERT_REQUIRED" if cfg.verify_ssl else "CERT_NONE",
            ca_certs=cfg.ssl_ca_cert,
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
        )

    def _headers(self, content_type: str) -> dict[str, str]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        for auth in self._cfg.auth_settings().values():
            if auth.get("in") == "header" and auth.get("value"):
                headers[auth["key"]] = auth["value"]
        return headers

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: dict[str, Any] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, Any]:
        """One call; returns ``(status, decoded JSON body or text)`` whatever the status."""
        url = self.host + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        response = self._pool.request(
            method, url, body=data, headers=self._headers(content_type), timeout=timeout,
            retries=False,
        )
        raw = response.data.decode("utf-8", "replace")
        try:
            decoded: Any = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            decoded = raw
        return response.status, decoded

    def call(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (),
             **kwargs: Any) -> Any:
        """Like :meth:`request` but raises :class:`KubeError` for a status >= 400 not in ``ok``."""
        status, decoded = self.request(method, path, body, **kwargs)
        if status >= 400 and status not in ok:
            raise KubeError(status, decoded, method, path)
        return decoded

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, body: Any, **kwargs: Any) -> Any:
        return self.call("POST", path, body, **kwargs)

    def patch(self, path: str, body: Any, content_type: str = MERGE, **kwargs: Any) -> Any:
        return self.call("PATCH", path, body, content_type=content_type, **kwargs)

    def delete(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.call("DELETE", path, body, **kwargs)


def now() -> str:
    """RFC 3339 UTC time with second precision, as metav1.Time serialises."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> float:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes, the rest is
    kept as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(env[name] if name in env else text[i : end + 1])
                    i = end + 1
                    continue
        out.append(char)
        i += 1
    return "".join(out)


def pod_requests(pod: dict[str, Any]) -> dict[str, float]:
    """Sum of the containers' requests (max with each init container), as the scheduler counts."""
    def of(container: dict[str, Any]) -> dict[str, float]:
        res = container.get("resources") or {}
        req = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        return {k: float(parse_quantity(v)) for k, v in req.items()}

    total: dict[str, float] = {}
    for c in pod["spec"].get("containers", []):
        for k, v in of(c).items():
            total[k] = total.get(k, 0.0) + v
    for c in pod["spec"].get("initContainers") or []:
        for k, v in of(c).items():
            total[k] = max(total.get(k, 0.0), v)
    return total


class ConfigError(Exception):
    """A container's configuration can't be built yet (``CreateContainerConfigError``)."""


@dataclass
class Container:
    """Runtime state of one container of a pod."""

    spec: dict[str, Any]
    init: bool = False
    process: subprocess.Popen[bytes] | None = None
    started_at: str | None = None
    restart_count: int = 0
    terminated: dict[str, Any] | None = None
    last_terminated: dict[str, Any] | None = None
    waiting: dict[str, Any] | None = None
    next_start: float = 0.0
    backoff: float = 0.0
    pid: int = 0

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        return self.process is not None and self.terminated is None


@dataclass
class PodRun:
    """What the stand-in knows of one pod it runs."""

    pod: dict[str, Any]
    folder: Path
    containers: list[Container]
    init_containers: list[Container]
    start_time: str = field(default_factory=now)
    started_mono: float = field(default_factory=time.monotonic)
    prepared: bool = False
    phase: str = "Pending"
    reason: str | None = None
    message: str | None = None
    kill_deadline: float | None = None
    kill_reason: str | None = None
    conditions: dict[str, dict[str, Any]] = field(default_factory=dict)
    volume_dirs: dict[str, Path] = field(default_factory=dict)
    next_prepare: float = 0.0
    last_sent: str = ""
    deleted: bool = False

    @property
    def uid(self) -> str:
        return str(self.pod["metadata"]["uid"])

    @property
    def key(self) -> str:
        md = self.pod["metadata"]
        return f"{md['namespace']}/{md['name']}"


class Kubelet:
    """The stand-in: one node, a polling loop, one :class:`PodRun` per pod it runs."""

    def __init__(
        self,
        kubeconfig: str | os.PathLike[str],
        state_dir: Path,
        node: str = "scarce-node",
        *,
        allocatable: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        interval: float = 0.25,
        restart_backoff: float = 10.0,
        max_grace: float = 30.0,
        token_seconds: int = 86400,
        log=print,
    ):
        self.api = KubeRest(kubeconfig)
        self.state_dir = Path(state_dir)
        self.pods_dir = self.state_dir / "pods"
        self.cache_dir = self.state_dir / "node-cache"
        self.node = node
        self.allocatable = allocatable or {
            "cpu": "8", "memory": "32Gi", "pods": "110", "nvidia.com/gpu": "4",
            "ephemeral-storage": "100Gi",
        }
        self.labels = labels or {}
        self.interval = interval
        self.restart_backoff = restart_backoff
        self.max_grace = max_grace
        self.token_seconds = token_seconds
        self.log = log
        self.runs: dict[str, PodRun] = {}
        self.finished: set[str] = set()        # uids we ran to a terminal phase
        self.delete_sent: set[str] = set()     # uids we sent the final grace-0 delete for
        self.unschedulable_noted: set[str] = set()
        self.stopping = False
        self.ca_data = Path(self.api.ca_file).read_bytes() if self.api.ca_file else b""
        venv_bin = str(Path(sys.executable).parent)
        path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        self.path = path if path.split(os.pathsep)[0] == venv_bin else venv_bin + os.pathsep + path

    # ---------------------------------------------------------------- node

    def register_node(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.node,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": "scarce-kubelet-stand-in",
            **self.labels,
        }
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node,
                                                                 "labels": labels}}
        self.api.post("/api/v1/nodes", body, ok=(409,))
        # The TaintNodesByCondition admission plugin taints every new Node not-ready; the
        # node-lifecycle controller (not run here) would remove it once Ready.
        self.api.patch(f"/api/v1/nodes/{self.node}",
                       {"metadata": {"labels": labels}, "spec": {"taints": None}})
        t = now()
        conditions = [
            {"type": kind, "status": "False", "reason": f"KubeletHasSufficient{suffix}",
             "message": f"kubelet has sufficient {suffix.lower()}", "lastHeartbeatTime": t,
             "lastTransitionTime": t}
            for kind, suffix in (("MemoryPressure", "Memory"), ("DiskPressure", "Disk"),
                                 ("PIDPressure", "PID"))
        ]
        conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                           "message": "kubelet stand-in is posting ready status",
                           "lastHeartbeatTime": t, "lastTransitionTime": t})
        status = {
            "capacity": self.allocatable,
            "allocatable": self.allocatable,
            "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": self.node}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, self.node).hex,
                "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.node)),
                "bootID": str(uuid.uuid4()),
                "kernelVersion": platform.release(),
                "osImage": "SCARCE kubelet stand-in (local processes)",
                "containerRuntimeVersion": "local-process://0",
                "kubeletVersion": self._server_version(),
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
        self.api.patch(f"/api/v1/nodes/{self.node}/status", {"status": status},
                       content_type=SMP)
        self.log(f"kubelet: node {self.node} registered Ready, allocatable {self.allocatable}")

    def _server_version(self) -> str:
        try:
            return str(self.api.get("/version")["gitVersion"])
        except Exception:
            return "v0.0.0"

    # ---------------------------------------------------------------- binding

    def _fits(self, pod: dict[str, Any], pods: list[dict[str, Any]]) -> str | None:
        """None if the pod fits the node, else why not (like the scheduler's message)."""
        selector = pod["spec"].get("nodeSelector") or {}
        labels = {"kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux",
                  "kubernetes.io/arch": "amd64", **self.labels}
        if any(labels.get(k) != v for k, v in selector.items()):
            return "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
        used: dict[str, float] = {"pods": 0.0}
        for other in pods:
            if (other["spec"].get("nodeName") == self.node
                    and (other.get("status") or {}).get("phase") not in TERMINAL):
                used["pods"] += 1
                for k, v in pod_requests(other).items():
                    used[k] = used.get(k, 0.0) + v
        want = pod_requests(pod)
        want["pods"] = 1.0
        short = [k for k, v in want.items()
                 if v > float(parse_quantity(self.allocatable.get(k, "0"))) - used.get(k, 0.0)]
        if short:
            return "0/1 nodes are available: " + ", ".join(
                f"1 Insufficient {k}" for k in sorted(short)) + "."
        return None

    def bind(self, pod: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        md, spec = pod["metadata"], pod["spec"]
        if spec.get("schedulingGates") or (spec.get("schedulerName") or DEFAULT_SCHEDULER) != \
                DEFAULT_SCHEDULER:
            return
        why = self._fits(pod, pods)
        ns, name = md["namespace"], md["name"]
        if why:
            if md["uid"] not in self.unschedulable_noted:
                self.unschedulable_noted.add(md["uid"])
                self.api.patch(
                    f"/api/v1/namespaces/{ns}/pods/{name}/status",
                    {"status": {"conditions": [{"type": "PodScheduled", "status": "False",
                                                "reason": "Unschedulable", "message": why,
                                                "lastTransitionTime": now()}]}},
                    content_type=SMP, ok=(404, 409, 422))
            return
        body = {"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name, "uid": md["uid"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node}}
        status, answer = self.api.request("POST", f"/api/v1/namespaces/{ns}/pods/{name}/binding",
                                          body)
        if status < 300:
            self.log(f"kubelet: bound {ns}/{name}")
            pod["spec"]["nodeName"] = self.node
        elif status not in (404, 409):
            self.log(f"kubelet: binding {ns}/{name} failed: {status} {answer}")

    # ---------------------------------------------------------------- the loop

    def run_forever(self) -> None:
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.register_node()
        while not self.stopping:
            started = time.monotonic()
            try:
                self.sync_once()
            except Exception as exc:  # keep serving: one bad answer must not end the node
                self.log(f"kubelet: sync failed: {type(exc).__name__}: {exc}")
            time.sleep(max(0.0, self.interval - (time.monotonic() - started)))
        self.shutdown()

    def sync_once(self) -> None:
        pods = self.api.get("/api/v1/pods")["items"]
        seen: set[str] = set()
        for pod in pods:
            md, spec = pod["metadata"], pod["spec"]
            uid = md["uid"]
            seen.add(uid)
            if not spec.get("nodeName"):
                if not md.get("deletionTimestamp"):
                    self.bind(pod, pods)
                if spec.get("nodeName") != self.node:
                    continue
            if spec.get("nodeName") != self.node:
                continue
            run = self.runs.get(uid)
            if run is not None:
                run.pod = pod
            phase = (pod.get("status") or {}).get("phase")
            if md.get("deletionTimestamp"):
                if run is not None:
                    self._begin_kill(run, reason=None)
                elif uid not in self.delete_sent:
                    self._delete_without_run(pod)
                continue
            if run is None and uid not in self.finished:
                if phase in TERMINAL:
                    self.finished.add(uid)
                elif (pod.get("status") or {}).get("containerStatuses"):
                    self._mark_lost(pod)
                else:
                    self.runs[uid] = self._new_run(pod)
        for uid in list(self.runs):
            run = self.runs[uid]
            if uid not in seen:  # deleted behind our back (force delete): stop its processes
                self._kill_all(run, signal.SIGKILL)
                del self.runs[uid]
                continue
            try:
                self.step(run)
            except KubeError as exc:
                self.log(f"kubelet: {run.key}: {exc}")

    # ---------------------------------------------------------------- one pod

    def _new_run(self, pod: dict[str, Any]) -> PodRun:
        md = pod["metadata"]
        folder = self.pods_dir / f"{md['namespace']}_{md['name']}_{md['uid'][:8]}"
        folder.mkdir(parents=True, exist_ok=True)
        spec = pod["spec"]
        run = PodRun(
            pod=pod,
            folder=folder,
            containers=[Container(c) for c in spec.get("containers", [])],
            init_containers=[Container(c, init=True) for c in spec.get("initContainers") or []],
        )
        self.log(f"kubelet: starting pod {run.key} in {folder}")
        return run

    def step(self, run: PodRun) -> None:
        spec = run.pod["spec"]
        policy = spec.get("restartPolicy") or "Always"
        for c in run.init_containers + run.containers:
            self._reap(run, c)
        deadline = spec.get("activeDeadlineSeconds")
        if (deadline is not None and run.kill_deadline is None and run.phase not in TERMINAL
                and time.monotonic() - run.started_mono > float(deadline)):
            run.reason = "DeadlineExceeded"
            run.message = "Pod was active on the node longer than the specified deadline"
            self._begin_kill(run, reason="DeadlineExceeded")
        if run.kill_deadline is not None:
            self._continue_kill(run)
        elif run.phase not in TERMINAL:
            if not run.prepared:
                if time.monotonic() < run.next_prepare:
                    return
                try:
                    self._prepare(run)
                except ConfigError as exc:
                    run.next_prepare = time.monotonic() + 1.0
                    for c in run.init_containers + run.containers:
                        c.waiting = {"reason": "CreateContainerConfigError", "message": str(exc)}
                    self._push(run)
                    return
            self._advance(run, policy)
        self._push(run)
        deleting = bool(run.pod["metadata"].get("deletionTimestamp"))
        if deleting and run.phase in TERMINAL and not run.deleted:
            self._final_delete(run.pod)
            run.deleted = True
        if run.phase in TERMINAL and not any(c.running for c in run.init_containers +
                                             run.containers):
            self.finished.add(run.uid)
            if run.deleted or not deleting:
                del self.runs[run.uid]

    def _advance(self, run: PodRun, policy: str) -> None:
        """Start what should run now, restart what may restart, and set the phase."""
        for c in run.init_containers:
            if c.terminated is not None and c.terminated["exitCode"] == 0:
                continue
            if c.terminated is not None:  # failed init container
                if policy == "Never":
                    run.phase = "Failed"
                    return
                self._restart_later(c)
            if not c.running:
                self._maybe_start(run, c)
            run.phase = "Pending"
            return
        for c in run.containers:
            if c.terminated is not None:
                code = c.terminated["exitCode"]
                if policy == "Always" or (policy == "OnFailure" and code != 0):
                    self._restart_later(c)
                    self._maybe_start(run, c)
            elif not c.running:
                self._maybe_start(run, c)
        done = [c for c in run.containers if c.terminated is not None and c.waiting is None]
        if len(done) == len(run.containers) and policy != "Always":
            ok = all(c.terminated["exitCode"] == 0 for c in done)
            if policy == "Never" or ok:
                run.phase = "Succeeded" if ok else "Failed"
                return
        run.phase = "Running" if any(
            c.started_at or c.restart_count for c in run.containers) else "Pending"

    def _restart_later(self, c: Container) -> None:
        """Move a terminated container to CrashLoopBackOff with the kubelet's doubling delay."""
        if c.waiting is None:
            c.last_terminated = c.terminated
            c.backoff = self.restart_backoff if c.backoff == 0 else min(c.backoff * 2, 300.0)
            c.next_start = time.monotonic() + c.backoff
            c.waiting = {"reason": "CrashLoopBackOff",
                         "message": f"back-off {int(c.backoff)}s restarting failed container="
                                    f"{c.name}"}

    def _maybe_start(self, run: PodRun, c: Container) -> None:
        if time.monotonic() < c.next_start:
            return
        if c.terminated is not None:  # a restart
            c.restart_count += 1
            c.terminated = None
        c.waiting = None
        self._start(run, c)

    # ---------------------------------------------------------------- preparing a pod

    def _prepare(self, run: PodRun) -> None:
        """Volumes and service-account kubeconfig; raises ConfigError while inputs are missing."""
        pod = run.pod
        spec = pod["spec"]
        vols = run.folder / "volumes"
        volume_dirs: dict[str, Path] = {}
        for vol in spec.get("volumes") or []:
            name = vol["name"]
            target = vols / name
            if "hostPath" in vol:
                volume_dirs[name] = Path(vol["hostPath"]["path"])
                continue
            target.mkdir(parents=True, exist_ok=True)
            if "configMap" in vol:
                self._write_keys(target, self._source("configmaps", pod, vol["configMap"]),
                                 vol["configMap"].get("items"), binary=False)
            elif "secret" in vol:
                src = dict(vol["secret"], name=vol["secret"].get("secretName"))
                self._write_keys(target, self._source("secrets", pod, src),
                                 vol["secret"].get("items"), binary=True)
            elif "downwardAPI" in vol:
                for item in vol["downwardAPI"].get("items") or []:
                    self._write_file(target / item["path"],
                                     self._downward(pod, item).encode())
            elif "projected" in vol:
                for source in vol["projected"].get("sources") or []:
                    self._project(pod, target, source)
            volume_dirs[name] = target
        run.volume_dirs = volume_dirs
        run.prepared = True

    def _project(self, pod: dict[str, Any], target: Path, source: dict[str, Any]) -> None:
        if "serviceAccountToken" in source:
            sat = source["serviceAccountToken"]
            token = self._token(pod, sat.get("audience"), sat.get("expirationSeconds"))
            self._write_file(target / sat["path"], token.encode())
        elif "configMap" in source:
            self._write_keys(target, self._source("configmaps", pod, source["configMap"]),
                             source["configMap"].get("items"), binary=False)
        elif "secret" in source:
            self._write_keys(target, self._source("secrets", pod, source["secret"]),
                             source["secret"].get("items"), binary=True)
        elif "downwardAPI" in source:
            for item in source["downwardAPI"].get("items") or []:
                self._write_file(target / item["path"], self._downward(pod, item).encode())

    def _downward(self, pod: dict[str, Any], item: dict[str, Any]) -> str:
        if "fieldRef" in item:
            path = item["fieldRef"]["fieldPath"]
            md = pod["metadata"]
            if path in ("metadata.labels", "metadata.annotations"):
                values = md.get(path.split(".")[1]) or {}
                return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
            return self._field(pod, path)
        return ""

    @staticmethod
    def _write_file(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def _write_keys(self, target: Path, data: dict[str, bytes] | None,
                    items: list[dict[str, Any]] | None, binary: bool) -> None:
        if data is None:  # optional and missing
            return
        if items:
            for item in items:
                if item["key"] in data:
                    self._write_file(target / item["path"], data[item["key"]])
        else:
            for key, value in data.items():
                self._write_file(target / key, value)

    def _source(self, kind: str, pod: dict[str, Any], ref: dict[str, Any]) \
            -> dict[str, bytes] | None:
        """The data of a ConfigMap or Secret as bytes, None if optional and missing."""
        ns = pod["metadata"]["namespace"]
        name = ref.get("name") or ref.get("secretName")
        status, obj = self.api.request("GET", f"/api/v1/namespaces/{ns}/{kind}/{name}")
        if status == 404:
            if ref.get("optional"):
                return None
            raise ConfigError(f'{kind[:-1]} "{name}" not found')
        if status >= 400:
            raise ConfigError(f"{kind[:-1]} {name}: HTTP {status}")
        out: dict[str, bytes] = {}
        if kind == "secrets":
            for k, v in (obj.get("data") or {}).items():
                out[k] = base64.b64decode(v)
            for k, v in (obj.get("stringData") or {}).items():
                out[k] = v.encode()
        else:
            for k, v in (obj.get("data") or {}).items():
                out[k] = v.encode()
            for k, v in (obj.get("binaryData") or {}).items():
                out[k] = base64.b64decode(v)
        return out

    def _token(self, pod: dict[str, Any], audience: str | None = None,
               seconds: int | None = None) -> str:
        """A TokenRequest token for the pod's service account, bound to the pod."""
        md = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        spec: dict[str, Any] = {
            "expirationSeconds": max(600, int(seconds or self.token_seconds)),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": md["name"],
                               "uid": md["uid"]},
        }
        if audience:
            spec["audiences"] = [audience]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        status, answer = self.api.request(
            "POST", f"/api/v1/namespaces/{md['namespace']}/serviceaccounts/{sa}/token", body)
        if status >= 400:
            message = answer.get("message") if isinstance(answer, dict) else answer
            raise ConfigError(f"token for service account {sa}: {message}")
        return str(answer["status"]["token"])

    def _sa_kubeconfig(self, run: PodRun) -> Path | None:
        pod = run.pod
        if pod["spec"].get("automountServiceAccountToken") is False:
            return None
        path = run.folder / "kubeconfig"
        if path.exists():
            return path
        sa = pod["spec"].get("serviceAccountName") or "default"
        ns = pod["metadata"]["namespace"]
        token = self._token(pod)
        sa_dir = run.folder / "serviceaccount"
        self._write_file(sa_dir / "token", token.encode())
        self._write_file(sa_dir / "ca.crt", self.ca_data)
        self._write_file(sa_dir / "namespace", ns.encode())
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {
                "server": self.api.host,
                "certificate-authority-data": base64.b64encode(self.ca_data).decode()}}],
            "users": [{"name": f"system:serviceaccount:{ns}:{sa}", "user": {"token": token}}],
            "contexts": [{"name": "local", "context": {
                "cluster": "local", "user": f"system:serviceaccount:{ns}:{sa}",
                "namespace": ns}}],
            "current-context": "local",
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.chmod(0o600)
        tmp.replace(path)
        return path

    # ---------------------------------------------------------------- env

    def _field(self, pod: dict[str, Any], path: str) -> str:
        md = pod["metadata"]
        simple = {
            "metadata.name": md["name"],
            "metadata.namespace": md["namespace"],
            "metadata.uid": md["uid"],
            "spec.nodeName": self.node,
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName") or "default",
            "status.hostIP": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
            "status.podIP": "127.0.0.1",
            "status.podIPs": "127.0.0.1",
        }
        if path in simple:
            return simple[path]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if match:
            return str((md.get(match.group(1)) or {}).get(match.group(2), ""))
        raise ConfigError(f"unsupported fieldPath {path!r}")

    def _resource_field(self, pod: dict[str, Any], ref: dict[str, Any],
                        container: dict[str, Any]) -> str:
        name = ref.get("containerName") or container["name"]
        spec = next((c for c in pod["spec"]["containers"] if c["name"] == name), container)
        kind, _, resource = ref["resource"].partition(".")
        resources = spec.get("resources") or {}
        value = (resources.get(kind) or {}).get(resource)
        if value is None:  # no limit: the node's allocatable, as the kubelet does
            value = self.allocatable.get(resource, "0")
        divisor = float(parse_quantity(ref.get("divisor") or "1"))
        return str(math.ceil(float(parse_quantity(value)) / divisor))

    def _env(self, run: PodRun, c: Container, kubeconfig: Path | None) -> dict[str, str]:
        pod, spec = run.pod, c.spec
        port = self.api.host.rsplit(":", 1)[1]
        env: dict[str, str] = {
            "PATH": self.path,
            "HOME": str(run.folder),
            "XDG_CACHE_HOME": str(self.cache_dir),
            "HOSTNAME": pod["metadata"]["name"],
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
            "KUBERNETES_PORT": f"tcp://127.0.0.1:{port}",
        }
        for name in PASS_ENV:
            if name in os.environ:
                env[name] = os.environ[name]
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        for source in spec.get("envFrom") or []:
            prefix = source.get("prefix") or ""
            if "configMapRef" in source:
                data = self._source("configmaps", pod, source["configMapRef"])
            else:
                data = self._source("secrets", pod, source["secretRef"])
            for key, value in (data or {}).items():
                if _ENV_NAME.match(prefix + key):
                    env[prefix + key] = value.decode("utf-8", "replace")
        for item in spec.get("env") or []:
            name = item["name"]
            if "valueFrom" not in item:
                env[name] = expand(item.get("value") or "", env)
                continue
            ref = item["valueFrom"]
            if "fieldRef" in ref:
                env[name] = self._field(pod, ref["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in ref:
                env[name] = self._resource_field(pod, ref["resourceFieldRef"], spec)
            elif "configMapKeyRef" in ref or "secretKeyRef" in ref:
                kind = "configmaps" if "configMapKeyRef" in ref else "secrets"
                key_ref = ref.get("configMapKeyRef") or ref["secretKeyRef"]
                data = self._source(kind, pod, key_ref)
                if data is None:
                    continue
                if key_ref["key"] not in data:
                    if key_ref.get("optional"):
                        continue
                    what = "ConfigMap" if kind == "configmaps" else "Secret"
                    raise ConfigError(f"couldn't find key {key_ref['key']} in {what} "
                                      f"{pod['metadata']['namespace']}/{key_ref['name']}")
                env[name] = data[key_ref["key"]].decode("utf-8", "replace")
            else:
                raise ConfigError(f"unsupported valueFrom in env {name}")
        return env

    def _path_map(self, run: PodRun, c: Container) -> list[tuple[str, str]]:
        """mountPath → local folder, longest first (plus the termination message file)."""
        mapping: list[tuple[str, str]] = []
        for mount in c.spec.get("volumeMounts") or []:
            local = run.volume_dirs.get(mount["name"])
            if local is None:
                continue
            if mount.get("subPath"):
                local = local / mount["subPath"]
                if not local.exists():
                    local.mkdir(parents=True, exist_ok=True)
            mapping.append((mount["mountPath"].rstrip("/") or "/", str(local)))
        if not any(path == SA_MOUNT for path, _ in mapping) and \
                (run.folder / "serviceaccount").exists():
            mapping.append((SA_MOUNT, str(run.folder / "serviceaccount")))
        term = c.spec.get("terminationMessagePath") or "/dev/termination-log"
        mapping.append((term, str(self._termination_file(run, c))))
        mapping.sort(key=lambda pair: len(pair[0]), reverse=True)
        return mapping

    @staticmethod
    def _termination_file(run: PodRun, c: Container) -> Path:
        return run.folder / f"{c.name}.termination-log"

    @staticmethod
    def _rewrite(text: str, mapping: list[tuple[str, str]]) -> str:
        for mount_path, local in mapping:
            pattern = r"(?<![^\s=:,'\"])" + re.escape(mount_path) + r"(?=/|$|[\s,:;'\"])"
            text = re.sub(pattern, lambda _m, local=local: local, text)
        return text

    # ---------------------------------------------------------------- processes

    def _start(self, run: PodRun, c: Container) -> None:
        started = now()
        try:
            kubeconfig = self._sa_kubeconfig(run)
            env = self._env(run, c, kubeconfig)
        except ConfigError as exc:
            c.waiting = {"reason": "CreateContainerConfigError", "message": str(exc)}
            c.next_start = time.monotonic() + 1.0
            return
        mapping = self._path_map(run, c)
        # Values the stand-in set itself (HOME, KUBECONFIG, the node cache) are local paths
        # already: with the state folder under /tmp, rewriting a /tmp mount would break them.
        local = str(self.state_dir.resolve()) + os.sep
        env = {k: v if v.startswith(local) else self._rewrite(v, mapping)
               for k, v in env.items()}
        argv = [self._rewrite(expand(a, env), mapping)
                for a in (c.spec.get("command") or []) + (c.spec.get("args") or [])]
        log_path = run.folder / f"{c.name}.log"
        if not c.spec.get("command"):
            self._start_error(c, started, "the kubelet stand-in runs no images: the container "
                              f"needs a command (image {c.spec.get('image')!r} is not pulled)")
            return
        executable = shutil.which(argv[0], path=env["PATH"]) if "/" not in argv[0] else argv[0]
        if executable is None:
            self._start_error(c, started, f'exec: "{argv[0]}": executable file not found in '
                              "$PATH (the stand-in runs commands of the installed project)")
            return
        cwd = run.folder
        if c.spec.get("workingDir"):
            wanted = Path(self._rewrite(c.spec["workingDir"], mapping))
            if wanted.is_dir():
                cwd = wanted
        term = self._termination_file(run, c)
        term.unlink(missing_ok=True)
        with log_path.open("ab") as log:
            log.write(f"--- {started} start {argv!r}\n".encode())
            log.flush()
            try:
                c.process = subprocess.Popen(
                    [executable, *argv[1:]], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                self._start_error(c, started, f"{type(exc).__name__}: {exc}")
                return
        c.pid = c.process.pid
        c.started_at = started
        self.log(f"kubelet: {run.key}/{c.name} started pid {c.pid}: {' '.join(argv)[:200]}")

    @staticmethod
    def _start_error(c: Container, started: str, message: str) -> None:
        c.process = None
        c.started_at = started
        c.terminated = {"exitCode": 128, "reason": "StartError", "message": message,
                        "startedAt": started, "finishedAt": now()}

    def _reap(self, run: PodRun, c: Container) -> None:
        if c.process is None or c.terminated is not None:
            return
        code = c.process.poll()
        if code is None:
            return
        if code < 0:
            code = 128 - code  # killed by signal N -> 128 + N, as container runtimes report
        terminated: dict[str, Any] = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": c.started_at,
            "finishedAt": now(),
            "containerID": f"local-process://{c.pid}",
        }
        message = self._termination_message(run, c, code)
        if message:
            terminated["message"] = message
        c.terminated = terminated
        c.process = None
        self.log(f"kubelet: {run.key}/{c.name} exited {code}")

    def _termination_message(self, run: PodRun, c: Container, code: int) -> str:
        term = self._termination_file(run, c)
        if term.exists():
            return term.read_bytes()[:4096].decode("utf-8", "replace")
        if code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            log = run.folder / f"{c.name}.log"
            if log.exists():
                lines = log.read_bytes().decode("utf-8", "replace").splitlines()
                return "\n".join(line for line in lines[-80:]
                                 if not line.startswith("--- "))[-2048:]
        return ""

    def _begin_kill(self, run: PodRun, reason: str | None) -> None:
        if run.kill_deadline is not None:
            return
        md = run.pod["metadata"]
        grace = md.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = run.pod["spec"].get("terminationGracePeriodSeconds", 30)
        run.kill_deadline = time.monotonic() + min(float(grace), self.max_grace)
        run.kill_reason = reason
        self.log(f"kubelet: killing {run.key} ({reason or 'deleted'}, grace {grace}s)")
        self._kill_all(run, signal.SIGTERM)

    def _continue_kill(self, run: PodRun) -> None:
        alive = [c for c in run.init_containers + run.containers if c.running]
        if alive and run.kill_deadline is not None and time.monotonic() >= run.kill_deadline:
            self._kill_all(run, signal.SIGKILL)
            for c in alive:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    c.process.wait(timeout=5)  # type: ignore[union-attr]
                self._reap(run, c)
            alive = [c for c in alive if c.running]
        if alive:
            return
        # Everything stopped: containers that never ran are reported as the kubelet does.
        for c in run.init_containers + run.containers:
            if c.terminated is None:
                c.terminated = {"exitCode": 137, "reason": "ContainerStatusUnknown",
                                "message": "The container could not be located when the pod "
                                           "was terminated",
                                "startedAt": c.started_at or now(), "finishedAt": now()}
            c.waiting = None
        if run.phase not in TERMINAL:
            ok = all(c.terminated is not None and c.terminated["exitCode"] == 0
                     for c in run.containers)
            run.phase = "Succeeded" if ok and run.kill_reason is None else "Failed"

    @staticmethod
    def _kill_all(run: PodRun, sig: int) -> None:
        for c in run.init_containers + run.containers:
            if c.running:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(c.pid, sig)

    # ---------------------------------------------------------------- status

    def _container_status(self, c: Container) -> dict[str, Any]:
        status: dict[str, Any] = {
            "name": c.name,
            "image": c.spec.get("image") or "",
            "imageID": "",
            "restartCount": c.restart_count,
            "ready": False,
            "started": False,
        }
        if c.pid:
            status["containerID"] = f"local-process://{c.pid}"
        if c.last_terminated:
            status["lastState"] = {"terminated": c.last_terminated}
        if c.waiting is not None:
            status["state"] = {"waiting": c.waiting}
        elif c.terminated is not None:
            status["state"] = {"terminated": c.terminated}
        elif c.running:
            status["state"] = {"running": {"startedAt": c.started_at}}
            status["ready"] = not c.init
            status["started"] = True
        else:
            status["state"] = {"waiting": {"reason": "ContainerCreating"}}
        return status

    def _condition(self, run: PodRun, kind: str, value: bool, reason: str | None = None) \
            -> dict[str, Any]:
        status = "True" if value else "False"
        old = run.conditions.get(kind)
        if old is None or old["status"] != status or old.get("reason") != reason:
            old = {"type": kind, "status": status, "lastTransitionTime": now(),
                   "lastProbeTime": None}
            if reason:
                old["reason"] = reason
            run.conditions[kind] = old
        return old

    def _push(self, run: PodRun) -> None:
        terminal = run.phase in TERMINAL
        inits_done = all(c.terminated is not None and c.terminated["exitCode"] == 0
                         for c in run.init_containers)
        all_running = bool(run.containers) and all(c.running for c in run.containers)
        ready_reason = "PodCompleted" if terminal else (None if all_running
                                                         else "ContainersNotReady")
        conditions = [
            self._condition(run, "PodReadyToStartContainers", not terminal),
            self._condition(run, "Initialized", inits_done or terminal,
                            None if inits_done or terminal else "ContainersNotInitialized"),
            self._condition(run, "ContainersReady", all_running and not terminal, ready_reason),
            self._condition(run, "Ready", all_running and not terminal, ready_reason),
        ]
        status: dict[str, Any] = {
            "phase": run.phase,
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": run.start_time,
            "containerStatuses": [self._container_status(c) for c in run.containers],
        }
        if run.init_containers:
            status["initContainerStatuses"] = [self._container_status(c)
                                               for c in run.init_containers]
        if run.reason:
            status["reason"] = run.reason
        if run.message:
            status["message"] = run.message
        encoded = json.dumps(status, sort_keys=True)
        if encoded == run.last_sent:
            return
        md = run.pod["metadata"]
        code, answer = self.api.request(
            "PATCH", f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}/status",
            {"metadata": {"uid": md["uid"]}, "status": status}, content_type=SMP)
        if code < 300 or code == 404:
            run.last_sent = encoded
            if code < 300 and run.phase in TERMINAL:
                self.log(f"kubelet: {run.key} {run.phase}")
        else:
            self.log(f"kubelet: status of {run.key} refused: {code} {answer}")

    def _final_delete(self, pod: dict[str, Any]) -> None:
        """The kubelet's last word: delete with grace 0 and a UID precondition."""
        md = pod["metadata"]
        self.api.request(
            "DELETE", f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}",
            {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
             "preconditions": {"uid": md["uid"]}})
        self.delete_sent.add(md["uid"])

    def _delete_without_run(self, pod: dict[str, Any]) -> None:
        """A deleted pod we run no process for: write a terminal phase first if it lacks one."""
        md = pod["metadata"]
        if (pod.get("status") or {}).get("phase") not in TERMINAL:
            self.api.request(
                "PATCH", f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}/status",
                {"status": {"phase": "Failed", "reason": "Terminated",
                            "message": "Pod was deleted before the kubelet stand-in ran it"}},
                content_type=SMP)
        self._final_delete(pod)

    def _mark_lost(self, pod: dict[str, Any]) -> None:
        """A pod that a previous stand-in ran: its processes are gone, like after a node crash."""
        md = pod["metadata"]
        statuses = []
        for c in (pod.get("status") or {}).get("containerStatuses") or []:
            c = dict(c)
            if "terminated" not in (c.get("state") or {}):
                c["state"] = {"terminated": {
                    "exitCode": 137, "reason": "ContainerStatusUnknown",
                    "message": "The container could not be located when the pod was terminated",
                    "startedAt": now(), "finishedAt": now()}}
                c["ready"] = False
                c["started"] = False
            statuses.append(c)
        self.api.request(
            "PATCH", f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}/status",
            {"status": {"phase": "Failed", "containerStatuses": statuses}}, content_type=SMP)
        self.finished.add(md["uid"])

    # ---------------------------------------------------------------- shutdown

    def shutdown(self) -> None:
        for run in self.runs.values():
            self._kill_all(run, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
                c.running and c.process.poll() is None  # type: ignore[union-attr]
                for run in self.runs.values() for c in run.init_containers + run.containers):
            time.sleep(0.1)
        for run in self.runs.values():
            self._kill_all(run, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True, help="an admin kubeconfig")
    parser.add_argument("--state-dir", required=True, type=Path,
                        help="folder for the pods' folders and logs")
    parser.add_argument("--node", default="scarce-node")
    parser.add_argument("--allocatable", action="append", default=[], metavar="NAME=QUANTITY",
                        help="override one allocatable resource, e.g. nvidia.com/gpu=2")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--interval", type=float, default=0.25, help="poll period (s)")
    parser.add_argument("--restart-backoff", type=float, default=10.0,
                        help="first restart delay of a crashing container (s), doubled to 300")
    parser.add_argument("--max-grace", type=float, default=30.0,
                        help="longest grace period honoured on deletion (s)")
    args = parser.parse_args(argv)
    allocatable = {"cpu": "8", "memory": "32Gi", "pods": "110", "nvidia.com/gpu": "4",
                   "ephemeral-storage": "100Gi"}
    allocatable.update(dict(item.split("=", 1) for item in args.allocatable))
    kubelet = Kubelet(
        args.kubeconfig, args.state_dir, args.node,
        allocatable=allocatable,
        labels=dict(item.split("=", 1) for item in args.label),
        interval=args.interval, restart_backoff=args.restart_backoff, max_grace=args.max_grace,
        log=lambda message: print(f"{now()} {message}", flush=True),
    )

    def stop(_signum: int, _frame: Any) -> None:
        kubelet.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    kubelet.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
