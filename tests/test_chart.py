"""The Helm chart charts/scarce-operator, rendered by the real `helm` binary.

helm (and kubectl) come from scripts/fetch-helm.py's cache (`.ci/run` fills it before pytest; a
missing cache is filled here). Every object rendered from the default values and from
tests/chart-values-all.yaml (every option on) is validated against the Kubernetes API schemas of
each supported version with kubernetes-validate; the kinds it has no schema for (kopf.dev
peering objects, prometheus-operator's ServiceMonitor and PrometheusRule) are validated against
the CRD in the chart's crds/ or against the subset of prometheus-operator's schema the chart uses.

What these tests cannot prove: there is no cluster here, so nothing is installed or admitted
(RBAC is checked as data, not by an apiserver; `lookup` returns nothing, so keeping the MinIO
credentials across upgrades is not exercised), the images are not pulled, and PromQL is checked
by promtool (Debian's `prometheus` package, unpacked into a cache by the `promtool` fixture).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from scarce.operator.cli import app
from tests.test_crd import to_json_schema

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "scarce-operator"
VALUES_ALL = ROOT / "tests" / "chart-values-all.yaml"
NAMESPACE = "scarce"
RELEASE = "scarce-operator"

#: Kubernetes minor versions the chart supports (Chart.yaml kubeVersion: >=1.30).
SUPPORTED_VERSIONS = ["1.30", "1.31", "1.32", "1.33", "1.34", "1.35"]

#: The operator's metrics and their labels (operator/metrics.py; the dashboard's contract).
METRICS: dict[str, set[str]] = {
    "scarce_units": {"namespace", "benchmark", "state"},
    "scarce_benchmark_progress_ratio": {"namespace", "benchmark"},
    "scarce_benchmarks": {"phase"},
    "scarce_unit_duration_seconds": {"stage"},
    "scarce_unit_retries_total": {"stage"},
    "scarce_hardest_class_accuracy": {"namespace", "benchmark", "dataset", "arm"},
    "scarce_paired_z": {"namespace", "benchmark", "dataset", "arm", "baseline"},
    "scarce_reconcile_errors_total": set(),
}
HISTOGRAMS = {"scarce_unit_duration_seconds"}
#: Labels Prometheus adds to every scraped series (job, instance; the ServiceMonitor's
#: namespace/pod/service/container where the series has none of its own).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}

OPERATOR_ENV = {
    "SCARCE_TRAINER_IMAGE", "SCARCE_GPU_RESOURCE", "SCARCE_TRAINER_SERVICE_ACCOUNT",
    "SCARCE_REDUCER_SERVICE_ACCOUNT", "SCARCE_TRAINER_DEFAULTS", "SCARCE_METRICS_PORT",
    "SCARCE_S3_ENDPOINT", "SCARCE_S3_ACCESS_KEY", "SCARCE_S3_SECRET_KEY",
}


def _load_fetch_helm():
    spec = importlib.util.spec_from_file_location("fetch_helm", ROOT / "scripts" / "fetch-helm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fetch_helm = _load_fetch_helm()


@pytest.fixture(scope="module")
def helm() -> Path:
    """The helm binary of scripts/fetch-helm.py's cache (fetched now if the cache is empty)."""
    paths = fetch_helm.cached() or fetch_helm.fetch()
    return paths["helm"]


