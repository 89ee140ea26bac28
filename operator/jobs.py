"""batch/v1 Job manifests for work units, and what a Job's status says (pure: dicts in and out).

One Job runs one unit, or one pack of seeds (`plan.pack_units`), with
``scarce-trainer <train|split|reduce> --unit-json JSON``. Names are deterministic (benchmark,
stage and a hash of the unit keys), so reconciling again, or after an operator restart, finds
the Job it made before instead of making a second one.

The operator's own settings (`JobSettings`) come from its environment, which the Helm chart
sets; docs/kubernetes.md lists every variable.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from pydantic import ValidationError

from scarce.operator.spec import JobsSpec, StorageSpec, TolerationSpec
from scarce.trainer.unit import EXIT_PERMANENT, EXIT_USAGE, WorkUnit, k_label

LABEL_PREFIX = "scarce.dev/"
LABEL_BENCHMARK = LABEL_PREFIX + "benchmark"
LABEL_STAGE = LABEL_PREFIX + "stage"
LABEL_DATASET = LABEL_PREFIX + "dataset"
LABEL_ARM = LABEL_PREFIX + "arm"
LABEL_SEED = LABEL_PREFIX + "seed"
LABEL_K = LABEL_PREFIX + "k"
ANNOTATION_UNITS = LABEL_PREFIX + "units"
MANAGED_BY = {"app.kubernetes.io/managed-by": "scarce-operator"}
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
CONTAINER = "trainer"

#: Stages whose units train or run a model: the only ones that get GPUs.
GPU_STAGES = ("pilot", "train", "fidelity")
_COMMAND_OF_STAGE = {"split": "split", "reduce": "reduce"}  # pilot, train, fidelity: train
_MAX_NAME = 63  # Job names become the pods' job-name label value: a 63-character DNS label


def _default_image() -> str:
    try:
        return f"scarce-trainer:{metadata.version('scarce')}"
    except metadata.PackageNotFoundError:  # pragma: no cover  (always installed in practice)
        return "scarce-trainer:latest"


@dataclass(frozen=True)
class TrainerDefaults:
    """Cluster-wide defaults of trainer pods (SCARCE_TRAINER_DEFAULTS); a spec field that is
    set replaces the matching default as a whole."""

    #: Node labels every trainer pod must match.
    node_selector: dict[str, str] = field(default_factory=dict)
    #: Pod tolerations, in the Pod spec's form.
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    #: PriorityClass of trainer pods.
    priority_class_name: str | None = None
    #: Secrets to pull the trainer image with.
    image_pull_secrets: list[str] = field(default_factory=list)
    #: Kueue LocalQueue used when a spec names none.
    queue_name: str | None = None


@dataclass(frozen=True)
class JobSettings:
    """The operator's settings for the Jobs it creates (one dataclass, read from env once)."""

    #: Trainer image (SCARCE_TRAINER_IMAGE); a spec's jobs.image overrides it.
    trainer_image: str = field(default_factory=_default_image)
    #: Extended resource name of a GPU (SCARCE_GPU_RESOURCE).
    gpu_resource: str = "nvidia.com/gpu"
    #: ServiceAccount of split, pilot, train and fidelity pods (SCARCE_TRAINER_SERVICE_ACCOUNT).
    trainer_service_account: str = "scarce-trainer"
    #: ServiceAccount of the reducer pod, allowed to patch the benchmark's status
    #: (SCARCE_REDUCER_SERVICE_ACCOUNT).
    reducer_service_account: str = "scarce-reducer"
    #: Scheduling defaults (SCARCE_TRAINER_DEFAULTS, a JSON object).
    defaults: TrainerDefaults = field(default_factory=TrainerDefaults)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> JobSettings:
        """Settings from environment variables; a bad SCARCE_TRAINER_DEFAULTS raises
        ValueError naming the key (the operator refuses to start rather than guess)."""
        env = os.environ if env is None else env
        base = cls()
        return cls(
            trainer_image=env.get("SCARCE_TRAINER_IMAGE") or base.trainer_image,
            gpu_resource=env.get("SCARCE_GPU_RESOURCE") or base.gpu_resource,
            trainer_service_account=env.get("SCARCE_TRAINER_SERVICE_ACCOUNT")
            or base.trainer_service_account,
            reducer_service_account=env.get("SCARCE_REDUCER_SERVICE_ACCOUNT")
            or base.reducer_service_account,
            defaults=parse_trainer_defaults(env.get("SCARCE_TRAINER_DEFAULTS") or "{}"),
        )


