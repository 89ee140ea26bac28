"""Seed packing: N seeds of one dataset and arm as N trainer processes (one Job each) against
one process running the N units as a pack (`scarce-trainer train --unit-json '[...]'`, what a
Job runs when spec.seedsPerJob > 1). Prints both wall times, the speed-up, and whether every
seed's result (confusion matrix and final loss) is identical between the two ways.

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
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    units = train_units(args.spec, arm=args.arm, seeds=args.seeds, epochs=args.epochs,
                        benchmark="bench-seed-packing")
    separate_walls = [run_trainer([unit], args.device) for unit in units]
    separate = [read_result(u) for u in units]
    packed_wall = run_trainer(units, args.device)
    packed = [read_result(u) for u in units]
    identical = all(
        a["confusionMatrix"] == b["confusionMatrix"] and a["finalLoss"] == b["finalLoss"]
        for a, b in zip(separate, packed, strict=True)
    )
    train_seconds = sum(r["timings"]["train"] for r in packed)
    summary = {
        "device": args.device, "seeds": args.seeds, "arm": args.arm,
        "backbone": units[0].model.backbone, "imageSize": units[0].model.image_size,
        "epochs": units[0].schedule.epochs, "trainImages": packed[0]["trainImages"],
        "separateSeconds": round(sum(separate_walls), 2),
        "packedSeconds": round(packed_wall, 2),
        "speedup": round(sum(separate_walls) / packed_wall, 2),
        "savedPerSeed": round((sum(separate_walls) - packed_wall) / args.seeds, 2),
        "packedTrainSeconds": round(train_seconds, 2),
        "identicalResults": identical,
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
