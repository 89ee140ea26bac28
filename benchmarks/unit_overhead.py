"""Unit overhead: wall time from process start to the first training step, and the whole
unit's time against its pure training compute, for one real unit of an already split spec.

One `scarce-trainer train` process per repeat (a Kubernetes Job starts exactly like this).
The unit's own result records where its time went after the imports (`timings`: load = read
and verify the split and synthetic shards, build = model and optimizer, firstStep = from the
unit's start to the first step, train, eval); the imports are timed in a separate bare process.

Usage (after `scarce run SPEC --stop-after split`)::

    python benchmarks/unit_overhead.py examples/magnetic-tile.yaml --arm real --repeats 3
    python benchmarks/unit_overhead.py examples/magnetic-tile-replication.yaml --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from unit_tools import read_result, run_trainer, train_units

IMPORTS = "import scarce.trainer.runner, torch, timm"


def import_seconds(device: str) -> float:
    """Wall time of a bare process importing what a trainer process imports (and, on CUDA,
    creating the CUDA context)."""
    code = IMPORTS + (("; torch.zeros(1, device='cuda'); torch.cuda.synchronize()")
                      if device == "cuda" else "")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


def main() -> None:
    """Time the unit `--repeats` times and print (and optionally write) the breakdown."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--arm", default="real")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="override the spec's epochs")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    unit = train_units(args.spec, arm=args.arm, seeds=args.seed + 1, epochs=args.epochs,
                       benchmark="bench-unit-overhead")[args.seed]
    rows = []
    for _ in range(args.repeats):
        imports = import_seconds(args.device)
        wall = run_trainer([unit], args.device)
        timings = read_result(unit)["timings"]
        rows.append({
            "wall": wall, "imports": imports, **timings,
            "startToFirstStep": imports + timings["firstStep"],
            "overhead": wall - timings["train"],
        })
    summary = {key: round(statistics.median(r[key] for r in rows), 3) for key in rows[0]}
    summary.update(unit=unit.key, device=args.device, repeats=args.repeats,
                   epochs=unit.schedule.epochs, backbone=unit.model.backbone,
                   imageSize=unit.model.image_size)
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "repeats": rows}, indent=2))


if __name__ == "__main__":
    main()