def parse_trainer_defaults(text: str) -> TrainerDefaults:
    """Parse SCARCE_TRAINER_DEFAULTS: a JSON object with nodeSelector, tolerations,
    priorityClassName, imagePullSecrets and queueName, all optional."""
    where = "SCARCE_TRAINER_DEFAULTS"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: must be a JSON object, got {text!r}")
    allowed = {"nodeSelector", "tolerations", "priorityClassName", "imagePullSecrets",
               "queueName"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(
            f"{where}.{unknown[0]}: unknown key; allowed: {', '.join(sorted(allowed))}"
        )
    selector = data.get("nodeSelector", {})
    if not isinstance(selector, dict) or not all(
        isinstance(v, str) for v in selector.values()
    ):
        raise ValueError(f"{where}.nodeSelector: must map label names to strings, got {selector!r}")
    try:
        tolerations = [TolerationSpec.model_validate(t).to_k8s()
                       for t in data.get("tolerations", [])]
    except ValidationError as error:
        raise ValueError(f"{where}.tolerations: {error.errors()[0]['msg']}") from None
    # Names, or LocalObjectReferences ({"name": ...}) as the Helm chart's values hold them.
    raw_secrets = data.get("imagePullSecrets", [])
    secrets = [s.get("name") if isinstance(s, dict) else s for s in raw_secrets] \
        if isinstance(raw_secrets, list) else None
    if secrets is None or not all(isinstance(s, str) and s for s in secrets):
        raise ValueError(f"{where}.imagePullSecrets: must be a list of names or "
                         f"{{name: ...}} objects, got {raw_secrets!r}")
    for key in ("priorityClassName", "queueName"):
        if not isinstance(data.get(key, ""), str):
            raise ValueError(f"{where}.{key}: must be a string, got {data[key]!r}")
    return TrainerDefaults(
        node_selector=dict(selector),
        tolerations=tolerations,
        priority_class_name=data.get("priorityClassName") or None,
        image_pull_secrets=[str(s) for s in secrets],
        queue_name=data.get("queueName") or None,
    )


@dataclass(frozen=True)
class Owner:
    """The ScarceBenchmark a Job belongs to (its ownerReference and labels)."""

    name: str
    namespace: str
    uid: str
    api_version: str = "scarce.dev/v1alpha1"
    kind: str = "ScarceBenchmark"

    def reference(self) -> dict[str, Any]:
        """The ownerReference: Jobs are garbage-collected with the benchmark, and a deletion
        in the foreground waits for them."""
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


# --- names and labels -------------------------------------------------------------------------


def job_name(benchmark: str, stage: str, keys: Sequence[str]) -> str:
    """Deterministic DNS-safe Job name: ``<benchmark>-<stage>-<10 hex of sha256(keys)>``.

    The hash covers the benchmark's unit keys (not the split digest, which is unknown before
    the split stage), so one unit or pack has one name for the benchmark's whole life.
    """
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:10]
    room = _MAX_NAME - len(stage) - len(digest) - 2
    prefix = benchmark[:room].rstrip("-")
    return f"{prefix}-{stage}-{digest}"


def pack_name(benchmark: str, units: Sequence[WorkUnit]) -> str:
    """The Job name of a unit or a pack of units."""
    return job_name(benchmark, units[0].stage, [u.key for u in units])


