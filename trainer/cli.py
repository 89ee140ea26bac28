"""`scarce-trainer`: what runs inside the trainer image (and in local worker processes).

    scarce-trainer train  --unit UNIT.json [--device cpu|cuda] [--force]   (also pilot, fidelity)
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

from scarce.trainer.unit import EXIT_OK, EXIT_PERMANENT, EXIT_USAGE, WorkUnit

log = logging.getLogger("scarce.trainer")

_STAGES_OF_COMMAND = {
    "train": ("train", "pilot", "fidelity"), "split": ("split",), "reduce": ("reduce",)
}


def load_unit(path: str | None, inline: str | None) -> WorkUnit:
    """Read a unit from a file (or '-' for stdin) or from an inline JSON string."""
    if inline:
        text = inline
    elif path == "-":
        text = sys.stdin.read()
    elif path:
        text = Path(path).read_text()
    else:
        raise ValueError("give --unit FILE or --unit-json JSON")
    return WorkUnit.model_validate(json.loads(text))


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
        cmd.add_argument("--unit", help="unit JSON file, or - for stdin")
        cmd.add_argument("--unit-json", help="unit as an inline JSON string")
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
        unit = load_unit(args.unit, args.unit_json)
    except Exception as error:
        print(f"scarce-trainer: {error}", file=sys.stderr)
        # A unit file that cannot be read is a usage error; one that is not a valid unit would
        # fail the same way on every retry.
        return EXIT_USAGE if isinstance(error, OSError) else EXIT_PERMANENT
    if unit.stage not in _STAGES_OF_COMMAND[args.command]:
        print(f"scarce-trainer {args.command}: unit {unit.key} is a {unit.stage} unit",
              file=sys.stderr)
        return EXIT_USAGE
    outcome = execute(unit, device=args.device, force=args.force)
    if outcome["status"] == "failed":
        print(f"scarce-trainer: unit {unit.key} failed: {outcome['error']}", file=sys.stderr)
    else:
        print(f"scarce-trainer: unit {unit.key} {outcome['status']} in {outcome['seconds']}s",
              file=sys.stderr)
    return int(outcome["exitCode"])


if __name__ == "__main__":
    sys.exit(main())
