"""The user's tools on the real control plane: helm, kubectl, an S3 store holding the demo data,
and Prometheus, driven the way docs/deploy.md tells a user to drive them.

Shared by tests/test_cluster_userpath.py and scripts/capture-kubectl-docs.py. Nothing here is
a shortcut a user would not have: the chart is installed with ``helm install``, benchmarks are
applied with ``kubectl apply -f``, data goes into the store with ``scarce data import``, and the
operator runs as the chart's Deployment (the kubelet stand-in runs its ``command``). The one
difference: the chart's metrics Service is not routed (there is no kube-proxy), so Prometheus
scrapes the operator's port on 127.0.0.1 with the labels a ServiceMonitor would give it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.controlplane import ControlPlane, free_port

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "scarce-operator"
DASHBOARD = CHART / "dashboards" / "scarce.json"
RELEASE = "scarce-operator"
SYSTEM_NAMESPACE = "scarce-system"
STORE_SECRET = "scarce-store"
#: The Prometheus job a ServiceMonitor on the chart's metrics Service gives the operator's series.
METRICS_JOB = f"{RELEASE}-metrics"
PROMETHEUS_CACHE = Path.home() / ".cache" / "scarce" / "tools" / "debian-prometheus"
PROMETHEUS_COMMAND = (f"mkdir -p {PROMETHEUS_CACHE} && cd {PROMETHEUS_CACHE} && "
                      "apt-get download prometheus && dpkg-deb -x prometheus_*.deb . && "
                      "rm prometheus_*.deb")
VENV_BIN = Path(sys.executable).parent


class ToolMissing(RuntimeError):
    """A binary the user's path needs is not there; the message names the command to get it."""


# --- binaries ---------------------------------------------------------------------------------


def helm_binary() -> Path:
    """helm from scripts/fetch-helm.py's cache (fetched now when the cache is empty)."""
    spec = importlib.util.spec_from_file_location("fetch_helm", REPO / "scripts" / "fetch-helm.py")
    assert spec and spec.loader
    fetch_helm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetch_helm)
    try:
        paths = fetch_helm.cached() or fetch_helm.fetch()
    except Exception as error:
        raise ToolMissing(f"helm is missing and could not be fetched ({error}); get it with: "
                          "python3 scripts/fetch-helm.py") from error
    return Path(paths["helm"])


def prometheus_binaries() -> tuple[Path, Path]:
    """(prometheus, promtool) of Debian's ``prometheus`` package, unpacked (never installed or
    started as a service) into a cache; unpacked now when the cache is empty."""
    binaries = (PROMETHEUS_CACHE / "usr" / "bin" / "prometheus",
                PROMETHEUS_CACHE / "usr" / "bin" / "promtool")
    if not all(b.exists() for b in binaries):
        PROMETHEUS_CACHE.mkdir(parents=True, exist_ok=True)
        script = ("apt-get download -qq prometheus 2>/dev/null || "
                  "{ apt-get update -qq && apt-get download -qq prometheus; }; "
                  "dpkg-deb -x prometheus_*.deb . && rm -f prometheus_*.deb")
        subprocess.run(["bash", "-c", script], cwd=PROMETHEUS_CACHE, capture_output=True,
                       timeout=600, check=False)
    if not all(b.exists() for b in binaries):
        raise ToolMissing(f"Debian's prometheus binaries are missing in {PROMETHEUS_CACHE}; "
                          f"get them with: {PROMETHEUS_COMMAND}")
    return binaries


# --- helm and kubectl -------------------------------------------------------------------------


def run_helm(plane: ControlPlane, *args: str, timeout: float = 180) \
        -> subprocess.CompletedProcess[str]:
    """The real helm against the control plane, as the admin; raises with its output."""
    home = Path(tempfile.gettempdir()) / "scarce-helm-home"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "KUBECONFIG": str(plane.kubeconfig), "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}
    proc = subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}"
                             f"\n{proc.stderr}")
    return proc


def kubectl_json(plane: ControlPlane, *args: str) -> Any:
    """``kubectl ... -o json``, decoded."""
    return json.loads(plane.kubectl(*args, "-o", "json").stdout)


