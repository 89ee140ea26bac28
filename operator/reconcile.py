"""One reconcile of a ScarceBenchmark, decided from what exists: from its Jobs, its status and the
result objects in the store to the Jobs to create, the status to write and the Events to post.

Pure apart from reads through a `ResultReader` (the handlers pass one backed by the store, the
tests a dict): no Kubernetes API calls, no clock (``now`` is passed in), no memory between
calls. Everything is derived again each time, so an operator restarted at any point goes on
where it stopped and never creates a Job twice (names are deterministic).

Stages run in the local executor's order: split, pilot, train, fidelity, reduce; a stage
starts when no unit of the earlier ones is pending or running. A unit is

- ``running`` while its Job exists and has not finished (a Kueue-suspended Job included),
- ``succeeded``/``failed`` when its Job finished, or, once the Job is gone (deleted by
  ``ttlSecondsAfterFinished``), as recorded in the status ledger,
- ``failed`` without a Job when its dataset's split failed or its synthetic source was
  refused by the leakage check (as `scarce run` does),
- ``pending`` otherwise.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from scarce.operator.jobs import (
    JobSettings,
    Owner,
    build_job,
    job_failure,
    job_state,
    pack_name,
)
from scarce.operator.plan import Plan, pack_units
from scarce.operator.spec import ScarceBenchmark
from scarce.operator.status import (
    FAILED,
    FAILED_PHASE,
    PENDING,
    PHASE_OF_STAGE,
    PHASE_PENDING,
    RUNNING,
    SUCCEEDED,
    SUCCEEDED_PHASE,
    TERMINAL_PHASES,
    Counts,
    Event,
    Observed,
    TrainKey,
    condition,
    conditions,
    decode_ledger,
    encode_ledger,
    get_condition,
    listing,
    pairs_by_dataset,
    progress,
    timestamp,
    transition_events,
)
from scarce.trainer.cluster_status import report_uri, status_fields
from scarce.trainer.config import AUTO, PLACEBO_ARM
from scarce.trainer.unit import WorkUnit

STAGE_ORDER = ("split", "pilot", "train", "fidelity", "reduce")


class ResultReader(Protocol):
    """Reads result objects of one benchmark from its store."""

    def split_result(self, dataset: str) -> Mapping[str, Any] | None:
        """The split unit's result object (with ``splitDigest``); None when absent."""

    def has_result(self, unit: WorkUnit) -> bool:
        """Whether the unit's valid result object exists (same config hash)."""

    def report(self) -> Mapping[str, Any] | None:
        """The reducer's report.json; None when absent."""


@dataclass(frozen=True)
class Pack:
    """The units one Job runs (one unit, or seeds packed by `pack_units`), unbound: without
    split digests, which are not part of the Job's name."""

    name: str
    stage: str
    units: tuple[WorkUnit, ...]


@dataclass
class Decision:
    """What one reconcile decided."""

    #: Status fields the operator owns, to merge-patch (written before any Job is created).
    status: dict[str, Any]
    #: Job manifests to create, in plan order.
    create: list[dict[str, Any]] = field(default_factory=list)
    #: Finished Jobs whose outcome the status now records: give them ttlSecondsAfterFinished.
    ttl: list[str] = field(default_factory=list)
    #: The ttlSecondsAfterFinished those Jobs get (spec.jobs.ttlSecondsAfterFinished).
    ttl_seconds: int = 86_400
    events: list[Event] = field(default_factory=list)
    #: (stage, Job) of Jobs whose outcome is recorded for the first time (metrics).
    finished: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)

    @property
    def phase(self) -> str:
        """The phase written to the status."""
        return str(self.status["phase"])


def packs_of(plan: Plan, seeds_per_job: int) -> list[Pack]:
    """Every Job of a plan, in stage order."""
    packs = []
    for stage, units in plan.stages:
        for group in pack_units(units, seeds_per_job if stage == "train" else 1):
            packs.append(Pack(pack_name(plan.benchmark, group), stage, tuple(group)))
    return packs


