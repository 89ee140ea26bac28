"""Data path: decoding a dataset's images every epoch against the packed shard SCARCE uses.

For one dataset at the model's size and channels, in one process:

* **decode**: read and decode every image file and resize it to the model's size, as a loader
  that decodes per epoch would, every epoch (the project's own decoder, `decode_all` with
  `--threads` threads, Pillow releasing the GIL);
* **shard build**: the same decode once, then `pack_shard` (what the split unit does after
  hashing; the hashing itself is not included);
* **shard load**: `load_shard` from a local store, sha256-verified, as every training unit
  does once (the process cache is cleared before each repeat, so this is a cold load);

and prints each against one training epoch of the given throughput (images/s measured by
`trainer_throughput.py`, e.g. 43 on 2 CPU threads for resnet18 @ 128, 4,113 on an H200 for
resnet50 @ 224), so you can read off whether a per-epoch decoder would be the bottleneck.

Usage::

    python benchmarks/data_path.py ../shared/datasets/magnetic-tile --format magnetic-tile \\
        --image-size 128 --channels 1 --epoch-throughput 43 4113
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from scarce.trainer import shards
from scarce.trainer.datasets.base import scan_dataset
from scarce.trainer.datasets.images import decode_image
from scarce.trainer.shards import decode_all, load_shard, pack_shard
from scarce.trainer.store import open_store


def main() -> None:
    """Time decode, shard build and shard load; print and optionally write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="dataset folder")
    parser.add_argument("--format", default="imagefolder")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--channels", type=int, default=1, choices=(1, 3))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epoch-throughput", type=float, nargs="*", default=[43.0],
                        help="training images/s to compare an epoch against")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    source = open_store(str(args.source.resolve()))
    records = scan_dataset(args.format, source)
    keys = [r.key for r in records]

    def decoder(data: bytes, name: str):
        return decode_image(data, channels=args.channels, size=args.image_size, name=name)

    decode_s, build_s, load_s = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(tmp)
        for _ in range(args.repeats):
            started = time.perf_counter()
            images = decode_all(source, keys, decoder, threads=args.threads)
            decode_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            images = decode_all(source, keys, decoder, threads=args.threads)
            store.put_bytes("shard.npz", pack_shard(images, "0" * 64))
            build_s.append(time.perf_counter() - started)
            shards._cache.clear()
            started = time.perf_counter()
            load_shard(store, "shard.npz", expected_digest="0" * 64, count=len(keys))
            load_s.append(time.perf_counter() - started)
    figures = {
        "dataset": str(args.source), "images": len(keys), "imageSize": args.image_size,
        "channels": args.channels, "threads": args.threads,
        "shardMB": round(images.nbytes / 2**20, 1),
        "decodeEpochSeconds": round(statistics.median(decode_s), 3),
        "shardBuildSeconds": round(statistics.median(build_s), 3),
        "shardLoadSeconds": round(statistics.median(load_s), 3),
        "trainingEpochSeconds": {
            str(rate): round(len(keys) / rate, 3) for rate in args.epoch_throughput
        },
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
