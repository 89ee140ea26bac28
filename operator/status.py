"""The ScarceBenchmark status: phases, unit counts, conditions, the outcome ledger and the
partial-success rules (pure: values in, dicts out).

The status never holds per-unit lists, so it stays small at any benchmark size (well under
64 KiB at 5,000 units; etcd caps a whole object at 1.5 MiB). What the operator must remember
about each unit once its Job is gone (deleted by ``ttlSecondsAfterFinished``) is kept in the
*ledger*: two bits per unit, in plan order, base64-encoded (about 1.7 KB for 5,000 units).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scarce.operator.jobs import Owner

PENDING, RUNNING, SUCCEEDED, FAILED = "pending", "running", "succeeded", "failed"
STATES = (PENDING, RUNNING, SUCCEEDED, FAILED)

PHASE_PENDING = "Pending"
PHASE_OF_STAGE = {"split": "Splitting", "pilot": "Piloting", "train": "Training",
                  "fidelity": "Training", "reduce": "Reducing"}
SUCCEEDED_PHASE, FAILED_PHASE = "Succeeded", "Failed"
PHASES = ("Pending", "Splitting", "Piloting", "Training", "Reducing", "Succeeded", "Failed")
TERMINAL_PHASES = (SUCCEEDED_PHASE, FAILED_PHASE)

CONDITION_TYPES = ("SpecValid", "SplitsFrozen", "Training", "Degraded", "Complete")

#: The longest condition or Event message; longer lists are cut with "... and N more".
MAX_MESSAGE = 1000

_CODES = {PENDING: 0, SUCCEEDED: 1, FAILED: 2}
_STATE_OF_CODE = {v: k for k, v in _CODES.items()}


@dataclass(frozen=True)
class Counts:
    """Units by state."""

    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0

    @classmethod
    def of(cls, states: Iterable[str]) -> Counts:
        """Count the states of units."""
        values = list(states)
        return cls(*(values.count(s) for s in STATES))

    @property
    def total(self) -> int:
        """All units."""
        return self.pending + self.running + self.succeeded + self.failed

    @property
    def done(self) -> int:
        """Units that finished, one way or the other."""
        return self.succeeded + self.failed

    def as_dict(self) -> dict[str, int]:
        """The counts as the status's ``units`` field."""
        return {"total": self.total, **{s: getattr(self, s) for s in STATES}}


def progress(counts: Counts) -> str:
    """``done/total``: the Done/Total printer column (.status.progress)."""
    return f"{counts.done}/{counts.total}"


def timestamp(now: dt.datetime) -> str:
    """RFC 3339 in UTC with a Z, to the second (the form Kubernetes writes)."""
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the ledger -------------------------------------------------------------------------------


