"""`scarce-trainer`: what runs inside the trainer image (and in local worker processes).

    scarce-trainer train  --unit UNIT.json [--device cpu|cuda] [--force]   (also pilot, fidelity)
    scarce-trainer train  --unit A.json --unit B.json ...   # seed packing: several units, one
                                                           # process (also a JSON list)
    scarce-trainer split  --unit UNIT.json
    scarce-trainer reduce --unit UNIT.json
    scarce-trainer serve  [--device cpu]      # JSON lines: one unit in, one outcome out

Exit codes: 0 done (or skipped: a valid result exists), 1 transient error (retry),
2 usage error, 3 permanent error (bad config or data, digest mismatch: do not retry).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from scarce.trainer.unit import EXIT_OK, EXIT_PERMANENT, EXIT_TRANSIENT, EXIT_USAGE, WorkUnit

log = logging.getLogger("scarce.trainer")

_STAGES_OF_COMMAND = {
    "train": ("train", "pilot", "fidelity"), "split": ("split",), "reduce": ("reduce",)
}


def load_units(paths: list[str] | None, inline: str | None) -> list[WorkUnit]:
    """Read units from files (or '-' for stdin) or an inline JSON string.

    Each source holds one unit object or a JSON list of them: a list is a pack, several seeds
    of one dataset and arm run in one process so imports, the CUDA context and the verified
    shards are paid for once (the results equal those of separate units).
    """
    if inline:
        texts = [inline]
    elif paths:
        texts = [sys.stdin.read() if path == "-" else Path(path).read_text() for path in paths]
    else:
        raise ValueError("give --unit FILE or --unit-json JSON")
    units: list[WorkUnit] = []
    for text in texts:
        loaded = json.loads(text)
        for item in loaded if isinstance(loaded, list) else [loaded]:
            units.append(WorkUnit.model_validate(item))
    if not units:
        raise ValueError("no unit given (an empty JSON list)")
    return units


def worst_exit_code(codes: list[int]) -> int:
    """A pack's exit code: permanent beats usage beats transient beats success.

    A permanent failure of one seed fails the Job at once (its podFailurePolicy); otherwise a
    transient one makes the Job retry, and the seeds already done are skipped on the retry.
    """
    for code in (EXIT_PERMANENT, EXIT_USAGE, EXIT_TRANSIENT):
        if code in codes:
            return code
    return EXIT_OK


def _describe(error: BaseException) -> str:
    message = str(error)
    cause = error.__cause__
    if cause is not None and str(cause) and str(cause) not in message:
        message += f" (caused by {type(cause).__name__}: {cause})"
    return message


def execute(unit: WorkUnit, *, device: str, force: bool) -> dict:
    """Run a unit and describe the outcome as a JSON-able dict (never raises)."""
    from scarce.trainer.runner import exit_code_for, run_unit

    started = time.perf_counter()
    try:
        _, skipped = run_unit(unit, device=device, force=force)
    except Exception as error:  # the boundary: every failure becomes an exit code + message
        code = exit_code_for(error)
        if code != EXIT_PERMANENT:
            log.debug("unit %s failed:\n%s", unit.key, traceback.format_exc())
        return {
            "key": unit.key,
            "status": "failed",
            "exitCode": code,
            "error": f"{type(error).__name__}: {_describe(error)}",
            "seconds": round(time.perf_counter() - started, 3),
        }
    return {
        "key": unit.key,
        "status": "skipped" if skipped else "done",
        "exitCode": EXIT_OK,
        "seconds": round(time.perf_counter() - started, 3),
    }


def serve(device: str) -> int:
    """Run units read as JSON lines on stdin, one after the other, answering on stdout.

    The local executor keeps a few of these alive so torch and timm are imported once per
    worker, not once per unit.
    """
    import scarce.trainer.runner  # noqa: F401  (pay the imports before the first unit)

    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            unit = WorkUnit.model_validate(json.loads(line))
        except Exception as error:
            outcome = {"key": None, "status": "failed", "exitCode": EXIT_PERMANENT,
                       "error": f"invalid unit: {error}"}
        else:
            outcome = execute(unit, device=device, force=False)
        print(json.dumps(outcome), flush=True)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of `scarce-trainer`."""
    parser = argparse.ArgumentParser(prog="scarce-trainer", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("train", "split", "reduce"):
        cmd = sub.add_parser(name, help=f"run one {name} unit")
        cmd.add_argument("--unit", action="append",
                         help="unit JSON file (one unit or a list), or - for stdin; repeatable")
        cmd.add_argument("--unit-json", help="unit (or a JSON list of units) as an inline string")
        cmd.add_argument("--device", default=os.environ.get("SCARCE_DEVICE", "cpu"))
        cmd.add_argument("--force", action="store_true", help="rerun even if a result exists")
    srv = sub.add_parser("serve", help="run units read as JSON lines from stdin")
    srv.add_argument("--device", default=os.environ.get("SCARCE_DEVICE", "cpu"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("SCARCE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return serve(args.device)
    try:
        units = load_units(args.unit, args.unit_json)
    except Exception as error:
        print(f"scarce-trainer: {error}", file=sys.stderr)
        # A unit file that cannot be read is a usage error; one that is not a valid unit would
        # fail the same way on every retry.
        return EXIT_USAGE if isinstance(error, OSError) else EXIT_PERMANENT
    for unit in units:
        if unit.stage not in _STAGES_OF_COMMAND[args.command]:
            print(f"scarce-trainer {args.command}: unit {unit.key} is a {unit.stage} unit",
                  file=sys.stderr)
            return EXIT_USAGE
    codes = []
    for unit in units:
        outcome = execute(unit, device=args.device, force=args.force)
        codes.append(int(outcome["exitCode"]))
        if outcome["status"] == "failed":
            print(f"scarce-trainer: unit {unit.key} failed: {outcome['error']}", file=sys.stderr)
            if outcome["exitCode"] == EXIT_PERMANENT:
                break  # the Job fails at once; the remaining seeds would only burn the GPU
        else:
            print(f"scarce-trainer: unit {unit.key} {outcome['status']} in "
                  f"{outcome['seconds']}s", file=sys.stderr)
    return worst_exit_code(codes)


if __name__ == "__main__":
    sys.exit(main())
