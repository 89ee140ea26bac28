"""Run one work unit end to end: skip it when its valid result exists, else execute the stage and
write the result object once, atomically, with the unit, its config hash and the split digest.
"""

from __future__ import annotations

import datetime as dt
import platform
from typing import Any

import pydantic

from scarce.trainer.datasets import DatasetError
from scarce.trainer.splits import SplitIntegrityError
from scarce.trainer.store import (
    BucketNotFound,
    CorruptObjectError,
    IntegrityError,
    ObjectNotFound,
    Store,
    TransientStoreError,
    open_store,
)
from scarce.trainer.synth import SyntheticSourceError
from scarce.trainer.unit import EXIT_PERMANENT, EXIT_TRANSIENT, WorkUnit

RESULT_SCHEMA = "scarce.result/v1"

#: Errors that would fail again on retry: the trainer exits with EXIT_PERMANENT for them.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    SplitIntegrityError,
    IntegrityError,
    BucketNotFound,
    ObjectNotFound,
    DatasetError,
    SyntheticSourceError,
    pydantic.ValidationError,
    ValueError,
)


def exit_code_for(error: BaseException) -> int:
    """The process exit code for an error: permanent (no retry) or transient."""
    if isinstance(error, TransientStoreError):
        return EXIT_TRANSIENT
    if isinstance(error, PERMANENT_ERRORS):
        return EXIT_PERMANENT
    return EXIT_TRANSIENT


def versions() -> dict[str, str]:
    """Library versions recorded in every result (imports are cheap once the unit ran)."""
    import importlib.metadata as md

    found = {"python": platform.python_version()}
    for name in ("scarce", "torch", "timm", "numpy", "torchvision"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return found


def existing_result(store: Store, unit: WorkUnit) -> dict[str, Any] | None:
    """The unit's result when it exists and was made from this exact unit config."""
    try:
        result = store.get_json(unit.result_key)
    except ObjectNotFound:
        return None
    except (IntegrityError, CorruptObjectError):
        return None  # a corrupt result is redone, never trusted
    if not isinstance(result, dict) or result.get("configHash") != unit.config_hash():
        return None
    return result


def run_unit(unit: WorkUnit, *, device: str = "cpu", force: bool = False) -> tuple[dict, bool]:
    """Execute the unit unless its valid result exists; returns (result, skipped)."""
    store = open_store(unit.storage.uri, endpoint=unit.storage.endpoint, secure=unit.storage.secure)
    if unit.stage == "reduce":
        # Always rerun: results may have been added since; the report is a pure function of them.
        from scarce.trainer.cluster_status import publish_from_env
        from scarce.trainer.reduce import run_reduce_unit

        report = run_reduce_unit(unit, store)
        # In a cluster reducer Job: the summary goes to the benchmark's status too.
        publish_from_env(report, unit.storage.uri, unit.benchmark)
        return report, False
    if not force:
        found = existing_result(store, unit)
        if found is not None:
            return found, True
    started = dt.datetime.now(dt.UTC)
    if unit.stage == "split":
        from scarce.trainer.prepare import run_split_unit

        body = run_split_unit(unit, store, base_dir=None)
    elif unit.stage == "fidelity":
        from scarce.trainer.fidelity import run_fidelity_unit

        body = run_fidelity_unit(unit, store, device=device)
    else:
        from scarce.trainer.train import run_train_unit

        body = run_train_unit(unit, store, device=device)
    result = {
        "schema": RESULT_SCHEMA,
        "unitKey": unit.key,
        "unit": unit.to_json_dict(),
        "configHash": unit.config_hash(),
        "splitDigest": body.get("splitDigest", unit.split_digest),
        "startedAt": started.isoformat(),
        "finishedAt": dt.datetime.now(dt.UTC).isoformat(),
        "versions": versions(),
        **body,
    }
    store.put_json(unit.result_key, result)
    return result, False
