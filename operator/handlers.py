"""The kopf operator: ``kopf run -m scarce.operator.handlers`` (flags in docs/kubernetes.md).

A thin shell around `scarce.operator.reconcile`: read the benchmark, its Jobs and its result
objects; decide; then write, in this order, the status (``startedAt`` and the outcome ledger
before anything depends on them), the new Jobs, the TTL of recorded Jobs, and the Events.

Reconciles are triggered by the benchmark's create/update/resume, by every event of a Job
labelled ``scarce.dev/benchmark``, and every RECONCILE_INTERVAL seconds by one resync task.
Triggers for one benchmark are coalesced: while a reconcile runs, further triggers make it run
once more, never twice at once (two concurrent reconciles could together exceed
``spec.parallelism``). Nothing else is kept in memory; a restarted operator derives everything
again from the cluster and the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from scarce.operator import metrics
from scarce.operator.crd import GROUP, PLURAL, VERSION
from scarce.operator.jobs import LABEL_BENCHMARK, JobSettings, Owner, pod_problems, ttl_patch
from scarce.operator.plan import Plan, plan_benchmark
from scarce.operator.reconcile import Decision, invalid_spec, reconcile
from scarce.operator.spec import API_VERSION, KIND, SpecError, cluster_problems, validate_document
from scarce.trainer.store import IntegrityError, ObjectNotFound, Store, open_store
from scarce.trainer.unit import WorkUnit

#: Seconds between resync reconciles of every benchmark (a safety net: Job and benchmark
#: events trigger reconciles as they happen). One task rather than a kopf timer per
#: benchmark: kopf leaves timers to be cancelled after a 5 s grace at shutdown.
RECONCILE_INTERVAL = float(os.environ.get("SCARCE_RECONCILE_INTERVAL", "30"))


@dataclass
class _Trigger:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    again: bool = False


@dataclass
class Runtime:
    """What one operator run holds (in kopf's memo, not in module globals, so a second run in
    the same process, as in tests, starts clean)."""

    api: client.ApiClient
    settings: JobSettings
    instance: str
    triggers: dict[tuple[str, str], _Trigger] = field(default_factory=dict)
    #: Benchmarks seen in the watch stream (a cache of what exists, for the resync only).
    known: set[tuple[str, str]] = field(default_factory=set)
    resync: asyncio.Task[None] | None = None


def _api_client() -> client.ApiClient:
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"),
                                client_configuration=configuration)
    return client.ApiClient(configuration)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger,
                  **_: Any) -> None:
    """Configure kopf, read the operator's settings, start the metrics server."""
    # kopf's bookkeeping goes to annotations, keeping the status for SCARCE's own fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="scarce.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="scarce.dev", key="last-handled-configuration")
    settings.posting.level = logging.WARNING  # our own Events say what happens
    memo.runtime = Runtime(api=_api_client(), settings=JobSettings.from_env(),
                           instance=os.environ.get("POD_NAME") or socket.gethostname())
    memo.runtime.resync = asyncio.create_task(resync(memo.runtime, logger))
    port = await asyncio.to_thread(metrics.serve, metrics.port_from_env())
    logger.info("metrics on :%d/metrics; trainer image %s", port,
                memo.runtime.settings.trainer_image)


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def benchmark_changed(namespace: str, name: str, memo: kopf.Memo,
                            logger: logging.Logger, **_: Any) -> None:
    """A benchmark was created, changed, or found at start-up."""
    await trigger(memo.runtime, namespace, name, logger)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_BENCHMARK: kopf.PRESENT})
async def job_event(body: kopf.Body, namespace: str, memo: kopf.Memo,
                    logger: logging.Logger, **_: Any) -> None:
    """A benchmark's Job started, changed or finished: reconcile its benchmark."""
    owner = body.get("metadata", {}).get("labels", {}).get(LABEL_BENCHMARK)
    if owner:
        await trigger(memo.runtime, namespace, owner, logger)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def benchmark_seen(event: kopf.RawEvent, namespace: str, name: str, memo: kopf.Memo,
                         **_: Any) -> None:
    """Track which benchmarks exist, for the periodic resync (no reconcile here: our own
    status patches arrive as events too)."""
    if event.get("type") == "DELETED":
        memo.runtime.known.discard((namespace, name))
        metrics.BENCHMARKS.forget(namespace, name)  # its Jobs go with it, by ownerReferences
    else:
        memo.runtime.known.add((namespace, name))