def invalid_spec(status: Mapping[str, Any], messages: list[str], *, now: dt.datetime,
                 generation: int | None) -> Decision:
    """Phase Failed with SpecValid=False naming every field; an Event when the message is new.

    Nothing is retried and no Job is made: the benchmark waits for its spec to be fixed.
    """
    message = "; ".join(messages)
    previous = status.get("conditions") or []
    failed = [
        condition("SpecValid", False, "SpecInvalid", message, now=now, generation=generation,
                  previous=previous),
        condition("Complete", False, "SpecInvalid", "fix the spec; nothing was started",
                  now=now, generation=generation, previous=previous),
    ]
    before = get_condition(status, "SpecValid")
    events = []
    if not before or before.get("status") != "False" or before.get("message") != \
            failed[0]["message"]:
        events.append(Event("Warning", "SpecInvalid", message))
    new_status = {"phase": FAILED_PHASE, "conditions": failed, "message": message}
    if generation is not None:
        new_status["observedGeneration"] = generation
    return Decision(status=new_status, events=events)


# --- observing --------------------------------------------------------------------------------


@dataclass
class _World:
    """What one reconcile knows about the units."""

    states: dict[str, str]
    failures: dict[str, str] = field(default_factory=dict)
    finished: list[Pack] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)
    refused: dict[str, dict[str, str]] = field(default_factory=dict)


def _observe(packs: list[Pack], jobs: Mapping[str, Mapping[str, Any]],
             ledger: Mapping[str, str]) -> _World:
    world = _World(states={})
    for pack in packs:
        job = jobs.get(pack.name)
        recorded = all(u.key in ledger for u in pack.units)
        if job is None or (recorded and job_state(job) != RUNNING):
            for unit in pack.units:
                world.states[unit.key] = ledger.get(unit.key, PENDING)
            continue
        state = job_state(job)
        if state != RUNNING:
            world.finished.append(pack)
        if state == FAILED:
            for unit in pack.units:
                world.failures[unit.key] = f"Job {pack.name} {job_failure(job)}"
        for unit in pack.units:
            world.states[unit.key] = state
    return world


def _read_splits(plan: Plan, world: _World, status: Mapping[str, Any],
                 reader: ResultReader) -> None:
    """Split digests and refused sources: from the status once recorded there (frozen), else
    from the split result objects of the splits that succeeded."""
    recorded = status.get("splitDigests") or {}
    refused = status.get("refusedSources") or {}
    for unit in plan.split:
        name = unit.dataset.name
        if world.states[unit.key] != SUCCEEDED:
            continue
        if name in recorded:
            world.digests[name] = recorded[name]
            if name in refused:
                world.refused[name] = dict(refused[name])
            continue
        result = reader.split_result(name)
        if not result or not result.get("splitDigest"):
            world.states[unit.key] = FAILED
            world.failures[unit.key] = (f"the split Job succeeded but {unit.result_key} is "
                                        "missing from the store")
            continue
        world.digests[name] = str(result["splitDigest"])
        errors = {source: str(summary["error"])[:300]
                  for source, summary in (result.get("synthetic") or {}).items()
                  if isinstance(summary, Mapping) and "error" in summary}
        if errors:
            world.refused[name] = errors


def _bind(unit: WorkUnit, digests: Mapping[str, str]) -> WorkUnit:
    if unit.stage == "split":
        return unit
    if unit.stage == "reduce":
        # A dataset whose split failed has nothing to reduce; the others still report.
        return unit.model_copy(update={"datasets": [d for d in unit.datasets
                                                    if d.name in digests]})
    return unit.model_copy(update={"split_digest": digests[unit.dataset.name]})


