"""The fidelity unit: how close each synthetic image is to real defects of its class (report §4.1,
Figure 1).

For every synthetic source and defect class: the cosine similarity, in a feature space, of each
synthetic image to its nearest real *training* defect of the same class, and the mean over the
class. The feature extractor is named in the result; by default it is the real-only model of
seed 0 (the train unit ``train/<dataset>/real/kfull/seed0`` saves its weights for this), its
features taken before the classifier (timm ``forward_head(forward_features(x),
pre_logits=True)``). Test images are never looked at.

For reading the numbers, ``realReference`` gives the same statistic for the real training
defects themselves (each one's nearest *other* training defect of its class): a synthetic class
whose mean comes close to it is about as close to the real images as they are to each other.

The figure of the report shows, per class, the three synthetic images of highest similarity
(chosen by this number, not by hand) beside their nearest real defect; their indices are
recorded under ``examples``.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scarce.trainer.config import REAL_ARM
from scarce.trainer.data import load_split, load_synthetic
from scarce.trainer.splits import manifest_digest
from scarce.trainer.store import ObjectNotFound, Store
from scarce.trainer.train import create_model, load_pretrained, to_input
from scarce.trainer.unit import WorkUnit, result_key_for

#: Synthetic images shown per class in Figure 1.
EXAMPLES = 3
FEATURES = "timm forward_head(forward_features(x), pre_logits=True), L2-normalised"


class FidelityError(ValueError):
    """The fidelity unit cannot measure (its extractor is missing): permanent, says why."""


def nearest_real(synthetic: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of each L2-normalised synthetic feature row to its nearest real row,
    and that row's index: ``(cosine [N], index [N])``."""
    if len(real) == 0:
        raise ValueError("real: no real features to compare with")
    # Rounding can put a unit vector's dot with itself a hair above 1: clip to the true range.
    similarity = np.clip(synthetic @ real.T, -1.0, 1.0)
    index = similarity.argmax(axis=1)
    return similarity[np.arange(len(synthetic)), index], index


def leave_one_out_nearest(real: np.ndarray) -> np.ndarray:
    """Cosine of each real row to its nearest *other* row (the real-to-real reference)."""
    similarity = np.clip(real @ real.T, -1.0, 1.0)
    np.fill_diagonal(similarity, -np.inf)
    return similarity.max(axis=1)


def class_fidelity(
    synthetic: np.ndarray,
    real: np.ndarray,
    real_rows: np.ndarray,
    *,
    examples: int = EXAMPLES,
) -> dict[str, Any]:
    """Figure 1's numbers for one class: mean (and spread) of each synthetic image's cosine to
    its nearest real defect, and the `examples` most similar synthetic images.

    `real_rows` maps rows of `real` to indices in the split manifest, so the examples name the
    real image itself (``real``) beside the synthetic index (``synthetic``, a row of `synthetic`).
    """
    cosine, nearest = nearest_real(synthetic, real)
    best = np.argsort(-cosine, kind="stable")[:examples]
    return {
        "meanCosine": round(float(cosine.mean()), 6),
        "sdCosine": round(float(cosine.std(ddof=1)), 6) if len(cosine) > 1 else None,
        "minCosine": round(float(cosine.min()), 6),
        "maxCosine": round(float(cosine.max()), 6),
        "n": len(cosine),
        "nReal": len(real),
        "examples": [
            {"synthetic": int(i), "real": int(real_rows[nearest[i]]),
             "cosine": round(float(cosine[i]), 6)}
            for i in best
        ],
    }


@torch.no_grad()
def extract_features(
    model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 256
) -> np.ndarray:
    """Pre-logit features of uint8 ``[N, C, S, S]`` images, L2-normalised: float32 ``[N, D]``."""
    model.eval()
    chunks = []
    for start in range(0, len(images), batch_size):
        x = to_input(torch.from_numpy(images[start : start + batch_size]), device, False)
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        chunks.append(F.normalize(features.flatten(1).float(), dim=1).cpu().numpy())
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(chunks)


def run_fidelity_unit(unit: WorkUnit, store: Store, *, device: str = "cpu") -> dict[str, Any]:
    """Measure every synthetic source of the unit's dataset; returns the result body."""
    started = time.perf_counter()
    if unit.threads:
        torch.set_num_threads(unit.threads)
    manifest, images = load_split(store, unit)
    classes: list[str] = manifest["classes"]
    torch_device = torch.device(device)
    extractors = [real_seed0_extractor(unit, store, len(classes))]
    if unit.model.pretrained and unit.model.weights_uri:
        extractors.append(pretrained_extractor(unit, store, len(classes)))

    split = store.get_json(result_key_for(unit.model_copy(update={"stage": "split"})))
    items = manifest["items"]
    defects = [c for c in classes if c != manifest["goodClass"]]
    # Training defects only: the test split is never looked at.
    real_rows = np.array(
        [i for i, item in enumerate(items) if item["role"] != "test" and item["label"] in defects],
        dtype=np.int64,
    )
    real_labels = np.array([items[i]["label"] for i in real_rows])
    sets: dict[str, Any] = {}
    for config in unit.synthetic:
        published = split.get("synthetic", {}).get(config.name, {})
        if "error" in published:
            sets[config.name] = published["error"]
        else:
            sets[config.name] = load_synthetic(store, unit, config.name)

    measured = [
        _measure(described, net.to(torch_device), images, real_rows, real_labels, defects, sets,
                 torch_device)
        for described, net in extractors
    ]
    primary, *others = measured
    return {
        **primary,
        "alternatives": others,
        "classes": classes,
        "goodClass": manifest["goodClass"],
        "seconds": round(time.perf_counter() - started, 3),
    }


