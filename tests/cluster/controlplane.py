"""A real Kubernetes control plane on 127.0.0.1 for the cluster tests, and its CLI.

Starts, as plain processes, ``etcd``, ``kube-apiserver`` (free ports, RBAC authorization, a
service-account issuer with a signing key generated at start so TokenRequest works, an admin
static token in ``system:masters``), ``kube-controller-manager`` (the controllers in
:data:`CONTROLLERS`) and, unless told not to, the kubelet stand-in (``kubelet.py``); waits for each
to be ready (``/health``, ``/readyz``, the ``default`` ServiceAccount, the Ready Node); writes an
admin kubeconfig; and stops everything by the pids it saved. Every log goes to ``<dir>/logs/``;
when a start fails, the tails of those logs are printed and what was started is stopped.

The binaries come from ``bash tests/cluster/build.sh`` (cached in ``~/.cache/scarce/``; set
``SCARCE_K8S_BIN`` to use another folder). By hand, from the repository root::

    .venv/bin/python -m tests.cluster.controlplane start [--dir DIR] [--no-kubelet]
    export KUBECONFIG=DIR/admin.kubeconfig          # (start prints the line)
    .venv/bin/python -m tests.cluster.controlplane status [--dir DIR]
    .venv/bin/python -m tests.cluster.controlplane stop [--dir DIR] [--clean]

``DIR`` defaults to ``$SCARCE_CLUSTER_DIR`` or ``/tmp/scarce-cluster``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLUSTER_DIR = Path(__file__).resolve().parent
REPO = CLUSTER_DIR.parents[1]
BUILD_COMMAND = "bash tests/cluster/build.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
DEFAULT_DIR = Path(os.environ.get("SCARCE_CLUSTER_DIR", "/tmp/scarce-cluster"))
# Canonical names (cmd/kube-controller-manager/names); the short aliases work too.
CONTROLLERS = (
    "job-controller",
    "garbage-collector-controller",
    "ttl-after-finished-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "namespace-controller",
    "clusterrole-aggregation-controller",
    "root-ca-certificate-publisher-controller",
    "deployment-controller",
    "replicaset-controller",
)
SA_ISSUER = "https://kubernetes.default.svc"
#: Audit policy: every write (who, verb, object, response code) to ``logs/audit.jsonl``, one JSON
#: event per line; reads are left out. Tests read it to prove which identity did what.
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    verbs: [get, list, watch]
  - level: Metadata
"""
ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kubelet")


class BinariesMissing(RuntimeError):
    """The control-plane binaries have not been built for this go.sum."""


class StartError(RuntimeError):
    """A component did not become ready; the message carries the logs' tails."""