PROMTOOL_CACHE = Path.home() / ".cache" / "scarce" / "tools" / "debian-prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    """promtool from PATH, or from Debian's `prometheus` package unpacked into a cache (never
    installed or started). Missing and unobtainable is a failure, not a skip."""
    found = shutil.which("promtool")
    cached = PROMTOOL_CACHE / "usr" / "bin" / "promtool"
    if found is None and not cached.exists():
        PROMTOOL_CACHE.mkdir(parents=True, exist_ok=True)
        script = ("apt-get download -qq prometheus 2>/dev/null || "
                  "{ apt-get update -qq && apt-get download -qq prometheus; }; "
                  "dpkg-deb -x prometheus_*.deb . && rm -f prometheus_*.deb")
        subprocess.run(["bash", "-c", script], cwd=PROMTOOL_CACHE, capture_output=True,
                       timeout=600)
    if found is None and not cached.exists():
        pytest.fail("promtool is needed to parse the chart's PromQL: install Debian's prometheus "
                    f"package, or unpack it into {PROMTOOL_CACHE} (apt-get download prometheus; "
                    "dpkg-deb -x prometheus_*.deb .)")
    return found or str(cached)


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    # No cluster: an empty kubeconfig keeps helm from reading a developer's real one.
    env = {"HOME": "/tmp", "KUBECONFIG": "/dev/null", "HELM_CACHE_HOME": "/tmp/helm-cache",
           "HELM_CONFIG_HOME": "/tmp/helm-config", "HELM_DATA_HOME": "/tmp/helm-data"}
    proc = subprocess.run([str(helm), *args], capture_output=True, text=True, env=env,
                          timeout=120)
    if check:
        assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stderr}"
    return proc


def render(helm: Path, *args: str) -> list[dict[str, Any]]:
    """Every object of `helm template` (CRDs included), in order."""
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                    "--include-crds", *args)
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def default_objects(helm) -> list[dict[str, Any]]:
    return render(helm)


@pytest.fixture(scope="module")
def all_objects(helm) -> list[dict[str, Any]]:
    return render(helm, "--values", str(VALUES_ALL))


@pytest.fixture(scope="module", params=["default", "all-options"])
def objects(request, default_objects, all_objects) -> list[dict[str, Any]]:
    return default_objects if request.param == "default" else all_objects


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, name: str,
          namespace: str | None = None) -> dict[str, Any]:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name
             and (namespace is None or o["metadata"].get("namespace") == namespace)]
    assert len(found) == 1, f"{kind} {namespace}/{name}: {len(found)} found"
    return found[0]


# --- helm lint, versions, values schema -------------------------------------------------------


def test_the_fetched_helm_is_the_pinned_one(helm):
    version = run_helm(helm, "version", "--short").stdout
    assert version.startswith("v4."), version
    assert fetch_helm.main(["--check"]) == 0


@pytest.mark.parametrize("values", [None, VALUES_ALL], ids=["default", "all-options"])
def test_helm_lint_strict_passes(helm, values):
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    if values:
        args += ["--values", str(values)]
    proc = run_helm(helm, *args)
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_chart_renders_for_every_supported_kubernetes_version(helm, version):
    run_helm(helm, "template", RELEASE, str(CHART), "--kube-version", f"{version}.0",
             "--values", str(VALUES_ALL))


def test_chart_refuses_an_older_kubernetes(helm):
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--kube-version", "1.29.0",
                    check=False)
    assert proc.returncode != 0
    assert "requires kubeVersion: >=1.30.0-0" in proc.stderr


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("operator.scope=global", "'/operator/scope'"),
        ("operator.bogus=1", "bogus"),
        ("storage.endpoint=ftp://minio:9000", "'/storage/endpoint'"),
        ("minio.rootPassword=short", "'/minio/rootPassword'"),
        ("trainer.image.digest=latest", "'/trainer/image/digest'"),
        ("benchmarkNamespaces[0]=Not_A_Namespace", "'/benchmarkNamespaces/0'"),
    ],
)
def test_values_schema_rejects_bad_values(helm, setting, message):
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--set", setting, check=False)
    assert proc.returncode != 0, setting
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr


def values_keys() -> list[tuple[tuple[str, ...], bool]]:
    """(path, has a `# --` comment right above) of every key in values.yaml, in order."""
    keys: list[tuple[tuple[str, ...], bool]] = []
    stack: list[tuple[int, str]] = []
    lines = (CHART / "values.yaml").read_text().splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z_][\w.-]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        above = index - 1
        while above >= 0 and lines[above].strip().startswith("#") \
                and not lines[above].strip().startswith("# --"):
            above -= 1  # a comment of several lines starts with "# --"
        commented = above >= 0 and lines[above].strip().startswith("# --")
        keys.append((tuple(k for _, k in stack), commented))
    return keys


def schema_node(path: tuple[str, ...]) -> dict[str, Any] | None:
    node = json.loads((CHART / "values.schema.json").read_text())
    for key in path:
        if "properties" not in node:
            return None  # inside a free-form value (resources, nodeSelector, ...)
        node = node["properties"].get(key)
        if node is None:
            raise AssertionError(f"values.yaml: {'.'.join(path)} is not in values.schema.json")
    return node


def test_every_value_is_documented_in_place_and_in_the_schema():
    """Every value (a schema leaf: scalar, list or free-form map) has a `# --` comment right
    above it; blocks with declared properties are documented through their values."""
    seen = set()
    for path, commented in values_keys():
        node = schema_node(path)
        if node is None:
            continue
        seen.add(path)
        if "properties" not in node:
            assert commented, f"values.yaml: {'.'.join(path)} has no '# --' comment"
            assert node.get("description"), f"values.schema.json: {'.'.join(path)}"

    def leaves(node, path=()):
        for key, sub in node.get("properties", {}).items():
            yield (*path, key)
            yield from leaves(sub, (*path, key))

    schema = json.loads((CHART / "values.schema.json").read_text())
    missing = {p for p in leaves(schema) if p not in seen and p != ("global",)}
    assert missing == set(), "in values.schema.json but not in values.yaml"


def test_deploy_doc_lists_every_value_with_its_default():
    table = {}
    for line in (ROOT / "docs" / "deploy.md").read_text().splitlines():
        match = re.match(r"^\| `([\w.]+)` \| `(.*)` \| .+ \|$", line)
        if match:
            table[match.group(1)] = match.group(2)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path, _ in values_keys():
        node = schema_node(path)
        if node is None or "properties" in node:
            continue
        key = ".".join(path)
        assert key in table, f"docs/deploy.md: no row for {key}"
        default = values
        for part in path:
            default = default[part]
        shown = table[key]
        assert (shown == '""' and default == "") or yaml.safe_load(shown) == default, key


@pytest.mark.parametrize("values", [None, VALUES_ALL], ids=["default", "all-options"])
def test_notes_say_how_to_apply_a_benchmark_and_read_its_report(helm, values):
    args = ["install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
    if values:
        args += ["--values", str(values)]
    notes = run_helm(helm, *args).stdout.partition("NOTES:")[2]
    namespace = "ml-bench" if values else NAMESPACE
    for command in (f"kubectl -n {namespace} apply -f", f"kubectl -n {namespace} get sb -w",
                    "jsonpath='{.status.headlineGain}", "scarce report s3://",
                    "kubectl apply --server-side -f charts/scarce-operator/crds/"):
        assert command in notes, command
    assert ("placeholder" in notes) == (values is None)  # the default image cannot be pulled
    if values:
        assert "endpoint: http://scarce-minio.scarce.svc:9000" in notes
        assert "port-forward svc/scarce-minio 9000:9000" in notes


# --- the CRD ----------------------------------------------------------------------------------


def test_chart_crd_is_identical_to_the_generated_crd():
    chart_copy = CHART / "crds" / "scarcebenchmark.yaml"
    assert chart_copy.read_bytes() == (ROOT / "crds" / "scarcebenchmark.yaml").read_bytes(), (
        "charts/scarce-operator/crds/scarcebenchmark.yaml differs from crds/scarcebenchmark.yaml;"
        " run `scarce crd --out charts/scarce-operator/crds/scarcebenchmark.yaml`"
    )


def test_rendered_crds_are_the_chart_crds(default_objects):
    names = {o["metadata"]["name"] for o in of_kind(default_objects, "CustomResourceDefinition")}
    assert names == {"scarcebenchmarks.scarce.dev", "kopfpeerings.kopf.dev",
                     "clusterkopfpeerings.kopf.dev"}
    crd = named(default_objects, "CustomResourceDefinition", "scarcebenchmarks.scarce.dev")
    assert crd == yaml.safe_load((ROOT / "crds" / "scarcebenchmark.yaml").read_text())


# --- every object validates -------------------------------------------------------------------


def _crd_validator(path: Path, kind: str) -> jsonschema.Validator:
    for document in yaml.safe_load_all(path.read_text()):
        if document and document["spec"]["names"]["kind"] == kind:
            schema = document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            # The apiserver always allows these at the root, declared or not.
            implicit = {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                        "metadata": {"type": "object"}}
            schema = {**schema, "properties": {**implicit, **schema["properties"]}}
            return jsonschema.Draft202012Validator(to_json_schema(schema))
    raise AssertionError(f"{path.name}: no CRD of kind {kind}")


_METADATA = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string"}, "namespace": {"type": "string"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}}}}
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
                                          r"(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_LABEL_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
#: The fields of prometheus-operator's monitoring.coreos.com/v1 schemas that the chart sets
#: (names, types and duration pattern as in its CRDs); unknown fields are refused.
MONITORING_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": _METADATA,
            "spec": {"type": "object", "required": ["selector", "endpoints"],
                     "additionalProperties": False, "properties": {
                "selector": {"type": "object", "additionalProperties": False,
                             "properties": {"matchLabels": _LABEL_MAP}},
                "namespaceSelector": {"type": "object", "additionalProperties": False,
                                      "properties": {"matchNames": {"type": "array",
                                                                   "items": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "properties": {
                        "port": {"type": "string"}, "path": {"type": "string"},
                        "interval": _DURATION, "scrapeTimeout": _DURATION,
                        "honorLabels": {"type": "boolean"}}}},
            }},
        },
    },
    "PrometheusRule": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": {"type": "object", "additionalProperties": False, "properties": {
                "groups": {"type": "array", "items": {
                    "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "rules": {"type": "array", "items": {
                            "type": "object", "required": ["expr"], "additionalProperties": False,
                            "properties": {
                                "alert": {"type": "string"}, "record": {"type": "string"},
                                "expr": {"type": "string", "minLength": 1}, "for": _DURATION,
                                "labels": _LABEL_MAP, "annotations": _LABEL_MAP}}}}}}}},
        },
    },
}


def validate_object(obj: dict[str, Any], version: str) -> None:
    group = obj["apiVersion"].split("/")[0]
    if group == "kopf.dev":
        validator = _crd_validator(CHART / "crds" / "kopf-peering.yaml", obj["kind"])
        errors = [e.message for e in validator.iter_errors(obj)]
        assert errors == [], f"{obj['kind']}: {errors}"
        return
    if group == "monitoring.coreos.com":
        jsonschema.Draft202012Validator(MONITORING_SCHEMAS[obj["kind"]]).validate(obj)
        return
    kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_every_rendered_object_validates(objects, version):
    problems = []
    for obj in objects:
        try:
            validate_object(obj, version)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError,
                AssertionError) as error:
            problems.append(f"{obj['kind']} {obj['metadata'].get('name')}: {error}")
    assert problems == []


def test_all_options_render_every_kind(all_objects):
    kinds = {o["kind"] for o in all_objects}
    assert kinds == {
        "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
        "Role", "RoleBinding", "Service", "Deployment", "StatefulSet", "Job", "Secret",
        "ConfigMap", "ServiceMonitor", "PrometheusRule", "ClusterKopfPeering",
    }


def test_namespaced_objects_name_their_namespace(objects):
    cluster_kinds = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                     "ClusterKopfPeering"}
    for obj in objects:
        has_namespace = bool(obj["metadata"].get("namespace"))
        assert has_namespace == (obj["kind"] not in cluster_kinds), obj["metadata"]["name"]


# --- RBAC -------------------------------------------------------------------------------------


def roles(objects):
    return of_kind(objects, "Role") + of_kind(objects, "ClusterRole")


def bindings(objects):
    return of_kind(objects, "RoleBinding") + of_kind(objects, "ClusterRoleBinding")


def test_no_wildcard_verbs_resources_or_groups(objects):
    for role in roles(objects):
        for rule in role["rules"]:
            for key in ("verbs", "resources", "apiGroups", "resourceNames"):
                assert "*" not in rule.get(key, []), (role["metadata"]["name"], rule)
            assert "nonResourceURLs" not in rule


def test_no_role_touches_secrets(objects):
    """Not even get: Jobs name the store Secret and the kubelet reads it, never the operator."""
    for role in roles(objects):
        for rule in role["rules"]:
            if "" in rule["apiGroups"]:
                assert "secrets" not in rule["resources"], role["metadata"]["name"]


def test_no_role_escalates(objects):
    for role in roles(objects):
        for rule in role["rules"]:
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
            assert not {"roles", "clusterroles", "rolebindings", "clusterrolebindings",
                        "serviceaccounts/token", "pods/exec"} & set(rule["resources"])


def rules_of_subject(objects, sa_name: str, sa_namespace: str) -> list[dict[str, Any]]:
    """Every rule granted to a ServiceAccount through the rendered bindings."""
    granted = []
    for binding in bindings(objects):
        subjects = binding.get("subjects", [])
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa_name
                   and s["namespace"] == sa_namespace for s in subjects):
            continue
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        granted += named(objects, ref["kind"], ref["name"], namespace)["rules"]
    return granted


def flatten(rules) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def benchmark_namespaces(objects) -> list[str]:
    return sorted({sa["metadata"]["namespace"] for sa in of_kind(objects, "ServiceAccount")
                   if sa["metadata"]["name"] == "scarce-reducer"})


def test_reducer_may_only_get_and_patch_benchmark_status(objects):
    namespaces = benchmark_namespaces(objects)
    assert namespaces
    for namespace in namespaces:
        granted = flatten(rules_of_subject(objects, "scarce-reducer", namespace))
        assert granted == {("scarce.dev", "scarcebenchmarks/status", "get"),
                           ("scarce.dev", "scarcebenchmarks/status", "patch")}
    reducer_bindings = [b for b in bindings(objects)
                        if any(s["name"] == "scarce-reducer" for s in b["subjects"])]
    assert all(b["kind"] == "RoleBinding" for b in reducer_bindings)


def test_trainer_has_no_binding_and_no_token(objects):
    for binding in bindings(objects):
        assert not any(s["name"] == "scarce-trainer" for s in binding["subjects"])
    trainers = [sa for sa in of_kind(objects, "ServiceAccount")
                if sa["metadata"]["name"] == "scarce-trainer"]
    assert {sa["metadata"]["namespace"] for sa in trainers} == set(benchmark_namespaces(objects))
    assert all(sa["automountServiceAccountToken"] is False for sa in trainers)


#: What the operator needs in every namespace it serves (the contract with operator/handlers.py).
OPERATOR_NAMESPACED = {
    *{("batch", "jobs", v) for v in ("create", "get", "list", "watch", "patch", "delete")},
    *{("", "pods", v) for v in ("get", "list", "watch")},
    ("", "pods/log", "get"),
    *{("scarce.dev", "scarcebenchmarks", v) for v in ("get", "list", "watch", "patch")},
    *{("scarce.dev", "scarcebenchmarks/status", v) for v in ("get", "patch", "update")},
    *{(g, "events", v) for g in ("", "events.k8s.io") for v in ("create", "patch")},
}
#: kopf's discovery, in either scope: CRDs, and namespaces to match its --namespace patterns
#: (without them kopf retries for a minute at start-up; tests/test_cluster_userpath.py).
CRD_DISCOVERY = {(group, resource, v) for group, resource in (
    ("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces"))
    for v in ("list", "watch")}


def test_operator_rbac_in_namespaced_scope(default_objects):
    operator = f"{RELEASE}"
    role = named(default_objects, "Role", operator, NAMESPACE)
    assert flatten(role["rules"]) == OPERATOR_NAMESPACED
    discovery = named(default_objects, "ClusterRole", f"{operator}-discovery")
    assert flatten(discovery["rules"]) == CRD_DISCOVERY
    granted = flatten(rules_of_subject(default_objects, operator, NAMESPACE))
    assert granted == OPERATOR_NAMESPACED | CRD_DISCOVERY
    # No cluster-wide access to Jobs or benchmarks in namespaced scope.
    assert not [b for b in of_kind(default_objects, "ClusterRoleBinding")
                if b["roleRef"]["name"] == operator]


def test_operator_rbac_in_cluster_scope_with_standby(all_objects):
    role = named(all_objects, "ClusterRole", "scarce")
    expected = OPERATOR_NAMESPACED | CRD_DISCOVERY | {
        *{("kopf.dev", "clusterkopfpeerings", v) for v in ("get", "list", "watch", "patch")},
    }
    assert flatten(role["rules"]) == expected
    assert flatten(rules_of_subject(all_objects, "scarce", NAMESPACE)) == expected
    assert of_kind(all_objects, "Role") == [
        r for r in of_kind(all_objects, "Role") if r["metadata"]["name"] == "scarce-reducer"]


def test_namespaced_standby_gets_kopfpeerings_in_each_namespace(helm):
    objects = render(helm, "--set", "operator.standby.enabled=true",
                     "--set", "benchmarkNamespaces={team-a,team-b}")
    for namespace in ("team-a", "team-b"):
        granted = flatten(named(objects, "Role", RELEASE, namespace)["rules"])
        peering = {("kopf.dev", "kopfpeerings", v) for v in ("get", "list", "watch", "patch")}
        assert peering <= granted
        assert named(objects, "KopfPeering", RELEASE, namespace)
    assert not of_kind(objects, "ClusterKopfPeering")


def test_aggregated_user_roles(objects):
    by_name = {r["metadata"]["name"]: r for r in of_kind(objects, "ClusterRole")}
    view = next(r for n, r in by_name.items() if n.endswith("-view"))
    edit = next(r for n, r in by_name.items() if n.endswith("-edit"))
    labels = view["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert {v for _, _, v in flatten(view["rules"])} == {"get", "list", "watch"}
    assert {r for _, r, _ in flatten(edit["rules"])} == {"scarcebenchmarks"}


# --- the operator's pods ----------------------------------------------------------------------


def pod_specs(objects) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
            for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")]


def test_every_pod_is_locked_down(objects):
    specs = pod_specs(objects)
    assert specs
    for where, pod in specs:
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, where
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert pod.get("hostNetwork") is not True and pod.get("hostPID") is not True, where
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context.get("privileged") is not True, where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert container["resources"]["requests"], where
            assert ":" in container["image"] or "@" in container["image"], where


def operator_deployments(objects):
    return [d for d in of_kind(objects, "Deployment")
            if d["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"]


def test_probes_hit_kopfs_health_endpoint(objects):
    for deployment in operator_deployments(objects):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        liveness = next(a for a in container["args"] if a.startswith("--liveness="))
        assert liveness == f"--liveness=http://0.0.0.0:{ports['health']}/healthz"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe


def test_default_operator_is_standalone_in_its_namespace(default_objects):
    (deployment,) = operator_deployments(default_objects)
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert deployment["spec"]["replicas"] == 1
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--standalone" in args and f"--namespace={NAMESPACE}" in args
    assert not [a for a in args if a.startswith(("--peering", "--all-namespaces", "--priority"))]


def test_standby_operator_peers_with_a_lower_priority(all_objects):
    deployments = operator_deployments(all_objects)
    assert [d["metadata"]["name"] for d in deployments] == ["scarce", "scarce-standby"]
    priorities = []
    for deployment in deployments:
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--all-namespaces" in args and "--peering=scarce-peering" in args
        assert "--standalone" not in args
        priorities.append(int(next(a for a in args if a.startswith("--priority="))[11:]))
    # kopf pauses every operator of a peering when two alive ones share a priority.
    assert priorities[0] > priorities[1]
    assert named(all_objects, "ClusterKopfPeering", "scarce-peering")
    selectors = [json.dumps(d["spec"]["selector"], sort_keys=True) for d in deployments]
    assert len(set(selectors)) == 2  # each Deployment owns only its own pod


def env_of(deployment) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_operator_environment_is_the_contract(all_objects):
    for deployment in operator_deployments(all_objects):
        env = env_of(deployment)
        assert set(env) >= OPERATOR_ENV
        assert env["SCARCE_TRAINER_IMAGE"]["value"] == (
            "registry.internal:5000/ml/scarce-trainer:0.1.0-cuda13.0")
        assert env["SCARCE_GPU_RESOURCE"]["value"] == "nvidia.com/mig-1g.10gb"
        assert env["SCARCE_METRICS_PORT"]["value"] == "9090"
        assert env["SCARCE_S3_ENDPOINT"]["value"] == "http://scarce-minio.scarce.svc:9000"
        assert json.loads(env["SCARCE_TRAINER_DEFAULTS"]["value"]) == {
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                             "effect": "NoSchedule"}],
            "priorityClassName": "batch-low",
            "imagePullSecrets": [{"name": "regcred"}],
            "queueName": "gpu-queue",
        }
        for key, secret_key in (("SCARCE_S3_ACCESS_KEY", "accessKey"),
                                ("SCARCE_S3_SECRET_KEY", "secretKey")):
            assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {
                "name": "scarce-store", "key": secret_key}}}


def test_default_environment_has_no_store_without_an_endpoint(helm, default_objects):
    (deployment,) = operator_deployments(default_objects)
    env = env_of(deployment)
    assert json.loads(env["SCARCE_TRAINER_DEFAULTS"]["value"]) == {}
    assert not {"SCARCE_S3_ENDPOINT", "SCARCE_S3_ACCESS_KEY"} & set(env)
    (deployment,) = operator_deployments(render(
        helm, "--set", "storage.endpoint=https://s3.internal:9000"))
    env = env_of(deployment)
    assert env["SCARCE_S3_ENDPOINT"]["value"] == "https://s3.internal:9000"
    assert env["SCARCE_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "scarce-store"


def test_no_secret_value_is_in_an_environment_literal(objects):
    for _, pod in pod_specs(objects):
        for container in pod["containers"]:
            for entry in container.get("env", []):
                if re.search(r"KEY|PASSWORD|SECRET|ROOT_USER", entry["name"]):
                    assert "secretKeyRef" in entry.get("valueFrom", {}), entry["name"]


# --- optional parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "kind"),
    [
        ("metrics.serviceMonitor.enabled", "ServiceMonitor"),
        ("metrics.prometheusRule.enabled", "PrometheusRule"),
        ("grafana.dashboard.enabled", "ConfigMap"),
        ("minio.deploy", "StatefulSet"),
    ],
)
def test_optional_parts_appear_only_when_enabled(helm, default_objects, setting, kind):
    assert of_kind(default_objects, kind) == []
    assert len(of_kind(render(helm, "--set", f"{setting}=true"), kind)) == 1


def test_service_monitor_scrapes_the_metrics_service(all_objects):
    service = named(all_objects, "Service", "scarce-metrics", NAMESPACE)
    monitor = named(all_objects, "ServiceMonitor", "scarce", "monitoring")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert endpoint["path"] == "/metrics"
    # The series' own `namespace` label (the benchmark's) must win over the target's.
    assert endpoint["honorLabels"] is True
    pod_labels = operator_deployments(all_objects)[0]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


# --- the evaluation MinIO ---------------------------------------------------------------------


def test_minio_credentials_are_generated_once_and_shared(all_objects):
    secrets = of_kind(all_objects, "Secret")
    assert {s["metadata"]["namespace"] for s in secrets} == {
        NAMESPACE, "ml-bench", "ml-vendor-eval"}
    assert {s["metadata"]["name"] for s in secrets} == {"scarce-store"}
    data = [s["data"] for s in secrets]
    assert all(d == data[0] for d in data)
    assert set(data[0]) == {"accessKey", "secretKey"}


def test_minio_is_a_single_node_statefulset_with_a_volume(all_objects):
    statefulset = named(all_objects, "StatefulSet", "scarce-minio", NAMESPACE)
    assert statefulset["spec"]["replicas"] == 1
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "100Gi"
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    env = {e["name"]: e for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MINIO_ROOT_USER"]["valueFrom"]["secretKeyRef"] == {
        "name": "scarce-store", "key": "accessKey"}
    service = named(all_objects, "Service", "scarce-minio", NAMESPACE)
    assert {p["port"] for p in service["spec"]["ports"]} == {9000, 9001}
    job = named(all_objects, "Job", "scarce-minio-bucket", NAMESPACE)
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert "mb --ignore-existing" in job["spec"]["template"]["spec"]["containers"][0]["args"][0]


def test_given_minio_credentials_are_used(helm):
    objects = render(helm, "--set", "minio.deploy=true", "--set", "minio.rootUser=admin",
                     "--set", "minio.rootPassword=correct-horse-battery")
    (secret,) = of_kind(objects, "Secret")
    assert secret["data"] == {"accessKey": "YWRtaW4=",
                              "secretKey": "Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5"}


# --- the Grafana dashboard and the alerts -----------------------------------------------------

PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "on", "ignoring", "group_left",
    "group_right", "and", "or", "unless", "offset", "bool", "rate", "increase", "changes",
    "delta", "absent", "histogram_quantile", "label_values", "le", "time", "vector",
}


def metric_names(expr: str) -> set[str]:
    """Identifiers of a PromQL expression that are metric names (not functions, keywords,
    label names, strings, durations or Grafana variables)."""
    text = re.sub(r'"[^"]*"', '""', expr)  # label values
    text = re.sub(r"\$\w+|\$\{\w+\}", "", text)  # $__rate_interval, ${datasource}
    text = re.sub(r"\{[^}]*\}", "{}", text)  # matchers name labels, not metrics
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    text = re.sub(r"(?<![\w:])\d+(\.\d+)?(ms|[smhdwy])*(?![\w:])", "", text)  # 0.95, 6h, 15m
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return names - PROMQL_WORDS


def base_metric(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAMS:
            return name.removesuffix(suffix)
    return name


def label_names(expr: str) -> set[str]:
    """Label names in matchers and in by()/on() groupings."""
    names = set()
    for matcher in re.findall(r"\{([^}]*)\}", re.sub(r'"[^"]*"', '""', expr)):
        names |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matcher))
    for grouping in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        names |= {n.strip() for n in grouping.split(",") if n.strip()}
    return names


def dashboard() -> dict[str, Any]:
    return json.loads((CHART / "dashboards" / "scarce.json").read_text())


def dashboard_queries() -> list[str]:
    board = dashboard()
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    return queries


def test_dashboard_configmap_carries_the_sidecar_label_and_the_json(all_objects):
    configmap = named(all_objects, "ConfigMap", "scarce-dashboard", "monitoring")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "SCARCE"}
    assert json.loads(configmap["data"]["scarce.json"]) == dashboard()


def test_dashboard_is_a_grafana_dashboard():
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    known_types = {"stat", "timeseries", "bargauge", "table", "gauge", "barchart", "row"}
    for panel in board["panels"]:
        assert panel["type"] in known_types, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_dashboard_has_the_panels_the_issue_asks_for():
    titles = " | ".join(p["title"].lower() for p in dashboard()["panels"])
    for words in ("units by state", "progress per benchmark", "duration", "retries",
                  "hardest-class accuracy per arm", "paired z per arm"):
        assert words in titles, words


def test_dashboard_queries_only_metrics_the_operator_exports():
    used = set()
    for query in dashboard_queries():
        variable = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
        if variable:  # a template variable: label_values(SERIES, LABEL)
            query, label = variable.groups()
            (name,) = metric_names(query)
            assert label in METRICS[name], query
        names = {base_metric(n) for n in metric_names(query)}
        assert names, query
        assert names <= set(METRICS), f"{query}: {names - set(METRICS)}"
        allowed = set().union(*(METRICS[n] for n in names)) | {"le"}
        assert label_names(query) <= allowed, f"{query}: {label_names(query) - allowed}"
        used |= names
    assert used == set(METRICS), f"no panel shows {set(METRICS) - used}"


def test_dashboard_metrics_are_those_of_operator_metrics_module():
    """The names above are the ones operator/metrics.py registers (read as text: the module
    may import what this test environment lacks)."""
    source = (ROOT / "operator" / "metrics.py").read_text()
    for name in METRICS:
        registered = name.removesuffix("_total")
        assert f'"{registered}"' in source, name


def alert_rules(objects) -> list[dict[str, Any]]:
    (rule,) = of_kind(objects, "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def test_alerts_cover_down_failing_and_stuck(all_objects):
    rules = {r["alert"]: r for r in alert_rules(all_objects)}
    assert {"ScarceOperatorDown", "ScarceUnitsFailing", "ScarceBenchmarkStuck"} <= set(rules)
    assert 'up{job="scarce-metrics", namespace="scarce"}' in rules["ScarceOperatorDown"]["expr"]
    assert "[6h]" in rules["ScarceBenchmarkStuck"]["expr"]  # stuckAfter from the values
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["labels"]["team"] == "ml-platform"
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        names = {base_metric(n) for n in metric_names(rule["expr"])}
        assert names <= set(METRICS) | {"up"}, rule["alert"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


def test_alert_rules_pass_promtool(all_objects, tmp_path, promtool):
    (rule,) = of_kind(all_objects, "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboard_queries_pass_promtool(tmp_path, promtool):
    exprs = [q for q in dashboard_queries() if not q.startswith("label_values")]
    rules = [{"record": f"scarce:check:{i}",
              "expr": q.replace("$__rate_interval", "5m").replace("$__range", "1h")
                       .replace("$namespace", ".*").replace("$benchmark", ".*")}
             for i, q in enumerate(exprs)]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- examples ---------------------------------------------------------------------------------

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
SCARCE_REPORT = ROOT / "examples" / "scarce-report.yaml"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_charts_crd_schema(example):
    crd = yaml.safe_load((CHART / "crds" / "scarcebenchmark.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    validator = jsonschema.Draft202012Validator(to_json_schema(schema))
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(yaml.safe_load(example.read_text()))]
    assert errors == []


def test_report_example_passes_scarce_validate():
    result = CliRunner().invoke(app, ["validate", str(SCARCE_REPORT)])
    assert result.exit_code == 0, result.output
    assert "valid ScarceBenchmark 'scarce-report'" in " ".join(result.output.split())


def test_report_example_holds_the_reports_nine_hardest_classes():
    """Table 1 of ../shared/seed/SCARCE-report.txt, in the class names the loaders read."""
    spec = yaml.safe_load(SCARCE_REPORT.read_text())["spec"]
    hardest = {d["name"]: d["hardestClass"] for d in spec["datasets"]}
    assert hardest == {
        "pill": "faulty_imprint", "magnetic-tile": "Blowhole", "marble": "crack",
        "capsule": "crack", "zipper": "broken_teeth", "riawelc": "porosity",
        "metal-nut": "scratch", "plantvillage": "Late_blight", "wood": "hole",
    }
    assert spec["seeds"] == 15
    assert spec["arms"][:2] == ["real", "placebo"] and len(spec["arms"]) == 3
    assert spec["arms"][2] == spec["synthetic"][0]["name"]