def _measure(
    described: dict[str, Any],
    net: nn.Module,
    images: np.ndarray,
    real_rows: np.ndarray,
    real_labels: np.ndarray,
    defects: Sequence[str],
    sets: dict[str, Any],
    device: torch.device,
) -> dict[str, Any]:
    """Every source's fidelity, and the real-to-real reference, in one extractor's features."""
    real = RealDefects(extract_features(net, images[real_rows], device), real_labels, real_rows)
    reference = {}
    for cls in defects:
        features, _ = real.of(cls)
        if len(features) > 1:
            nearest = leave_one_out_nearest(features)
            reference[cls] = {"meanCosine": round(float(nearest.mean()), 6), "n": len(features)}
    sources = {
        name: (
            {"error": found} if isinstance(found, str)
            else _source_fidelity(net, *found, real, defects, device)
        )
        for name, found in sets.items()
    }
    return {"extractor": described, "realReference": reference, "sources": sources}


@dataclass(frozen=True)
class RealDefects:
    """Features of the real training defects, their labels and their split manifest indices."""

    features: np.ndarray
    labels: np.ndarray
    rows: np.ndarray

    def of(self, cls: str) -> tuple[np.ndarray, np.ndarray]:
        """(features, manifest indices) of one class."""
        chosen = self.labels == cls
        return self.features[chosen], self.rows[chosen]


def _source_fidelity(
    model: nn.Module,
    synth_manifest: dict[str, Any],
    synth_images: np.ndarray,
    real: RealDefects,
    defects: Sequence[str],
    device: torch.device,
) -> dict[str, Any]:
    synth_items = synth_manifest["items"]
    synth_labels = np.array([item["label"] for item in synth_items])
    synth_features = extract_features(model, synth_images, device)
    per_class = {}
    for cls in defects:
        mine = np.flatnonzero(synth_labels == cls)
        features, rows = real.of(cls)
        if len(mine) == 0 or len(rows) == 0:
            continue
        measured = class_fidelity(synth_features[mine], features, rows)
        for example in measured["examples"]:
            example["synthetic"] = int(mine[example["synthetic"]])
            example["syntheticOrigin"] = synth_items[example["synthetic"]].get("origin")
        per_class[cls] = measured
    total = sum(c["n"] for c in per_class.values())
    weighted = sum(c["meanCosine"] * c["n"] for c in per_class.values())
    return {
        "perClass": per_class,
        "meanCosine": round(weighted / total, 6) if total else None,
        "n": total,
        "setDigest": manifest_digest(synth_manifest),
    }


def real_seed0_extractor(
    unit: WorkUnit, store: Store, num_classes: int
) -> tuple[dict[str, Any], nn.Module]:
    """The real-only model of seed 0, as its train unit saved it; FidelityError if missing."""
    real = unit.model_copy(update={"stage": "train", "arm": REAL_ARM, "seed": 0, "k": None})
    key = result_key_for(real)
    try:
        result = store.get_json(key)
    except ObjectNotFound:
        raise FidelityError(
            f"fidelity of {unit.dataset.name!r} needs the real-only model of seed 0, but its "
            f"result {store.uri}/{key} is missing (did {real.key} fail?); run it, then rerun"
        ) from None
    weights = result.get("extractorWeights")
    if result.get("splitDigest") != unit.split_digest or not weights:
        raise FidelityError(
            f"fidelity of {unit.dataset.name!r}: the result {store.uri}/{key} "
            + ("was made for another split" if weights else "holds no saved weights (it "
               "predates the fidelity stage)")
            + f"; rerun {real.key} with --force"
        )
    data = store.get_bytes(weights["key"])
    if store.recorded_sha256(weights["key"]) not in (None, weights["sha256"]):
        raise FidelityError(
            f"fidelity of {unit.dataset.name!r}: weights {store.uri}/{weights['key']} were "
            f"overwritten since {key} was written; rerun {real.key} with --force"
        )
    model = _bare_model(unit, num_classes)
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return {
        "name": "real-only model of seed 0",
        "backbone": unit.model.backbone,
        "imageSize": unit.model.image_size,
        "weights": weights["key"],
        "sha256": weights["sha256"],
        "trainResult": key,
        "features": FEATURES,
    }, model


def pretrained_extractor(
    unit: WorkUnit, store: Store, num_classes: int
) -> tuple[dict[str, Any], nn.Module]:
    """The spec's pretrained weights (model.weightsUri) as a second, training-free extractor."""
    model = _bare_model(unit, num_classes)
    assert unit.model.weights_uri is not None
    load_pretrained(model, unit.model.weights_uri, store)
    return {
        "name": "pretrained weights (model.weightsUri)",
        "backbone": unit.model.backbone,
        "imageSize": unit.model.image_size,
        "weights": unit.model.weights_uri,
        "features": FEATURES,
    }, model


def _bare_model(unit: WorkUnit, num_classes: int) -> nn.Module:
    return create_model(unit.model.model_copy(update={"pretrained": False}), num_classes)