def job_labels(benchmark: str, units: Sequence[WorkUnit]) -> dict[str, str]:
    """``scarce.dev/*`` labels of a unit's or pack's Job (and its pods).

    A pack's ``scarce.dev/seed`` is the range ``first-last`` (label values cannot hold a
    list); the full unit keys are in the ``scarce.dev/units`` annotation.
    """
    first = units[0]
    labels = {LABEL_BENCHMARK: benchmark, LABEL_STAGE: first.stage, **MANAGED_BY}
    if first.stage != "reduce" and first.datasets:
        labels[LABEL_DATASET] = first.dataset.name
    if first.arm:
        labels[LABEL_ARM] = first.arm
    seeds = [u.seed for u in units if u.seed is not None]
    if seeds:
        labels[LABEL_SEED] = str(seeds[0]) if len(seeds) == 1 else f"{min(seeds)}-{max(seeds)}"
    if first.stage == "train":
        labels[LABEL_K] = k_label(first.k)
    return labels


# --- the manifest -----------------------------------------------------------------------------


def cpu_threads(quantity: str) -> int:
    """Whole CPUs in a quantity (``2`` -> 2, ``500m`` -> 1, ``2.5`` -> 2), at least 1.

    torch sizes its thread pool from the node's cores, not the pod's CPU limit; on a big node
    that oversubscribes the limit and the pod is throttled, so the Job sets OMP_NUM_THREADS.
    """
    if quantity.endswith("m"):
        return max(1, int(quantity[:-1]) // 1000)
    try:
        return max(1, math.floor(float(quantity)))
    except ValueError:
        return 1


def _env(stage: str, gpus: int, storage: StorageSpec, jobs: JobsSpec,
         owner: Owner) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        # The root filesystem is read-only: caches go to the /tmp emptyDir.
        {"name": "HOME", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
        {"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"},
        {"name": "OMP_NUM_THREADS", "value": str(cpu_threads(jobs.cpu))},
        {"name": "SCARCE_DEVICE", "value": "cuda" if gpus > 0 else "cpu"},
    ]
    if storage.endpoint:
        env.append({"name": "SCARCE_S3_ENDPOINT", "value": storage.endpoint})
    credentials = storage.credentials
    if credentials.secret_name:
        # Only references to the Secret: its values never appear in a Job, a unit or a log.
        for name, key in (("SCARCE_S3_ACCESS_KEY", credentials.access_key_key),
                          ("SCARCE_S3_SECRET_KEY", credentials.secret_key_key)):
            env.append({"name": name, "valueFrom": {"secretKeyRef": {
                "name": credentials.secret_name, "key": key}}})
    if stage == "reduce":
        # The reducer patches the benchmark's status with the report summary.
        env += [{"name": "SCARCE_BENCHMARK_NAME", "value": owner.name},
                {"name": "SCARCE_BENCHMARK_NAMESPACE", "value": owner.namespace}]
    return env


def _resources(jobs: JobsSpec, gpus: int, gpu_resource: str) -> dict[str, Any]:
    # Requests equal to limits: the pod is in the Guaranteed QoS class, so a training run of
    # hours is among the last to be evicted under node pressure.
    amounts: dict[str, Any] = {"cpu": jobs.cpu, "memory": jobs.memory}
    if gpus > 0:
        amounts[gpu_resource] = str(gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _pod_failure_policy() -> dict[str, Any]:
    return {"rules": [
        # A usage or permanent error (bad config or data, split digest mismatch) fails the
        # same way on every retry: fail the Job at once instead of burning the backoff.
        {"action": "FailJob", "onExitCodes": {
            "containerName": CONTAINER, "operator": "In",
            "values": sorted([EXIT_USAGE, EXIT_PERMANENT])}},
        # A pod evicted by a disruption (drain, preemption) did nothing wrong: retry it
        # without counting it against backoffLimit.
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]}


def build_job(
    units: Sequence[WorkUnit],
    *,
    owner: Owner,
    storage: StorageSpec,
    jobs: JobsSpec,
    queue_name: str | None,
    settings: JobSettings,
) -> dict[str, Any]:
    """The batch/v1 Job that runs `units` (one unit, or a pack of train units of one dataset,
    arm and k) for the benchmark `owner`.

    ``ttlSecondsAfterFinished`` is left out on purpose: the operator sets it with
    `ttl_patch` only once the Job's outcome is recorded in the benchmark's status, so a
    finished Job is never deleted before the operator has seen how it ended.
    """
    if not units:
        raise ValueError("a Job needs at least one unit")
    stage = units[0].stage
    if any(u.stage != stage for u in units):
        raise ValueError(f"a Job runs units of one stage, got {sorted({u.stage for u in units})}")
    gpus = jobs.gpu if stage in GPU_STAGES else 0
    payload = units[0].to_json_dict() if len(units) == 1 else [u.to_json_dict() for u in units]
    command = ["scarce-trainer", _COMMAND_OF_STAGE.get(stage, "train"), "--unit-json",
               json.dumps(payload, separators=(",", ":"))]
    defaults = settings.defaults
    labels = job_labels(owner.name, units)
    queue = queue_name or defaults.queue_name
    job_labels_ = {**labels, KUEUE_QUEUE_LABEL: queue} if queue else dict(labels)
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # podFailurePolicy requires it; the Job controller retries
        "serviceAccountName": settings.reducer_service_account if stage == "reduce"
        else (jobs.service_account_name or settings.trainer_service_account),
        # Only the reducer talks to the Kubernetes API.
        "automountServiceAccountToken": stage == "reduce",
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": CONTAINER,
            "image": jobs.image or settings.trainer_image,
            "imagePullPolicy": "IfNotPresent",
            "command": command,
            "env": _env(stage, gpus, storage, jobs, owner),
            "resources": _resources(jobs, gpus, settings.gpu_resource),
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "runAsNonRoot": True,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                             {"name": "dshm", "mountPath": "/dev/shm"}],
        }],
        "volumes": [
            {"name": "tmp", "emptyDir": {}},
            # The container runtime's 64 MiB /dev/shm is too small for torch's data loader.
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ],
    }
    node_selector = jobs.node_selector if jobs.node_selector is not None \
        else defaults.node_selector
    tolerations = [t.to_k8s() for t in jobs.tolerations] if jobs.tolerations is not None \
        else defaults.tolerations
    pull_secrets = jobs.image_pull_secrets if jobs.image_pull_secrets is not None \
        else defaults.image_pull_secrets
    priority = jobs.priority_class_name or defaults.priority_class_name
    if node_selector:
        pod["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod["tolerations"] = [dict(t) for t in tolerations]
    if pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in pull_secrets]
    if priority:
        pod["priorityClassName"] = priority
    spec: dict[str, Any] = {
        "backoffLimit": jobs.backoff_limit,
        "podFailurePolicy": _pod_failure_policy(),
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
    }
    if jobs.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = jobs.active_deadline_seconds
    if queue:
        spec["suspend"] = True  # Kueue admits the Job by unsuspending it
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": pack_name(owner.name, units),
            "namespace": owner.namespace,
            "labels": job_labels_,
            "annotations": {ANNOTATION_UNITS: ",".join(u.key for u in units)},
            "ownerReferences": [owner.reference()],
        },
        "spec": spec,
    }


