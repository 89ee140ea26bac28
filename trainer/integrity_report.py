"""The report's integrity sections: what the leakage check found and the fidelity of every
synthetic source (report §4.1, Figure 1), taken from the split and fidelity results.

Torch-free, like the rest of the reducer: Figure 1 is drawn from the packed uint8 shards
(numpy), never by running a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scarce.trainer.config import PLACEBO_ARM
from scarce.trainer.figures import fidelity_figure
from scarce.trainer.shards import unpack_shard
from scarce.trainer.store import ObjectNotFound, Store
from scarce.trainer.unit import fidelity_key


def leakage_section(split: Mapping[str, Any]) -> dict[str, Any] | None:
    """The split result's leakage section, with every refused source's error (None when the
    split predates the check)."""
    leakage = split.get("leakage")
    if leakage is None:
        return None
    refused = {
        name: summary["error"]
        for name, summary in split.get("synthetic", {}).items()
        if "error" in summary
    }
    return {**leakage, "refused": refused}


def uses_refused_source(unit: Mapping[str, Any], refused: Mapping[str, str]) -> bool:
    """Whether a train result's unit trained on (or copied the counts of) a refused source.

    Such results can only be stale ones, from a run under policy flag; they never enter a
    report made under refuse.
    """
    arm = unit.get("arm")
    source = unit.get("placeboSource") if arm == PLACEBO_ARM else arm
    return source in refused


def fidelity_section(result: Mapping[str, Any]) -> dict[str, Any]:
    """The report's view of a fidelity result: the extractor, and the mean cosine of every
    source and class with its n (examples stay in the result, for the figure)."""

    def sources(measured: Mapping[str, Any]) -> dict[str, Any]:
        return {
            name: (
                {"error": found["error"]} if "error" in found else {
                    "meanCosine": found["meanCosine"],
                    "n": found["n"],
                    "perClass": {
                        cls: {k: v[k] for k in ("meanCosine", "sdCosine", "n", "nReal")}
                        for cls, v in found["perClass"].items()
                    },
                }
            )
            for name, found in measured["sources"].items()
        }

    return {
        "extractor": result["extractor"],
        "realReference": result.get("realReference", {}),
        "sources": sources(result),
        "alternatives": [
            {"extractor": other["extractor"], "sources": sources(other)}
            for other in result.get("alternatives", [])
        ],
    }


def fidelity_rows(
    store: Store, result: Mapping[str, Any], split: Mapping[str, Any], hardest_class: str
) -> list[dict[str, Any]]:
    """Figure 1's rows for one dataset: per source, the recorded examples of the hardest class,
    with the pixels read from the split and synthetic shards."""
    manifest = store.get_json(split["manifestKey"])
    real = unpack_shard(
        store.get_bytes(split["shardKey"]), expected_digest=split["splitDigest"],
        where=split["shardKey"], count=len(manifest["items"]),
    )
    rows = []
    for name, found in result["sources"].items():
        examples = found.get("perClass", {}).get(hardest_class, {}).get("examples", [])
        published = split.get("synthetic", {}).get(name, {})
        if not examples or published.get("digest") != found.get("setDigest"):
            continue
        synth_manifest = store.get_json(published["manifestKey"])
        synthetic = unpack_shard(
            store.get_bytes(published["shardKey"]), expected_digest=published["digest"],
            where=published["shardKey"], count=len(synth_manifest["items"]),
        )
        for example in examples:
            index = example["synthetic"]
            mask = None if synthetic.masks is None else synthetic.masks[index]
            rows.append({
                "source": name,
                "label": hardest_class,
                "synthetic": synthetic.images[index],
                "mask": mask if mask is not None and mask.any() else None,
                "real": real.images[example["real"]],
                "cosine": example["cosine"],
                "syntheticName": example.get("syntheticOrigin"),
                "realName": manifest["items"][example["real"]]["key"],
            })
    return rows


def fidelity_figures(store: Store, benchmark: str, report: Mapping[str, Any]) -> dict[str, bytes]:
    """``figures/<dataset>-fidelity.png`` for every dataset of the report with fidelity."""
    out = {}
    for ds in report["datasets"]:
        if "fidelity" not in ds:
            continue
        try:
            result = store.get_json(fidelity_key(benchmark, ds["dataset"]))
            split = store.get_json(f"results/{benchmark}/{ds['dataset']}/split.json")
        except ObjectNotFound:
            continue
        png = fidelity_figure(fidelity_rows(store, result, split, ds["hardestClass"]))
        if png:
            out[f"figures/{ds['dataset']}-fidelity.png"] = png
    return out
