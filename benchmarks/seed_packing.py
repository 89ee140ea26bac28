"""Seed packing: N seeds of one dataset and arm as N trainer processes (one Job each) against
one process running the N units as a pack (`scarce-trainer train --unit-json '[...]'`, what a
Job runs when spec.seedsPerJob > 1). Prints both wall times, the speed-up, and whether every
seed's result (confusion matrix and final loss) is identical between the two ways (for the
seeds timed both ways).

Usage (after `scarce run SPEC --stop-after split`)::

    python benchmarks/seed_packing.py examples/magnetic-tile.yaml --seeds 15 --epochs 5
    python benchmarks/seed_packing.py examples/magnetic-tile-replication.yaml --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from unit_tools import read_result, run_trainer, train_units


def main() -> None:
    """Run the seeds both ways and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--arm", default="real")
    parser.add_argument("--seeds", type=int, default=15)
    parser.add_argument("--epochs", type=int, help="override the spec's epochs")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--separate-seeds", type=int,
        help="time only this many seeds as separate processes and scale their mean to --seeds "
        "(each separate process costs the same; saves device time). Default: all of them.",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    units = train_units(args.spec, arm=args.arm, seeds=args.seeds, epochs=args.epochs,
                        benchmark="bench-seed-packing")
    timed = units[: args.separate_seeds or len(units)]
    separate_walls = [run_trainer([unit], args.device) for unit in timed]
    separate = [read_result(u) for u in timed]
    separate_total = sum(separate_walls) * len(units) / len(timed)
    packed_wall = run_trainer(units, args.device)
    packed = [read_result(u) for u in units]
    identical = all(
        a["confusionMatrix"] == b["confusionMatrix"] and a["finalLoss"] == b["finalLoss"]
        for a, b in zip(separate, packed, strict=False)
    )
    train_seconds = sum(r["timings"]["train"] for r in packed)
    summary = {
        "device": args.device, "seeds": args.seeds, "arm": args.arm,
        "backbone": units[0].model.backbone, "imageSize": units[0].model.image_size,
        "epochs": units[0].schedule.epochs, "trainImages": packed[0]["trainImages"],
        "separateTimed": len(timed),
        "separateEachSeconds": [round(w, 2) for w in separate_walls],
        "separateSeconds": round(separate_total, 2),
        "packedSeconds": round(packed_wall, 2),
        "speedup": round(separate_total / packed_wall, 2),
        "savedPerSeed": round((separate_total - packed_wall) / args.seeds, 2),
        "packedTrainSeconds": round(train_seconds, 2),
        "identicalResults": identical,
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
