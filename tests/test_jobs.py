"""Job manifests for work units (scarce.operator.jobs) and seed packing (plan.pack_units): pure
builders, checked field by field without a cluster.

What these tests cannot prove: that an apiserver accepts the manifests (admission, the
podFailurePolicy rules' validation) or that the Job controller acts on them; the kmock and
end-to-end tests carry the manifests through an API server.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from scarce.operator.jobs import (
    ANNOTATION_UNITS,
    KUEUE_QUEUE_LABEL,
    JobSettings,
    Owner,
    TrainerDefaults,
    build_job,
    cpu_threads,
    job_duration,
    job_failure,
    job_labels,
    job_name,
    job_retries,
    job_state,
    parse_trainer_defaults,
    ttl_patch,
)
from scarce.operator.plan import Plan, bind_digests, pack_units, plan_benchmark
from scarce.operator.spec import ScarceBenchmark, validate_document
from scarce.trainer.unit import WorkUnit

OWNER = Owner(name="bench", namespace="team-a", uid="1234-uid")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def benchmark(**spec: Any) -> ScarceBenchmark:
    """A valid cluster benchmark: one dataset, one vendor source, 3 seeds, few-shot k=2."""
    body: dict[str, Any] = {
        "storage": {"uri": "s3://scarce-data/runs", "endpoint": "minio.minio:9000",
                    "credentials": {"secretName": "minio-creds", "accessKeyKey": "user",
                                    "secretKeyKey": "password"}},
        "datasets": [{"name": "tiles", "format": "imagefolder", "source": "s3://scarce-data/tiles",
                      "hardestClass": "pit"}],
        "synthetic": [{"name": "vendor", "kind": "external", "uri": "s3://scarce-data/drop",
                       "perClass": 10}],
        "seeds": 3,
        "fewShot": [2],
        **spec,
    }
    return validate_document({"apiVersion": "scarce.dev/v1alpha1", "kind": "ScarceBenchmark",
                              "metadata": {"name": "bench"}, "spec": body})


def plan_of(bench: ScarceBenchmark) -> Plan:
    plan = plan_benchmark(bench)
    return plan


def train_units(bench: ScarceBenchmark) -> list[WorkUnit]:
    return bind_digests(plan_of(bench).train, {"tiles": "d" * 64})


def job_for(units: list[WorkUnit], bench: ScarceBenchmark,
            settings: JobSettings | None = None) -> dict[str, Any]:
    spec = bench.spec
    return build_job(units, owner=OWNER, storage=spec.storage, jobs=spec.jobs,
                     queue_name=spec.queue_name, settings=settings or JobSettings())


def container(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]["containers"][0]


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(job)["env"]}


# --- names and labels -------------------------------------------------------------------------


def test_job_names_are_deterministic_dns_labels_and_distinct_per_unit():
    bench = benchmark()
    plan = plan_of(bench)
    units = [u for _, stage in plan.stages for u in stage]
    names = [job_for([u], bench)["metadata"]["name"] for u in bind_digests(
        [u for u in units if u.stage not in ("split", "reduce")], {"tiles": "d" * 64})]
    names += [job_for([plan.split[0]], bench)["metadata"]["name"],
              job_for([plan.reduce], bench)["metadata"]["name"]]
    assert len(set(names)) == len(names) == len(units)
    assert all(DNS_LABEL.match(n) for n in names), names
    # The split digest is not part of the name: the same unit keeps its Job before and after.
    unbound = job_name("bench", "train", [plan.train[0].key])
    assert unbound == names[0]
    assert names[0].startswith("bench-train-")


def test_a_40_character_benchmark_name_still_gives_a_63_character_job_name():
    name = job_name("a" * 39 + "b", "fidelity", ["fidelity/tiles"])
    assert len(name) <= 63 and DNS_LABEL.match(name)
    assert name.startswith("a" * 39 + "b-fidelity-")


def test_labels_name_benchmark_stage_dataset_arm_seed_and_k():
    bench = benchmark()
    units = train_units(bench)
    few_shot = next(u for u in units if u.k == 2 and u.arm == "vendor" and u.seed == 1)
    assert job_labels("bench", [few_shot]) == {
        "scarce.dev/benchmark": "bench", "scarce.dev/stage": "train",
        "scarce.dev/dataset": "tiles", "scarce.dev/arm": "vendor", "scarce.dev/seed": "1",
        "scarce.dev/k": "k2", "app.kubernetes.io/managed-by": "scarce-operator",
    }
    plan = plan_of(bench)
    split = job_labels("bench", plan.split)
    assert split["scarce.dev/stage"] == "split" and split["scarce.dev/dataset"] == "tiles"
    assert not {"scarce.dev/arm", "scarce.dev/seed", "scarce.dev/k"} & set(split)
    reduce = job_labels("bench", [plan.reduce])
    assert reduce["scarce.dev/stage"] == "reduce" and "scarce.dev/dataset" not in reduce


# --- the manifest -----------------------------------------------------------------------------


def test_a_train_job_runs_the_unit_with_the_trainer_command_and_owner():
    bench = benchmark()
    unit = train_units(bench)[0]
    job = job_for([unit], bench, JobSettings(trainer_image="registry.local/scarce:1.2"))
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    meta = job["metadata"]
    assert meta["namespace"] == "team-a"
    assert meta["ownerReferences"] == [{
        "apiVersion": "scarce.dev/v1alpha1", "kind": "ScarceBenchmark", "name": "bench",
        "uid": "1234-uid", "controller": True, "blockOwnerDeletion": True}]
    assert meta["annotations"][ANNOTATION_UNITS] == unit.key
    command = container(job)["command"]
    assert command[:3] == ["scarce-trainer", "train", "--unit-json"]
    assert WorkUnit.model_validate(json.loads(command[3])) == unit
    assert container(job)["image"] == "registry.local/scarce:1.2"
    assert job["spec"]["template"]["metadata"]["labels"]["scarce.dev/seed"] == "0"


@pytest.mark.parametrize(("stage", "command"), [("split", "split"), ("reduce", "reduce"),
                                                 ("fidelity", "train")])
def test_each_stage_runs_its_trainer_command(stage, command):
    bench = benchmark()
    plan = plan_of(bench)
    unit = {"split": plan.split[0], "reduce": plan.reduce,
            "fidelity": bind_digests(plan.fidelity, {"tiles": "d" * 64})[0]}[stage]
    assert container(job_for([unit], bench))["command"][1] == command


def test_store_credentials_only_through_secret_key_refs():
    bench = benchmark()
    job = job_for(train_units(bench)[:1], bench)
    env = env_of(job)
    assert env["SCARCE_S3_ACCESS_KEY"] == {"secretKeyRef": {"name": "minio-creds", "key": "user"}}
    assert env["SCARCE_S3_SECRET_KEY"] == {"secretKeyRef": {"name": "minio-creds",
                                                            "key": "password"}}
    assert env["SCARCE_S3_ENDPOINT"] == "minio.minio:9000"
    literal = [e for e in container(job)["env"] if "S3_ACCESS" in e["name"] or "SECRET" in
               e["name"]]
    assert all("value" not in e for e in literal)


def test_no_credentials_env_without_a_secret():
    bench = benchmark(storage={"uri": "s3://scarce-data/runs"})
    env = env_of(job_for(train_units(bench)[:1], bench))
    assert "SCARCE_S3_ACCESS_KEY" not in env and "SCARCE_S3_ENDPOINT" not in env


def test_pod_failure_policy_fails_at_once_on_exit_codes_2_and_3_and_ignores_disruptions():
    bench = benchmark()
    job = job_for(train_units(bench)[:1], bench)
    spec = job["spec"]
    assert spec["backoffLimit"] == 2
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onExitCodes": {
        "containerName": "trainer", "operator": "In", "values": [2, 3]}}
    assert rules[1] == {"action": "Ignore",
                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}


def test_ttl_is_never_set_at_creation_only_by_the_later_patch():
    bench = benchmark()
    job = job_for(train_units(bench)[:1], bench)
    assert "ttlSecondsAfterFinished" not in job["spec"]
    assert ttl_patch(600) == {"spec": {"ttlSecondsAfterFinished": 600}}


def test_pods_run_hardened_with_a_writable_tmp():
    bench = benchmark()
    job = job_for(train_units(bench)[:1], bench)
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    ctx = container(job)["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in container(job)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/tmp"]]["emptyDir"] == {}
    assert env_of(job)["HOME"] == "/tmp"
    assert pod["automountServiceAccountToken"] is False


def test_gpu_requests_only_on_training_stages_with_cuda_device():
    bench = benchmark(jobs={"gpu": 2, "cpu": "4", "memory": "16Gi"})
    plan = plan_of(bench)
    settings = JobSettings(gpu_resource="amd.com/gpu")
    train = job_for(train_units(bench)[:1], bench, settings)
    resources = container(train)["resources"]
    assert resources["requests"] == {"cpu": "4", "memory": "16Gi", "amd.com/gpu": "2"}
    assert resources["limits"] == resources["requests"]
    assert env_of(train)["SCARCE_DEVICE"] == "cuda"
    assert env_of(train)["OMP_NUM_THREADS"] == "4"
    for unit in (plan.split[0], plan.reduce):
        job = job_for([unit], bench, settings)
        assert "amd.com/gpu" not in container(job)["resources"]["limits"]
        assert env_of(job)["SCARCE_DEVICE"] == "cpu"


def test_scheduling_fields_and_limits_come_from_the_spec():
    bench = benchmark(jobs={
        "nodeSelector": {"gpu": "a100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "batch-low", "imagePullSecrets": ["regcred"],
        "serviceAccountName": "team-trainer", "backoffLimit": 5, "activeDeadlineSeconds": 7200,
        "image": "mirror.local/scarce:2"})
    job = job_for(train_units(bench)[:1], bench)
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                   "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "batch-low"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["serviceAccountName"] == "team-trainer"
    assert job["spec"]["backoffLimit"] == 5 and job["spec"]["activeDeadlineSeconds"] == 7200
    assert container(job)["image"] == "mirror.local/scarce:2"


def test_the_reducer_runs_as_the_reducer_account_and_knows_its_benchmark():
    bench = benchmark(jobs={"serviceAccountName": "team-trainer"})
    job = job_for([plan_of(bench).reduce], bench)
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "scarce-reducer"
    assert pod["automountServiceAccountToken"] is True
    env = env_of(job)
    assert env["SCARCE_BENCHMARK_NAME"] == "bench"
    assert env["SCARCE_BENCHMARK_NAMESPACE"] == "team-a"
    trainer = job_for(train_units(bench)[:1], bench)
    assert "SCARCE_BENCHMARK_NAME" not in env_of(trainer)


def test_a_queue_name_creates_suspended_jobs_labelled_for_kueue():
    bench = benchmark(queueName="gpu-queue")
    job = job_for(train_units(bench)[:1], bench)
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "gpu-queue"
    plain = job_for(train_units(benchmark())[:1], benchmark())
    assert "suspend" not in plain["spec"] and KUEUE_QUEUE_LABEL not in plain["metadata"]["labels"]


def test_operator_defaults_apply_unless_the_spec_sets_the_field():
    defaults = parse_trainer_defaults(json.dumps({
        "nodeSelector": {"pool": "gpu"}, "priorityClassName": "default-batch",
        "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "imagePullSecrets": [{"name": "cluster-pull"}], "queueName": "shared"}))
    settings = JobSettings(defaults=defaults)
    job = job_for(train_units(benchmark())[:1], benchmark(), settings)
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert pod["priorityClassName"] == "default-batch"
    assert pod["imagePullSecrets"] == [{"name": "cluster-pull"}]
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "shared"
    bench = benchmark(queueName="mine", jobs={"nodeSelector": {"pool": "a100"}, "tolerations": []})
    job = job_for(train_units(bench)[:1], bench, settings)
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "a100"}
    assert "tolerations" not in pod  # an explicit empty list replaces the default
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "mine"


def test_settings_from_env():
    settings = JobSettings.from_env({
        "SCARCE_TRAINER_IMAGE": "img:1", "SCARCE_GPU_RESOURCE": "nvidia.com/mig-1g.10gb",
        "SCARCE_TRAINER_SERVICE_ACCOUNT": "t", "SCARCE_REDUCER_SERVICE_ACCOUNT": "r",
        "SCARCE_TRAINER_DEFAULTS": '{"queueName": "q"}'})
    assert settings == JobSettings(trainer_image="img:1", gpu_resource="nvidia.com/mig-1g.10gb",
                                   trainer_service_account="t", reducer_service_account="r",
                                   defaults=TrainerDefaults(queue_name="q"))
    assert JobSettings.from_env({}).trainer_image.startswith("scarce-trainer:")
    # Pull secrets as names or as the chart's LocalObjectReferences.
    assert parse_trainer_defaults('{"imagePullSecrets": ["a", {"name": "b"}]}') \
        .image_pull_secrets == ["a", "b"]


@pytest.mark.parametrize(("text", "message"), [
    ("[1]", "SCARCE_TRAINER_DEFAULTS: must be a JSON object, got '[1]'"),
    ("{bad", "SCARCE_TRAINER_DEFAULTS: not valid JSON"),
    ('{"nodeSelectors": {}}', "SCARCE_TRAINER_DEFAULTS.nodeSelectors: unknown key; allowed: "
     "imagePullSecrets, nodeSelector, priorityClassName, queueName, tolerations"),
    ('{"nodeSelector": {"a": 1}}', "SCARCE_TRAINER_DEFAULTS.nodeSelector: must map label names"),
    ('{"tolerations": [{"effect": "Sometimes"}]}', "SCARCE_TRAINER_DEFAULTS.tolerations: "),
    ('{"imagePullSecrets": "x"}', "SCARCE_TRAINER_DEFAULTS.imagePullSecrets: must be a list"),
])
def test_bad_operator_defaults_name_the_key(text, message):
    with pytest.raises(ValueError) as caught:
        parse_trainer_defaults(text)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(("quantity", "threads"), [("2", 2), ("500m", 1), ("2500m", 2),
                                                   ("2.5", 2), ("16", 16)])
def test_cpu_threads_follow_the_cpu_limit(quantity, threads):
    assert cpu_threads(quantity) == threads


# --- seed packing -----------------------------------------------------------------------------


def test_pack_units_groups_seeds_of_one_dataset_arm_and_k_in_seed_order():
    bench = benchmark(seeds=5)
    units = train_units(bench)
    packs = pack_units(list(reversed(units)), 2)
    for pack in packs:
        assert len({(u.dataset.name, u.arm, u.k) for u in pack}) == 1
        assert [u.seed for u in pack] == sorted(u.seed for u in pack)
        assert 1 <= len(pack) <= 2
    assert sorted(u.key for p in packs for u in p) == sorted(u.key for u in units)
    groups = {(u.arm, u.k) for u in units}  # 3 arms at kfull + real and vendor at k=2
    assert len(packs) == len(groups) * 3  # 5 seeds -> [0, 1], [2, 3], [4]
    real_full = [p for p in packs if p[0].arm == "real" and p[0].k is None]
    assert sorted([u.seed for u in p] for p in real_full) == [[0, 1], [2, 3], [4]]


def test_pack_units_keeps_other_stages_alone_and_the_order_stable():
    plan = plan_of(benchmark())
    units = [u for _, stage in plan.stages for u in stage]
    packs = pack_units(units, 3)
    assert packs == pack_units(units, 3)
    assert packs[0] == plan.split and packs[-1] == [plan.reduce]
    assert all(len(p) == 1 for p in packs if p[0].stage != "train")
    assert [p for p in pack_units(units, 1)] == [[u] for u in units]
    with pytest.raises(ValueError, match="seeds_per_job must be at least 1, got 0"):
        pack_units(units, 0)


def test_a_packed_job_runs_a_json_list_of_units():
    bench = benchmark(seedsPerJob=3)
    pack = pack_units(train_units(bench), 3)[0]
    job = job_for(pack, bench)
    payload = json.loads(container(job)["command"][3])
    assert isinstance(payload, list)
    assert [WorkUnit.model_validate(u) for u in payload] == pack
    assert job["metadata"]["labels"]["scarce.dev/seed"] == "0-2"
    assert job["metadata"]["annotations"][ANNOTATION_UNITS] == ",".join(u.key for u in pack)
    with pytest.raises(ValueError, match="a Job runs units of one stage"):
        job_for([pack[0], plan_of(bench).reduce], bench)


# --- reading a Job's status -------------------------------------------------------------------


def finished(kind: str, **status: Any) -> dict[str, Any]:
    return {"status": {"conditions": [{"type": kind, "status": "True", **status.pop("cond", {})}],
                       **status}}


def test_job_state_duration_retries_and_failure():
    assert job_state({}) == "running"
    assert job_state({"status": {"conditions": [{"type": "Suspended", "status": "True"}]}}) \
        == "running"
    done = finished("Complete", startTime="2026-01-01T00:00:00Z",
                    completionTime="2026-01-01T00:02:30Z", failed=1)
    assert job_state(done) == "succeeded"
    assert job_duration(done) == 150.0 and job_retries(done) == 1
    failed = finished("Failed", startTime="2026-01-01T00:00:00Z", failed=3, cond={
        "reason": "PodFailurePolicy", "message": "Container trainer exited with 3",
        "lastTransitionTime": "2026-01-01T00:00:10Z"})
    assert job_state(failed) == "failed"
    assert job_failure(failed) == "PodFailurePolicy: Container trainer exited with 3"
    assert job_duration(failed) == 10.0 and job_retries(failed) == 3
    assert job_duration({}) is None
