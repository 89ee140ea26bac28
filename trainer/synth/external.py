"""Kind `external`: a vendor's drop of synthetic images, laid out ``<class>/<image>``.

The generator is a black box (report §3.1): SCARCE only reads what was delivered. Class names
must be the dataset's defect classes; a class with fewer than `perClass` images is an error
naming it. When a class has more, a subset is drawn from the source's seed. Leakage (images
equal or near-identical to test or training images) is checked by the split unit on every
source alike, before the set is published (`scarce.trainer.leakage`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from scarce.trainer.config import SyntheticConfig
from scarce.trainer.datasets import scan_dataset
from scarce.trainer.datasets.images import decode_image
from scarce.trainer.store import open_store
from scarce.trainer.synth.base import (
    SyntheticSet,
    SyntheticSource,
    SyntheticSourceError,
    TrainingPool,
    register_source,
)


@register_source
class ExternalSource(SyntheticSource):
    """Reads a delivered folder or bucket prefix; selects `perClass` images per defect class."""

    kind = "external"

    def generate(
        self,
        config: SyntheticConfig,
        pool: TrainingPool,
        *,
        image_size: int,
        channels: int,
        base_dir: str | None = None,
    ) -> SyntheticSet:
        """Select, check and decode the drop's images for every defect class."""
        assert config.uri is not None  # guaranteed by SyntheticConfig
        store = open_store(config.uri, base_dir=Path(base_dir) if base_dir else None)
        records = scan_dataset("imagefolder", store, {"requireGood": False})
        by_class: dict[str, list] = {}
        for record in records:
            by_class.setdefault(record.label, []).append(record)

        defect_classes = pool.defect_classes
        unknown = sorted(set(by_class) - set(pool.classes))
        if unknown:
            raise SyntheticSourceError(
                f"synthetic source {config.name!r} ({config.uri}): classes {unknown} are not "
                f"classes of the dataset ({', '.join(pool.classes)})"
            )
        images: list[np.ndarray] = []
        labels: list[str] = []
        out_records: list[dict] = []
        for class_name in defect_classes:
            available = by_class.get(class_name, [])
            if len(available) < config.per_class:
                raise SyntheticSourceError(
                    f"synthetic source {config.name!r}: class {class_name!r} has "
                    f"{len(available)} images in {config.uri}, perClass asks for "
                    f"{config.per_class}"
                )
            order = np.random.default_rng([config.seed, len(available)]).permutation(
                len(available)
            )
            for index in sorted(order[: config.per_class]):
                record = available[index]
                data = store.get_bytes(record.key, verify=False)
                digest = hashlib.sha256(data).hexdigest()
                images.append(
                    decode_image(data, channels=channels, size=image_size, name=record.key)
                )
                labels.append(class_name)
                out_records.append({"label": class_name, "origin": record.key, "sha256": digest})
        stacked = (
            np.stack(images)
            if images
            else np.zeros((0, channels, image_size, image_size), dtype=np.uint8)
        )
        return SyntheticSet(images=stacked, labels=labels, records=out_records)