def plan_fingerprint(keys: Sequence[str]) -> str:
    """Identity of a plan's unit list: a ledger is read only against the plan it was written
    for (the CRD freezes the spec once started, but a ledger must never be misread)."""
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def encode_ledger(keys: Sequence[str], states: Mapping[str, str]) -> dict[str, str]:
    """The finished units' outcomes, two bits each, in the order of `keys`."""
    data = bytearray((len(keys) + 3) // 4)
    for i, key in enumerate(keys):
        code = _CODES.get(states.get(key, PENDING), 0)
        data[i // 4] |= code << (2 * (i % 4))
    return {"plan": plan_fingerprint(keys), "units": base64.b64encode(bytes(data)).decode()}


def decode_ledger(ledger: Mapping[str, Any] | None, keys: Sequence[str]) -> dict[str, str]:
    """Unit key -> succeeded or failed for every unit the ledger recorded; {} for a missing,
    corrupt or foreign ledger (the Jobs and the store are then the only evidence)."""
    if not ledger or ledger.get("plan") != plan_fingerprint(keys):
        return {}
    try:
        data = base64.b64decode(str(ledger.get("units", "")), validate=True)
    except ValueError:
        return {}
    if len(data) != (len(keys) + 3) // 4:
        return {}
    out = {}
    for i, key in enumerate(keys):
        code = (data[i // 4] >> (2 * (i % 4))) & 3
        if code in (1, 2):
            out[key] = _STATE_OF_CODE[code]
    return out


# --- conditions -------------------------------------------------------------------------------


def condition(
    kind: str, ok: bool, reason: str, message: str, *, now: dt.datetime,
    generation: int | None, previous: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A condition in the Kubernetes API convention; ``lastTransitionTime`` moves only when
    ``status`` flips (a new reason or message alone keeps it)."""
    status = "True" if ok else "False"
    before = next((c for c in previous if c.get("type") == kind), None)
    since = before.get("lastTransitionTime") if before and before.get("status") == status \
        else None
    out: dict[str, Any] = {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": truncate(message),
        "lastTransitionTime": since or timestamp(now),
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def truncate(text: str, limit: int = MAX_MESSAGE) -> str:
    """Cut a message to `limit` characters, saying so."""
    suffix = " ... (truncated)"
    return text if len(text) <= limit else text[: limit - len(suffix)] + suffix


def listing(items: Sequence[str], limit: int = MAX_MESSAGE) -> str:
    """``a, b, c and 12 more`` within `limit` characters."""
    shown: list[str] = []
    size = 0
    for i, item in enumerate(items):
        rest = len(items) - i
        tail = f" and {rest} more" if rest else ""
        if shown and size + len(item) + 2 + len(tail) > limit:
            return ", ".join(shown) + f" and {rest} more"
        shown.append(item)
        size += len(item) + 2
    return ", ".join(shown)


def get_condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The condition of a type in a status, if any."""
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


# --- pairs and partial success ------------------------------------------------------------------


@dataclass(frozen=True)
class TrainKey:
    """What identifies a train unit within a dataset for pairing."""

    dataset: str
    arm: str
    k: int | None
    seed: int


_Comparison = tuple[str, str, int | None]


def _by_comparison(outcomes: Mapping[TrainKey, str]) -> dict[_Comparison, dict[int, str]]:
    """Outcomes grouped by (dataset, arm, k), as seed -> state, in one pass: pairing then
    costs O(units) for a whole benchmark, where a scan of every outcome per comparison
    grew with datasets x units."""
    groups: dict[_Comparison, dict[int, str]] = {}
    for key, state in outcomes.items():
        groups.setdefault((key.dataset, key.arm, key.k), {})[key.seed] = state
    return groups


def _pairing(groups: Mapping[_Comparison, Mapping[int, str]], dataset: str, arm: str,
             k: int | None, baseline: str) -> tuple[list[int], list[int]]:
    ours = groups.get((dataset, arm, k), {})
    theirs = groups.get((dataset, baseline, k), {})
    paired, missing = [], []
    for seed in sorted(ours.keys() | theirs.keys()):
        both = ours.get(seed) == SUCCEEDED and theirs.get(seed) == SUCCEEDED
        (paired if both else missing).append(seed)
    return paired, missing


def paired_seeds(
    outcomes: Mapping[TrainKey, str], dataset: str, arm: str, k: int | None,
    baseline: str = "real",
) -> tuple[list[int], list[int]]:
    """(seeds paired, seeds missing) of `arm` vs `baseline` in a dataset at one k."""
    return _pairing(_by_comparison(outcomes), dataset, arm, k, baseline)


def pairs_by_dataset(outcomes: Mapping[TrainKey, str], baseline: str = "real") -> dict[str, int]:
    """Per dataset, the fewest seed pairs of any arm vs real on the whole training pool (the
    headline comparison); a dataset with only the real arm counts its successful seeds."""
    groups = _by_comparison(outcomes)
    arms: dict[str, set[str]] = {}
    for dataset, arm, k in groups:
        names = arms.setdefault(dataset, set())
        if k is None:
            names.add(arm)
    out = {}
    for dataset in sorted(arms):
        others = sorted(a for a in arms[dataset] if a != baseline)
        if others:
            out[dataset] = min(len(_pairing(groups, dataset, a, None, baseline)[0])
                               for a in others)
        else:
            out[dataset] = sum(1 for state in groups.get((dataset, baseline, None), {}).values()
                               if state == SUCCEEDED)
    return out


def missing_pairs(outcomes: Mapping[TrainKey, str], baseline: str = "real") -> list[str]:
    """Every comparison with missing seed pairs, e.g. ``surfaces vendor vs real (kfull): seeds
    3, 5``, for finished units only (a pending unit is not missing yet)."""
    groups = _by_comparison(outcomes)
    lines = []
    for dataset, arm, k in sorted((g for g in groups if g[1] != baseline),
                                  key=lambda g: (g[0], g[1], -1 if g[2] is None else g[2])):
        ours, theirs = groups[dataset, arm, k], groups.get((dataset, baseline, k), {})
        _, missing = _pairing(groups, dataset, arm, k, baseline)
        failed = [s for s in missing if FAILED in (ours.get(s), theirs.get(s))]
        if failed:
            label = "kfull" if k is None else f"k{k}"
            lines.append(f"{dataset} {arm} vs {baseline} ({label}): seeds "
                         + " ".join(str(s) for s in failed))
    return lines


# --- conditions and events of one reconcile ---------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """What one reconcile found, as far as the conditions and Events report it."""

    #: Unit key -> state, for every unit of the plan.
    states: Mapping[str, str]
    #: Dataset -> the key of its split unit.
    split_keys: Mapping[str, str]
    #: Keys of the pilot, train and fidelity units.
    training_keys: Sequence[str]
    #: Train units by what pairs them.
    train: Mapping[TrainKey, str]
    #: Dataset -> split digest, for the splits that succeeded.
    digests: Mapping[str, str]
    #: Unit key -> why it failed (when known).
    failures: Mapping[str, str]
    #: The stage that runs now; None when every unit has finished.
    stage: str | None
    suspended: bool


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the benchmark."""

    type: str  # Normal or Warning
    reason: str
    message: str

    def manifest(self, owner: Owner, *, name: str, now: dt.datetime,
                 instance: str) -> dict[str, Any]:
        """The core/v1 Event object (``kubectl describe sb`` and ``kubectl get events``)."""
        stamp = timestamp(now)
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": owner.namespace},
            "involvedObject": {"apiVersion": owner.api_version, "kind": owner.kind,
                               "name": owner.name, "namespace": owner.namespace,
                               "uid": owner.uid},
            "type": self.type,
            "reason": self.reason,
            "message": self.message[:1024],
            "source": {"component": "scarce-operator"},
            "reportingComponent": "scarce-operator",
            "reportingInstance": instance,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }


def _splits_condition(seen: Observed, make: Any) -> dict[str, Any]:
    done = all(seen.states[k] in (SUCCEEDED, FAILED) for k in seen.split_keys.values())
    if done and seen.digests:
        frozen = ", ".join(f"{d}={v[:12]}" for d, v in sorted(seen.digests.items()))
        failed = [d for d in seen.split_keys if d not in seen.digests]
        note = f"; split failed: {', '.join(failed)}" if failed else ""
        return make("SplitsFrozen", True, "Frozen", f"test splits frozen: {frozen}{note}")
    if done:
        return make("SplitsFrozen", False, "SplitsFailed", "every split Job failed")
    return make("SplitsFrozen", False, "Pending", "the split stage has not finished")


def _training_condition(seen: Observed, make: Any) -> dict[str, Any]:
    done = sum(1 for k in seen.training_keys if seen.states[k] in (SUCCEEDED, FAILED))
    text = f"{done}/{len(seen.training_keys)} pilot, train and fidelity units finished"
    if seen.stage in ("pilot", "train", "fidelity"):
        if seen.suspended:
            return make("Training", False, "Suspended",
                        "spec.suspend is true: no new Job is started")
        return make("Training", True, "Running", text)
    if seen.stage == "split":
        return make("Training", False, "NotStarted", "waiting for the split stage")
    return make("Training", False, "Finished", text)


def conditions(
    seen: Observed, phase: tuple[str, str, str], counts: Counts, *,
    previous: Sequence[Mapping[str, Any]], now: dt.datetime, generation: int | None,
) -> list[dict[str, Any]]:
    """SpecValid, SplitsFrozen, Training, Degraded and Complete of a valid benchmark;
    `phase` is (phase, reason, message)."""
    def make(kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
        return condition(kind, ok, reason, message, now=now, generation=generation,
                         previous=previous)

    if counts.failed:
        failed_keys = sorted(k for k, s in seen.states.items() if s == FAILED)
        text = f"{counts.failed} unit(s) failed: {listing(failed_keys, 300)}"
        missing = missing_pairs(seen.train)
        if missing:
            text += "; missing pairs: " + listing(missing, 600)
        degraded = make("Degraded", True, "UnitsFailed", text)
    else:
        degraded = make("Degraded", False, "NoFailures", "no unit has failed")
    name, reason, message = phase
    if name == SUCCEEDED_PHASE:
        complete = make("Complete", True, "Succeeded", message)
    elif name == FAILED_PHASE:
        complete = make("Complete", False, reason, message)
    else:
        complete = make("Complete", False, "InProgress", f"{progress(counts)} units done")
    return [make("SpecValid", True, "Valid", "the spec is valid"),
            _splits_condition(seen, make), _training_condition(seen, make), degraded, complete]


def transition_events(
    old: Mapping[str, Any], seen: Observed, phase: tuple[str, str, str], counts: Counts,
    newly_failed: Sequence[str],
) -> list[Event]:
    """Events for what changed since the status `old`: units that failed, suspend flipped,
    a new phase (the last one carries the verdict)."""
    events = []
    name, _, message = phase
    if newly_failed:
        details = [f"{k} ({seen.failures.get(k, 'failed')})" for k in newly_failed]
        events.append(Event("Warning", "UnitFailed",
                            f"{len(newly_failed)} unit(s) failed: {listing(details)}"))
    if old and bool(old.get("suspended")) != seen.suspended:
        events.append(Event("Normal", "Suspended" if seen.suspended else "Resumed",
                            "spec.suspend is true: no new Job is started" if seen.suspended
                            else "spec.suspend is false: Jobs are started again"))
    if old.get("phase") != name and (old or name != PHASE_PENDING):
        text = f"{name}: {message} ({progress(counts)} units done"
        text += f", {counts.failed} failed)" if counts.failed else ")"
        events.append(Event("Warning" if name == FAILED_PHASE else "Normal", name, text))
    return events