async def resync(runtime: Runtime, logger: logging.Logger) -> None:
    """Reconcile every known benchmark every RECONCILE_INTERVAL seconds: a safety net that
    picks up store results and missed events (Job and benchmark events trigger reconciles as
    they happen). One task for all benchmarks, cancelled at shutdown."""
    while True:
        await asyncio.sleep(RECONCILE_INTERVAL)
        for namespace, name in sorted(runtime.known):
            try:
                await trigger(runtime, namespace, name, logger)
            except kopf.TemporaryError:
                continue  # logged and counted by trigger; the next round retries


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the resync task."""
    task = memo.runtime.resync
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def trigger(runtime: Runtime, namespace: str, name: str,
                  logger: logging.Logger) -> None:
    """Reconcile a benchmark now, or make the running reconcile run once more."""
    state = runtime.triggers.setdefault((namespace, name), _Trigger())
    if state.lock.locked():
        state.again = True
        return
    async with state.lock:
        while True:
            state.again = False
            try:
                await reconcile_benchmark(runtime, namespace, name, logger)
            except Exception:
                metrics.RECONCILE_ERRORS.inc()
                logger.exception("reconcile of %s/%s failed; it is retried", namespace, name)
                if not state.again:
                    # The resync retries; raising makes kopf retry a change handler too.
                    raise kopf.TemporaryError("reconcile failed", delay=10) from None
            if not state.again:
                return


# --- one reconcile ----------------------------------------------------------------------------


def _json(response: Any) -> Any:
    return json.loads(response.data)


def _get_benchmark(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _json(client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _preload_content=False))
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def _list_jobs(api: client.ApiClient, owner: Owner) -> dict[str, dict[str, Any]]:
    """The benchmark's Jobs by name: labelled with its name and, when both carry a uid, owned
    by this very object (a Job left by a deleted namesake is not ours)."""
    items = _json(client.BatchV1Api(api).list_namespaced_job(
        owner.namespace, label_selector=f"{LABEL_BENCHMARK}={owner.name}",
        _preload_content=False)).get("items", [])
    jobs = {}
    for job in items:
        meta = job.get("metadata", {})
        if (meta.get("labels") or {}).get(LABEL_BENCHMARK) != owner.name:
            continue  # selectors are the server's job; this keeps the rule local too
        uids = {r.get("uid") for r in meta.get("ownerReferences") or []}
        if owner.uid and uids and owner.uid not in uids:
            continue
        jobs[meta["name"]] = job
    return jobs


class StoreReader:
    """Reads a benchmark's result objects, with the operator's own store credentials
    (SCARCE_S3_* in its environment); opened on the first read."""

    def __init__(self, plan: Plan) -> None:
        self._plan = plan
        self._store: Store | None = None

    def _open(self) -> Store:
        if self._store is None:
            storage = self._plan.reduce.storage
            self._store = open_store(storage.uri, endpoint=storage.endpoint,
                                     secure=storage.secure)
        return self._store

    def _get(self, key: str) -> Any:
        try:
            return self._open().get_json(key)
        except (ObjectNotFound, IntegrityError):
            return None

    def split_result(self, dataset: str) -> Mapping[str, Any] | None:
        """The split result object of a dataset."""
        unit = next(u for u in self._plan.split if u.dataset.name == dataset)
        return self._get(unit.result_key)

    def has_result(self, unit: WorkUnit) -> bool:
        """Whether the unit's valid result exists (written by this exact unit config)."""
        result = self._get(unit.result_key)
        return isinstance(result, dict) and result.get("configHash") == unit.config_hash()

    def report(self) -> Mapping[str, Any] | None:
        """The reducer's report.json."""
        return self._get(self._plan.reduce.result_key)


def _decide(body: Mapping[str, Any], owner: Owner, runtime: Runtime) -> Decision:
    status = body.get("status") or {}
    generation = body.get("metadata", {}).get("generation")
    document = {"apiVersion": API_VERSION, "kind": KIND, "spec": body.get("spec"),
                "metadata": {"name": owner.name, "namespace": owner.namespace}}
    try:
        benchmark = validate_document(document)
        problems = cluster_problems(benchmark) + pod_problems(benchmark.spec.jobs)
        if problems:
            raise SpecError(problems)
    except SpecError as error:
        return invalid_spec(status, error.messages, now=dt.datetime.now(dt.UTC),
                            generation=generation)
    plan = plan_benchmark(benchmark)
    jobs = _list_jobs(runtime.api, owner)
    return reconcile(benchmark, owner=owner, status=status, generation=generation, jobs=jobs,
                     reader=StoreReader(plan), settings=runtime.settings, plan=plan,
                     now=dt.datetime.now(dt.UTC))


def _apply(decision: Decision, owner: Owner, runtime: Runtime, logger: logging.Logger) -> None:
    api = runtime.api
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, owner.namespace, PLURAL, owner.name, {"status": decision.status},
        _preload_content=False)
    batch = client.BatchV1Api(api)
    for manifest in decision.create:
        try:
            batch.create_namespaced_job(owner.namespace, manifest, _preload_content=False)
        except ApiException as error:
            if error.status != 409:  # 409: it exists (an earlier reconcile made it): fine
                raise
    for name in decision.ttl:
        try:
            batch.patch_namespaced_job(name, owner.namespace, ttl_patch(decision.ttl_seconds),
                                       _preload_content=False)
        except ApiException as error:
            if error.status != 404:  # 404: already gone
                raise
    core = client.CoreV1Api(api)
    now = dt.datetime.now(dt.UTC)
    for event in decision.events:
        name = f"{owner.name}.{uuid.uuid4().hex[:16]}"
        try:
            core.create_namespaced_event(
                owner.namespace, event.manifest(owner, name=name, now=now,
                                                instance=runtime.instance),
                _preload_content=False)
        except ApiException as error:  # Events are best effort; the status says it all
            logger.warning("could not post event %s: %s", event.reason, error.reason)


async def reconcile_benchmark(runtime: Runtime, namespace: str, name: str,
                              logger: logging.Logger) -> Decision | None:
    """Read, decide, apply; None when the benchmark no longer exists or is being deleted."""
    body = await asyncio.to_thread(_get_benchmark, runtime.api, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        # Gone or going: its Jobs are deleted with it (ownerReferences); start nothing new.
        metrics.BENCHMARKS.forget(namespace, name)
        return None
    owner = Owner(name=name, namespace=namespace, uid=body["metadata"].get("uid", ""))
    decision = await asyncio.to_thread(_decide, body, owner, runtime)
    await asyncio.to_thread(_apply, decision, owner, runtime, logger)
    for stage, job in decision.finished:
        metrics.record_finished(stage, job)
    merged = {**(body.get("status") or {}), **decision.status}
    metrics.BENCHMARKS.update(namespace, name, metrics.Snapshot(
        phase=decision.phase, counts=decision.counts, summary=merged.get("summary")))
    for event in decision.events:
        log = logger.warning if event.type == "Warning" else logger.info
        log("%s/%s %s: %s", namespace, name, event.reason, event.message)
    return decision