def create_namespace(plane: ControlPlane, namespace: str, store: StoreAccess) -> None:
    """A namespace with the store Secret in it, as docs/deploy.md has the user make them."""
    plane.kubectl("create", "namespace", namespace)
    plane.kubectl("-n", namespace, "create", "secret", "generic", STORE_SECRET,
                  f"--from-literal=accessKey={store.access_key}",
                  f"--from-literal=secretKey={store.secret_key}")


@dataclass(frozen=True)
class Ports:
    """Host ports of the operator pod: every pod of the stand-in shares the host's network."""

    metrics: int
    health: int

    @classmethod
    def free(cls) -> Ports:
        return cls(metrics=free_port(), health=free_port())


def install_chart(plane: ControlPlane, *, benchmark_namespaces: Sequence[str],
                  store: StoreAccess, ports: Ports, extra: Sequence[str] = ()) \
        -> subprocess.CompletedProcess[str]:
    """``helm install`` the chart into scarce-system and wait for the operator Deployment.

    The images stay the chart's placeholders: the stand-in runs the Deployment's command
    (``kopf run -m scarce.operator.handlers``) and the Jobs' ``scarce-trainer`` from the
    project's virtualenv.
    """
    return run_helm(
        plane, "install", RELEASE, str(CHART), "--namespace", SYSTEM_NAMESPACE,
        "--set", f"storage.endpoint={store.url}",
        "--set", "benchmarkNamespaces={" + ",".join(benchmark_namespaces) + "}",
        "--set", f"metrics.port={ports.metrics}",
        "--set", f"operator.healthPort={ports.health}",
        *extra, "--wait", "--timeout", "120s")


def apply(plane: ControlPlane, manifest: Mapping[str, Any], *, check: bool = True) \
        -> subprocess.CompletedProcess[str]:
    """``kubectl apply -f -`` of one manifest (YAML, as a user's file)."""
    return plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(dict(manifest)), check=check)


# --- the store --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreAccess:
    """An S3 endpoint on 127.0.0.1 and its keys (the moto server of tests/s3server.py)."""

    endpoint: str
    access_key: str
    secret_key: str

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def env(self) -> dict[str, str]:
        """The environment `scarce` reads its store credentials from."""
        return {"SCARCE_S3_ENDPOINT": self.url, "SCARCE_S3_ACCESS_KEY": self.access_key,
                "SCARCE_S3_SECRET_KEY": self.secret_key}