# --- what the apiserver refuses ---------------------------------------------------------------

# The spec model and the CRD take any text in jobs.nodeSelector and jobs.tolerations; the
# apiserver refuses a Job whose pods break its rules (k8s.io/apimachinery IsQualifiedName,
# IsValidLabelValue; core ValidateTolerations). Such a Job would fail every reconcile, after
# startedAt has frozen the spec, so the operator refuses the spec instead.
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_KEY = ("must be a label key: 1-63 letters, digits, '-', '_' or '.', starting and ending "
              "with a letter or digit, after an optional DNS subdomain and '/'")
_LABEL_VALUE = ("must be a label value: at most 63 letters, digits, '-', '_' or '.', starting "
                "and ending with a letter or digit")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_label_key(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    return len(name) <= 63 and bool(_LABEL_NAME.fullmatch(name)) and (
        not slash or (len(prefix) <= 253 and bool(_DNS_SUBDOMAIN.fullmatch(prefix))))


def _is_label_value(value: str) -> bool:
    return not value or (len(value) <= 63 and bool(_LABEL_NAME.fullmatch(value)))


def pod_problems(jobs: JobsSpec, where: str = "spec.jobs") -> list[str]:
    """What the apiserver would refuse in the pods built from `jobs`, as ``path: problem, got
    value`` lines; empty when it takes them."""
    problems = []
    for key, value in (jobs.node_selector or {}).items():
        if not _is_label_key(key):
            problems.append(f"{where}.nodeSelector: {_LABEL_KEY}, got key {_shown(key)}")
        if not _is_label_value(value):
            problems.append(f"{where}.nodeSelector.{key}: {_LABEL_VALUE}, got {_shown(value)}")
    for i, toleration in enumerate(jobs.tolerations or []):
        path = f"{where}.tolerations[{i}]"
        key, value = toleration.key or "", toleration.value or ""
        operator = toleration.operator or "Equal"
        if key and not _is_label_key(key):
            problems.append(f"{path}.key: {_LABEL_KEY}, got {_shown(key)}")
        if not key and operator != "Exists":
            problems.append(f"{path}.operator: must be Exists when key is empty (it tolerates "
                            f"every taint), got {toleration.operator or 'none (Equal)'}")
        if operator == "Exists" and value:
            problems.append(f"{path}.value: must be empty with operator Exists, got "
                            f"{_shown(value)}")
        if operator == "Equal" and not _is_label_value(value):
            problems.append(f"{path}.value: {_LABEL_VALUE}, got {_shown(value)}")
        if toleration.toleration_seconds is not None and toleration.effect != "NoExecute":
            problems.append(f"{path}.tolerationSeconds: needs effect NoExecute, got effect "
                            f"{toleration.effect}")
    if jobs.image and jobs.image != jobs.image.strip():
        problems.append(f"{where}.image: must not begin or end with whitespace, got "
                        f"{_shown(jobs.image)}")
    return problems


def ttl_patch(seconds: int) -> dict[str, Any]:
    """The patch that lets the TTL controller delete a finished Job (its outcome recorded)."""
    return {"spec": {"ttlSecondsAfterFinished": seconds}}


# --- reading a Job's status -------------------------------------------------------------------


def _condition(job: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def job_state(job: Mapping[str, Any]) -> str:
    """``succeeded``, ``failed`` (terminal conditions of the Job controller) or ``running``
    (anything else, a Job still suspended by Kueue included)."""
    if _condition(job, "Complete"):
        return "succeeded"
    if _condition(job, "Failed"):
        return "failed"
    return "running"


def job_failure(job: Mapping[str, Any]) -> str:
    """Why a failed Job failed, from its Failed condition (``PodFailurePolicy: ...``)."""
    condition = _condition(job, "Failed") or {}
    reason = condition.get("reason") or "Failed"
    message = condition.get("message") or ""
    return f"{reason}: {message}" if message else reason


def _time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def job_duration(job: Mapping[str, Any]) -> float | None:
    """Seconds from the Job's start to its end (completion, or the Failed condition)."""
    status = job.get("status") or {}
    start = _time(status.get("startTime"))
    end = _time(status.get("completionTime")) or _time(
        (_condition(job, "Failed") or {}).get("lastTransitionTime"))
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def job_retries(job: Mapping[str, Any]) -> int:
    """Pods of the Job that failed (each one a retry, or the last attempt)."""
    return int((job.get("status") or {}).get("failed") or 0)