def _resolve_failed_packs(world: _World, reader: ResultReader) -> None:
    """In a failed pack, the seeds whose result exists did succeed (the trainer ran them
    before the one that failed, or a retry skipped them)."""
    for pack in world.finished:
        if len(pack.units) < 2 or world.states[pack.units[0].key] != FAILED:
            continue
        for unit in pack.units:
            if unit.dataset.name in world.digests and reader.has_result(
                    _bind(unit, world.digests)):
                world.states[unit.key] = SUCCEEDED
                world.failures.pop(unit.key, None)


def _refusal(unit: WorkUnit, refused: Mapping[str, Mapping[str, str]]) -> str | None:
    by_source = refused.get(unit.dataset.name, {})
    if unit.stage != "train" or not by_source:
        return None
    if unit.arm == PLACEBO_ARM:
        error = by_source.get(unit.placebo_source or "")
        return error and f"the placebo arm copies the counts of a refused source: {error}"
    return by_source.get(unit.arm or "")


def _block(plan: Plan, world: _World) -> None:
    """Fail, without a Job, the units that cannot run: their split failed, their synthetic
    source was refused, or (reduce) no split succeeded at all."""
    if any(world.states[u.key] in (PENDING, RUNNING) for u in plan.split):
        return
    for unit in plan.pilot + plan.train + plan.fidelity:
        if world.states[unit.key] != PENDING:
            continue
        name = unit.dataset.name
        reason = (f"the split of {name} failed" if name not in world.digests
                  else _refusal(unit, world.refused))
        if reason:
            world.states[unit.key] = FAILED
            world.failures[unit.key] = reason
    if not world.digests and world.states[plan.reduce.key] == PENDING:
        world.states[plan.reduce.key] = FAILED
        world.failures[plan.reduce.key] = "no dataset's split succeeded"


# --- deciding ---------------------------------------------------------------------------------


def _current_stage(packs: list[Pack], states: Mapping[str, str]) -> str | None:
    for stage in STAGE_ORDER:
        if any(states[u.key] in (PENDING, RUNNING) for p in packs if p.stage == stage
               for u in p.units):
            return stage
    return None


def _to_create(benchmark: ScarceBenchmark, packs: list[Pack], world: _World,
               jobs: Mapping[str, Mapping[str, Any]], stage: str | None,
               owner: Owner, settings: JobSettings) -> list[dict[str, Any]]:
    spec = benchmark.spec
    if stage is None or spec.suspend:
        return []
    active = sum(1 for p in packs if p.name in jobs and job_state(jobs[p.name]) == RUNNING)
    slots = spec.parallelism - active
    manifests = []
    for pack in packs:
        if slots <= 0:
            break
        if pack.stage != stage or pack.name in jobs or any(
                world.states[u.key] != PENDING for u in pack.units):
            continue
        units = [_bind(u, world.digests) for u in pack.units]
        manifests.append(build_job(units, owner=owner, storage=spec.storage, jobs=spec.jobs,
                                   queue_name=spec.queue_name, settings=settings))
        for unit in pack.units:
            world.states[unit.key] = RUNNING
        slots -= 1
    return manifests


def _train_outcomes(plan: Plan, states: Mapping[str, str]) -> dict[TrainKey, str]:
    return {TrainKey(u.dataset.name, u.arm or "", u.k, u.seed or 0): states[u.key]
            for u in plan.train}


def _final(benchmark: ScarceBenchmark, plan: Plan, world: _World) -> tuple[str, str, str]:
    """(phase, reason, message) once every unit has finished."""
    reduce_state = world.states[plan.reduce.key]
    if reduce_state == FAILED:
        why = world.failures.get(plan.reduce.key, "the reducer failed")
        reason = "NoSplits" if not world.digests else "ReduceFailed"
        return FAILED_PHASE, reason, why
    minimum = benchmark.spec.effective_min_pairs
    pairs = pairs_by_dataset(_train_outcomes(plan, world.states))
    short = [f"{d} has {n}" for d, n in pairs.items() if n < minimum]
    if short:
        return (FAILED_PHASE, "InsufficientPairs",
                f"fewer than minPairs={minimum} seed pairs: {listing(short)}")
    return SUCCEEDED_PHASE, "Succeeded", "the report is written"