def scarce_cli(store: StoreAccess, *args: str, timeout: float = 300) \
        -> subprocess.Popen[str]:
    """Start the project's ``scarce`` CLI with the store's credentials in its environment."""
    env = {**os.environ, **store.env()}
    return subprocess.Popen([str(VENV_BIN / "scarce"), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def upload_demo_data(store: StoreAccess, bucket: str, workdir: Path) -> dict[str, str]:
    """``scarce data demo`` then ``scarce data import`` of the surfaces and the vendor drop into
    ``s3://BUCKET/``; returns their URIs (``dataset``, ``vendor``)."""
    demo = workdir / "demo"
    subprocess.run([str(VENV_BIN / "scarce"), "data", "demo", str(demo)], check=True,
                   capture_output=True, timeout=120)
    uris = {"dataset": f"s3://{bucket}/datasets/surfaces", "vendor": f"s3://{bucket}/vendor-drop"}
    imports = [scarce_cli(store, "data", "import", "imagefolder", str(demo / folder), uri)
               for folder, uri in (("surfaces", uris["dataset"]),
                                   ("vendor-drop", uris["vendor"]))]
    for proc in imports:  # the two imports run at once
        out, _ = proc.communicate(timeout=300)
        if proc.returncode != 0:
            raise AssertionError(f"scarce data import exited {proc.returncode}:\n{out}")
    return uris


def benchmark_manifest(name: str, namespace: str, *, store: StoreAccess, store_uri: str,
                       data: Mapping[str, str], **spec: Any) -> dict[str, Any]:
    """A small ScarceBenchmark on the demo data: test_resnet at 32 px, a few seconds per unit.

    ``spot`` is the hardest class here: at 32 px and a few epochs the tiny model never finds a
    pit, and a column of zeros would prove nothing about the numbers passed along.
    """
    body: dict[str, Any] = {
        "storage": {"uri": store_uri, "endpoint": store.url,
                    "credentials": {"secretName": STORE_SECRET}},
        "datasets": [{"name": "surfaces", "format": "imagefolder", "source": data["dataset"],
                      "hardestClass": "spot", "split": {"testFraction": 0.3, "splitSeed": 0}}],
        "synthetic": [{"name": "vendor", "kind": "external", "uri": data["vendor"],
                       "perClass": 12}],
        "arms": ["real", "vendor"],
        "seeds": 2,
        "minPairs": 2,
        "model": {"backbone": "test_resnet", "imageSize": 32, "channels": 1},
        "schedule": {"epochs": 4, "batchSize": 16, "lr": 0.02},
        "parallelism": 2,
        "seedsPerJob": 2,  # one Job (one process, one torch import) per arm
        # The stand-in's node has 8 CPUs; the default 2 CPU / 8Gi would fit fewer Jobs.
        "jobs": {"cpu": "1", "memory": "2Gi"},
    }
    body.update(spec)
    return {"apiVersion": "scarce.dev/v1alpha1", "kind": "ScarceBenchmark",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


# --- Prometheus -------------------------------------------------------------------------------


def alert_rules(plane: ControlPlane, **values: str) -> dict[str, Any]:
    """The chart's PrometheusRule groups (``helm template``), as a Prometheus rule file."""
    settings = [f"--set=metrics.prometheusRule.{k}={v}" for k, v in values.items()]
    proc = run_helm(plane, "template", RELEASE, str(CHART), "--namespace", SYSTEM_NAMESPACE,
                    "--set", "metrics.prometheusRule.enabled=true", *settings,
                    "--show-only", "templates/prometheusrule.yaml")
    rule = yaml.safe_load(proc.stdout)
    return {"groups": rule["spec"]["groups"]}


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the chart's Grafana dashboard: panel targets and template
    variables (``label_values(...)``, Grafana's own function)."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "expr" in t]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            queries.append(query["query"])
    return queries


class PrometheusError(RuntimeError):
    """Prometheus answered a query with an error."""


@dataclass
class Prometheus:
    """Debian's Prometheus server, started by pid in a folder of its own."""

    url: str
    process: subprocess.Popen[bytes]
    folder: Path

    def get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = json.loads(error.read())
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: "
                                  f"{body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.get("/api/v1/query", **params)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 2.0) \
            -> list[dict[str, Any]]:
        return self.get("/api/v1/query_range", query=expr, start=f"{start:.3f}",
                        end=f"{end:.3f}", step=f"{step:g}")["result"]

    def label_values(self, label: str, match: str) -> list[str]:
        return self.get(f"/api/v1/label/{label}/values", **{"match[]": match})

    def log(self) -> str:
        return (self.folder / "prometheus.log").read_text(errors="replace")[-3000:]


@contextlib.contextmanager
def running_prometheus(binary: Path, folder: Path, *, metrics_port: int,
                       rules: Mapping[str, Any]) -> Iterator[Prometheus]:
    """Prometheus scraping the operator every second as a ServiceMonitor on the chart's
    metrics Service would (job ``scarce-operator-metrics``, the Service's namespace as a
    target label, ``honorLabels`` so each benchmark keeps its own ``namespace``), with the
    chart's alert rules loaded."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rules.yml").write_text(yaml.safe_dump(dict(rules)))
    (folder / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(folder / "rules.yml")],
        "scrape_configs": [{
            "job_name": METRICS_JOB,
            "honor_labels": True,
            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"],
                                "labels": {"namespace": SYSTEM_NAMESPACE,
                                           "service": METRICS_JOB}}],
        }],
    }))
    port = free_port()
    with (folder / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [str(binary), f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=folder)
    server = Prometheus(f"http://127.0.0.1:{port}", process, folder)
    try:
        deadline = time.monotonic() + 30
        while True:
            with (contextlib.suppress(OSError),
                  urllib.request.urlopen(f"{server.url}/-/ready", timeout=1) as response):
                if response.status == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start:\n{server.log()}")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
