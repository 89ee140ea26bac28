"""PlantVillage leaf images (Hughes and Salathé, 2015), in its ``<Plant>___<Disease>`` layout.

Layout, exactly as in ``../shared/datasets/plantvillage`` (and the usual public copies)::

    PlantVillage/Potato___Late_blight/0085f0a6-...___RS_LB 4640.JPG
    PlantVillage/Potato___healthy/00fc2ee5-...___RS_HL 1864.JPG

A class folder is named ``<Plant>___<Disease>`` (three underscores; the first ``___`` splits it,
so ``Pepper,_bell___Bacterial_spot`` is plant ``Pepper,_bell``). The **label is the disease
part** (``Late_blight``, ``healthy``); ``healthy`` is the no-defect class. Because every plant
has a ``healthy`` class, labels of different plants would merge, so a dataset holding several
plants needs option ``plant`` (``Potato``, compared ignoring case), which keeps that plant's
classes only; folders of other plants, and folders without ``___`` that do not start with the
plant's name, are then ignored.

The class folders may lie at the dataset root or one folder down: when the root holds no
``<Plant>___<Disease>`` folder but exactly one subfolder does (``PlantVillage/``), that
subfolder is used, so the shared copy reads with no ``root`` option.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar

from scarce.trainer.datasets.base import (
    DatasetError,
    DatasetFormat,
    ImageRecord,
    format_names,
    join_key,
    list_dataset_files,
    register_format,
)
from scarce.trainer.datasets.imagefolder import IMAGE_EXTENSIONS

if TYPE_CHECKING:
    from scarce.trainer.store import Store

PLANT_OPTION = "plant"
SEPARATOR = "___"


@register_format
class PlantVillageFormat(DatasetFormat):
    """``[<folder>/]<Plant>___<Disease>/<image>``; labels are the disease part."""

    name: ClassVar[str] = "plantvillage"
    default_good_class: ClassVar[str] = "healthy"
    option_names: ClassVar[frozenset[str]] = frozenset({PLANT_OPTION})

    def scan(self, store: Store, options: Mapping[str, Any]) -> list[ImageRecord]:
        root, rels = list_dataset_files(store, options)
        plant = options.get(PLANT_OPTION)
        if plant is not None and (not isinstance(plant, str) or not plant.strip()):
            raise DatasetError(
                f"option {PLANT_OPTION}: must be a plant name such as 'Potato', got {plant!r}"
            )
        base = _class_level(rels, root)
        prefix = f"{base}/" if base else ""
        folders: dict[str, list[str]] = defaultdict(list)  # class folder -> image rels
        others: dict[str, list[str]] = defaultdict(list)
        for rel in rels:
            parts = rel[len(prefix) :].split("/") if rel.startswith(prefix) else []
            if len(parts) != 2:
                continue
            if PurePosixPath(parts[1]).suffix.lower() in IMAGE_EXTENSIONS:
                folders[parts[0]].append(rel)
            else:
                others[parts[0]].append(parts[1])

        where = join_key(root, base) if base else root
        by_plant: dict[str, dict[str, str]] = defaultdict(dict)  # plant -> {label: folder}
        for folder in sorted(set(folders) | set(others)):
            plant_part, sep, disease = folder.partition(SEPARATOR)
            if plant is not None and not folder.lower().startswith(plant.lower()):
                continue  # another plant's folder, whatever its spelling
            if not sep or not plant_part or not disease:
                if folder not in folders:
                    continue  # no images: not a class folder
                raise DatasetError(
                    f"folder {join_key(where, folder + '/')!r} is not a PlantVillage class "
                    f"folder: expected <Plant>{SEPARATOR}<Disease>, e.g. Potato___Late_blight"
                )
            if plant is not None and plant_part.lower() != plant.lower():
                continue
            if folder not in folders:
                raise DatasetError(
                    f"class folder {join_key(where, folder + '/')!r} holds no images "
                    f"(extensions {', '.join(sorted(IMAGE_EXTENSIONS))}); found only: "
                    f"{format_names(others[folder])}"
                )
            labels = by_plant[plant_part]
            if disease in labels:
                raise DatasetError(
                    f"folders {join_key(where, labels[disease] + '/')!r} and "
                    f"{join_key(where, folder + '/')!r} both give class {disease!r}; keep one"
                )
            labels[disease] = folder

        if plant is not None and not by_plant:
            plants = sorted({f.partition(SEPARATOR)[0] for f in folders if SEPARATOR in f})
            raise DatasetError(
                f"option {PLANT_OPTION}: no class folder of plant {plant!r} under "
                f"{where or 'the store root'!r}; plants found: {', '.join(plants) or 'none'}"
            )
        if len(by_plant) > 1:
            raise DatasetError(
                f"the dataset holds several plants ({', '.join(sorted(by_plant))}) whose classes "
                f"would merge (labels are the disease part, e.g. healthy); set option "
                f"{PLANT_OPTION} to one of them"
            )
        return [
            ImageRecord(key=join_key(root, rel), label=disease)
            for labels in by_plant.values()
            for disease, folder in labels.items()
            for rel in folders[folder]
        ]


def _class_level(rels: list[str], root: str) -> str:
    """The folder (relative to root) holding the class folders: '' or one subfolder."""
    split_parts = [rel.split("/") for rel in rels]
    if any(len(p) == 2 and SEPARATOR in p[0] for p in split_parts):
        return ""
    below = sorted({p[0] for p in split_parts if len(p) == 3 and SEPARATOR in p[1]})
    if len(below) > 1:
        raise DatasetError(
            f"several folders under {root or 'the store root'!r} hold PlantVillage class "
            f"folders ({', '.join(below)}); set option root to one of them"
        )
    return below[0] if below else ""