def _phase(benchmark: ScarceBenchmark, plan: Plan, world: _World, stage: str | None,
           started: bool) -> tuple[str, str, str]:
    if stage is None:
        return _final(benchmark, plan, world)
    if not started:
        return PHASE_PENDING, "NotStarted", "no Job created yet"
    return PHASE_OF_STAGE[stage], "InProgress", f"the {stage} stage is running"


def reconcile(
    benchmark: ScarceBenchmark,
    *,
    owner: Owner,
    status: Mapping[str, Any],
    generation: int | None,
    jobs: Mapping[str, Mapping[str, Any]],
    reader: ResultReader,
    settings: JobSettings,
    plan: Plan,
    now: dt.datetime,
) -> Decision:
    """Decide one reconcile of a valid benchmark (see the module docstring)."""
    packs = packs_of(plan, benchmark.spec.seeds_per_job)
    keys = [u.key for p in packs for u in p.units]
    ledger = decode_ledger(status.get("ledger"), keys)
    world = _observe(packs, jobs, ledger)
    _read_splits(plan, world, status, reader)
    _resolve_failed_packs(world, reader)
    _block(plan, world)
    stage = _current_stage(packs, world.states)
    create = _to_create(benchmark, packs, world, jobs, stage, owner, settings)
    started_at = status.get("startedAt") or (timestamp(now) if create or jobs else None)
    counts = Counts.of(world.states.values())
    phase = _phase(benchmark, plan, world, stage, started_at is not None)
    seen = Observed(
        states=world.states, split_keys={u.dataset.name: u.key for u in plan.split},
        training_keys=[u.key for u in plan.pilot + plan.train + plan.fidelity],
        train=_train_outcomes(plan, world.states), digests=world.digests,
        failures=world.failures, stage=stage, suspended=benchmark.spec.suspend)
    newly_failed = [k for k in keys if world.states[k] == FAILED and ledger.get(k) != FAILED]
    new_status: dict[str, Any] = {
        "phase": phase[0],
        "message": phase[2],
        "progress": progress(counts),
        "units": counts.as_dict(),
        "stages": {s: Counts.of(world.states[u.key] for p in packs if p.stage == s
                                for u in p.units).as_dict() for s in STAGE_ORDER},
        "suspended": benchmark.spec.suspend,
        "splitDigests": dict(sorted(world.digests.items())),
        "hardestClasses": {d.name: d.hardest_class for d in benchmark.spec.datasets
                           if d.hardest_class != AUTO},
        "conditions": conditions(seen, phase, counts, previous=status.get("conditions") or [],
                                 now=now, generation=generation),
        "ledger": encode_ledger(keys, world.states),
    }
    if world.refused:
        new_status["refusedSources"] = world.refused
    if started_at:
        new_status["startedAt"] = started_at
    if generation is not None:
        new_status["observedGeneration"] = generation
    if phase[0] in TERMINAL_PHASES:
        new_status["finishedAt"] = status.get("finishedAt") or timestamp(now)
        new_status["pairs"] = pairs_by_dataset(_train_outcomes(plan, world.states))
    if world.states[plan.reduce.key] == SUCCEEDED and not status.get("summary"):
        report = reader.report()
        if report is not None:
            new_status.update(status_fields(report, report_uri(plan.reduce.storage.uri,
                                                               plan.benchmark)))
    ttl = [p.name for p in packs if p.name in jobs and job_state(jobs[p.name]) != RUNNING
           and (jobs[p.name].get("spec") or {}).get("ttlSecondsAfterFinished") is None]
    return Decision(
        status=new_status,
        create=create,
        ttl=ttl,
        ttl_seconds=benchmark.spec.jobs.ttl_seconds_after_finished,
        events=transition_events(status, seen, phase, counts, newly_failed),
        finished=[(p.stage, jobs[p.name]) for p in world.finished],
        counts=counts,
    )