def k8s_version() -> str:
    for line in (CLUSTER_DIR / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "k8s.io/kubernetes" and parts[1].startswith("v"):
            return parts[1]
    raise RuntimeError("tests/cluster/go.mod requires no k8s.io/kubernetes")


def bin_dir() -> Path:
    """Where build.sh puts the binaries (the same formula as ``build.sh --print-dir``)."""
    if os.environ.get("SCARCE_K8S_BIN"):
        return Path(os.environ["SCARCE_K8S_BIN"])
    cache = Path(os.environ.get("SCARCE_K8S_CACHE", Path.home() / ".cache" / "scarce"))
    digest = hashlib.sha256((CLUSTER_DIR / "go.sum").read_bytes()).hexdigest()[:12]
    return cache / f"k8s-{k8s_version()}-{digest}"


def require_binaries() -> Path:
    """The binaries' folder, or :class:`BinariesMissing` naming the build command."""
    folder = bin_dir()
    missing = [name for name in BINARIES if not os.access(folder / name, os.X_OK)]
    if missing:
        raise BinariesMissing(
            f"the real control plane is not built: {', '.join(missing)} missing in {folder}. "
            f"Build it once (about 10 min cold on 2 cores, cached after) with: {BUILD_COMMAND}")
    return folder


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def _alive(pid: int, binary: str | None = None) -> bool:
    """Whether ``pid`` is still the process we started (its command line names ``binary``)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return binary is None or binary.encode() in cmdline


@dataclass
class ControlPlane:
    """A running (or stopped) control plane described by ``<dir>/state.json``."""

    state_dir: Path
    state: dict[str, Any]

    @classmethod
    def load(cls, state_dir: Path | str = DEFAULT_DIR) -> ControlPlane:
        state_dir = Path(state_dir)
        return cls(state_dir, json.loads((state_dir / "state.json").read_text()))

    @property
    def kubeconfig(self) -> Path:
        return Path(self.state["kubeconfig"])

    @property
    def api_url(self) -> str:
        return str(self.state["api_url"])

    @property
    def bin_dir(self) -> Path:
        return Path(self.state["bin_dir"])

    @property
    def ca_file(self) -> Path:
        return Path(self.state["ca_file"])

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pods_dir(self) -> Path:
        return self.state_dir / "pods"

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60, kubeconfig: Path | str | None = None) \
            -> subprocess.CompletedProcess[str]:
        """Run the real kubectl built with the control plane, as the admin by default."""
        cmd = [str(self.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig or self.kubeconfig}",
               *args]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stdout}"
                f"\n{result.stderr}")
        return result

    def audit_events(self) -> list[dict[str, Any]]:
        """The API server's audit events so far: every write (not get, list or watch), with
        ``user.username``, ``verb``, ``objectRef`` and ``responseStatus.code``."""
        path = self.logs / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def pod_log(self, namespace: str, pod: str, container: str) -> str:
        """What a container run by the kubelet stand-in printed (its log file)."""
        found = sorted(self.pods_dir.glob(f"{namespace}_{pod}_*/{container}.log"))
        return found[-1].read_text(errors="replace") if found else ""

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ORDER:
            proc = self.state["processes"].get(name)
            if proc:
                out[name] = {"pid": proc["pid"], "alive": _alive(proc["pid"], proc["binary"])}
        out["readyz"] = _get(self.api_url + "/readyz", self.state["token"], self.ca_file)[1]
        out["kubeconfig"] = str(self.kubeconfig)
        return out

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM each saved pid in reverse start order, SIGKILL after ``timeout`` seconds."""
        for name in reversed(ORDER):
            proc = self.state["processes"].get(name)
            if proc:
                _terminate(proc["pid"], proc["binary"], timeout)


def _terminate(pid: int, binary: str, timeout: float) -> None:
    if not _alive(pid, binary):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid, binary):
        _reap_child(pid)
        time.sleep(0.1)
    if _alive(pid, binary):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        _reap_child(pid)
        if not _alive(pid, binary):
            return
        time.sleep(0.1)


def _reap_child(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _get(url: str, token: str | None = None, ca_file: Path | None = None,
         timeout: float = 5.0) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (OSError, ssl.SSLError) as exc:
        return 0, str(exc)


def _write_sa_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


class _Starter:
    """Starts the components one by one, recording each in state.json as it goes."""

    def __init__(self, state_dir: Path, bins: Path, log=print):
        self.dir = state_dir
        self.bins = bins
        self.logs = state_dir / "logs"
        self.log = log
        self.state: dict[str, Any] = {"bin_dir": str(bins), "processes": {},
                                      "version": k8s_version(), "timings_s": {}}

    def save(self) -> None:
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.dir / "state.json")

    def spawn(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   cwd=self.dir)
        log.close()
        self.state["processes"][name] = {"pid": process.pid, "binary": argv[0] if name !=
                                         "kubelet" else "kubelet.py", "argv": list(argv)}
        self.save()
        return process

    def fail(self, what: str) -> StartError:
        tails = "\n".join(
            f"----- {log.name} (last 40 lines) -----\n{_tail(log)}"
            for log in sorted(self.logs.glob("*.log")))
        message = f"control plane start failed: {what}\nlogs in {self.logs}\n{tails}"
        return StartError(message)

    def wait(self, what: str, process: subprocess.Popen[bytes], check, timeout: float) -> float:
        started = time.monotonic()
        while True:
            if check():
                elapsed = time.monotonic() - started
                self.log(f"controlplane: {what} ready in {elapsed:.1f}s")
                return elapsed
            if process.poll() is not None:
                raise self.fail(f"{what} exited with code {process.returncode}")
            if time.monotonic() - started > timeout:
                raise self.fail(f"{what} not ready within {timeout:.0f}s")
            time.sleep(0.25)


def start(state_dir: Path | str = DEFAULT_DIR, *, kubelet: bool = True,
          kubelet_args: Sequence[str] = (), timeout: float = 180.0, log=print) -> ControlPlane:
    """Start the control plane in ``state_dir`` (wiped first) and return it once ready.

    Raises :class:`BinariesMissing` when build.sh has not run, :class:`StartError` (with the
    logs' tails) when a component fails; in both cases nothing is left running.
    """
    bins = require_binaries()
    state_dir = Path(state_dir).resolve()
    if (state_dir / "state.json").exists():
        old = ControlPlane.load(state_dir)
        if any(_alive(p["pid"], p["binary"]) for p in old.state["processes"].values()):
            raise StartError(f"a control plane is already running in {state_dir}: stop it first")
    for sub in ("etcd", "pki", "logs", "pods", "node-cache"):
        shutil.rmtree(state_dir / sub, ignore_errors=True)
    for sub in ("etcd", "pki", "logs", "pods"):
        (state_dir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    s = _Starter(state_dir, bins, log)
    t0 = time.monotonic()
    try:
        _start(s, kubelet, kubelet_args, timeout)
    except BaseException:
        ControlPlane(state_dir, s.state).stop(timeout=5)
        raise
    s.state["timings_s"]["total"] = round(time.monotonic() - t0, 1)
    s.save()
    log(f"controlplane: ready in {s.state['timings_s']['total']:.1f}s; "
        f"export KUBECONFIG={s.state['kubeconfig']}")
    return ControlPlane(state_dir, s.state)


def _start(s: _Starter, kubelet: bool, kubelet_args: Sequence[str], timeout: float) -> None:
    pki = s.dir / "pki"
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    api_url = f"https://127.0.0.1:{api_port}"
    token = secrets.token_hex(24)
    (pki / "tokens.csv").write_text(f"{token},admin,admin-uid,system:masters\n")
    (pki / "tokens.csv").chmod(0o600)
    _write_sa_key(pki / "sa.key")
    (pki / "audit-policy.yaml").write_text(AUDIT_POLICY)
    ca_file = pki / "apiserver.crt"   # written by the apiserver: its serving cert + its CA
    kubeconfig = s.dir / "admin.kubeconfig"
    s.state.update(api_url=api_url, etcd_url=etcd_url, token=token, ca_file=str(ca_file),
                   kubeconfig=str(kubeconfig))

    etcd = s.spawn("etcd", [
        str(s.bins / "etcd"), "--name=scarce", f"--data-dir={s.dir / 'etcd'}",
        f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=scarce={peer_url}", "--unsafe-no-fsync=true",
        "--log-level=warn", "--quota-backend-bytes=2147483648",
    ])
    s.state["timings_s"]["etcd"] = round(s.wait(
        "etcd", etcd, lambda: '"health":"true"' in _get(etcd_url + "/health")[1], 30), 1)

    apiserver = s.spawn("kube-apiserver", [
        str(s.bins / "kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1", f"--secure-port={api_port}",
        "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
        f"--cert-dir={pki}",
        "--service-cluster-ip-range=10.0.0.0/24",
        f"--service-account-issuer={SA_ISSUER}",
        f"--service-account-key-file={pki / 'sa.key'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        "--authorization-mode=RBAC",
        f"--token-auth-file={pki / 'tokens.csv'}",
        f"--audit-policy-file={pki / 'audit-policy.yaml'}",
        f"--audit-log-path={s.logs / 'audit.jsonl'}",
        "--audit-log-mode=blocking",
        "--profiling=false",
        "--v=1",
    ])

    def apiserver_ready() -> bool:
        return ca_file.exists() and _get(api_url + "/readyz", token, ca_file)[1] == "ok"

    s.state["timings_s"]["kube-apiserver"] = round(
        s.wait("kube-apiserver /readyz", apiserver, apiserver_ready, timeout), 1)
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "scarce", "cluster": {"server": api_url,
                                                    "certificate-authority": str(ca_file)}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "scarce", "context": {"cluster": "scarce", "user": "admin",
                                                    "namespace": "default"}}],
        "current-context": "scarce",
    }, indent=1))
    kubeconfig.chmod(0o600)
    s.save()

    kcm = s.spawn("kube-controller-manager", [
        str(s.bins / "kube-controller-manager"),
        f"--kubeconfig={kubeconfig}",
        "--leader-elect=false",
        "--secure-port=0",
        f"--controllers={','.join(CONTROLLERS)}",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={ca_file}",
        "--use-service-account-credentials=true",
        "--concurrent-job-syncs=5",
        "--v=1",
    ])
    s.state["timings_s"]["kube-controller-manager"] = round(s.wait(
        "kube-controller-manager (default ServiceAccount)", kcm,
        lambda: _get(api_url + "/api/v1/namespaces/default/serviceaccounts/default", token,
                     ca_file)[0] == 200, timeout), 1)

    if kubelet:
        proc = s.spawn("kubelet", [
            sys.executable, str(CLUSTER_DIR / "kubelet.py"), f"--kubeconfig={kubeconfig}",
            f"--state-dir={s.dir}", *kubelet_args,
        ])
        s.state["node"] = "scarce-node"

        def node_ready() -> bool:
            code, body = _get(api_url + "/api/v1/nodes/scarce-node", token, ca_file)
            if code != 200:
                return False
            conditions = json.loads(body).get("status", {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        s.state["timings_s"]["kubelet"] = round(s.wait("kubelet stand-in (Node Ready)", proc,
                                                       node_ready, 60), 1)
    s.save()


def stop(state_dir: Path | str = DEFAULT_DIR, *, clean: bool = False) -> None:
    """Stop the control plane saved in ``state_dir``; ``clean`` also removes the folder."""
    state_dir = Path(state_dir)
    if (state_dir / "state.json").exists():
        ControlPlane.load(state_dir).stop()
    if clean:
        shutil.rmtree(state_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster.controlplane",
        description="Start, inspect or stop a real Kubernetes control plane on 127.0.0.1.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start", help="start etcd, apiserver, controller manager, kubelet")
    p_start.add_argument("--no-kubelet", action="store_true",
                         help="do not start the kubelet stand-in")
    p_start.add_argument("--timeout", type=float, default=180.0)
    p_status = sub.add_parser("status", help="pids, liveness and /readyz")
    p_stop = sub.add_parser("stop", help="stop everything by saved pid")
    p_stop.add_argument("--clean", action="store_true", help="also delete the folder")
    for p in (p_start, p_status, p_stop):
        p.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                       help=f"state folder (default {DEFAULT_DIR})")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            cp = start(args.dir, kubelet=not args.no_kubelet, timeout=args.timeout)
            print(json.dumps(cp.state["timings_s"]))
            print(f"export KUBECONFIG={cp.kubeconfig}")
            print(f"kubectl: {cp.bin_dir / 'kubectl'}")
        elif args.command == "status":
            if not (args.dir / "state.json").exists():
                print(f"no control plane in {args.dir}")
                return 1
            status = ControlPlane.load(args.dir).status()
            print(json.dumps(status, indent=1))
            return 0 if status["readyz"] == "ok" else 1
        else:
            stop(args.dir, clean=args.clean)
            print(f"stopped the control plane in {args.dir}")
    except (BinariesMissing, StartError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
