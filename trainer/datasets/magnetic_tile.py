"""Magnetic Tile surface defects (Huang, Qiu and Yuan, 2020), in its published layout.

Layout, exactly as in ``../shared/datasets/magnetic-tile`` (and the authors' repository)::

    MT_Blowhole/Imgs/exp1_num_108719.jpg   # grayscale image
    MT_Blowhole/Imgs/exp1_num_108719.png   # its pixel mask, same stem (all black in MT_Free)

Labels are the folder names without ``MT_``: Blowhole, Break, Crack, Fray, Free, Uneven.
``Free`` is the no-defect class. The published set pairs every image with a mask, so a missing
or orphan mask means a damaged copy and is refused rather than silently skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar

from scarce.trainer.datasets.base import (
    DatasetError,
    DatasetFormat,
    ImageRecord,
    join_key,
    list_dataset_files,
    register_format,
)

if TYPE_CHECKING:
    from scarce.trainer.store import Store

CLASS_PREFIX = "MT_"
IMAGE_FOLDER = "Imgs"


@register_format
class MagneticTileFormat(DatasetFormat):
    """``MT_<Class>/Imgs/<id>.jpg`` images with ``MT_<Class>/Imgs/<id>.png`` masks."""

    name: ClassVar[str] = "magnetic-tile"
    default_good_class: ClassVar[str] = "Free"

    def scan(self, store: Store, options: Mapping[str, Any]) -> list[ImageRecord]:
        root, rels = list_dataset_files(store, options)
        # (class folder, stem) -> key, for images (.jpg) and masks (.png) separately.
        images: dict[tuple[str, str], str] = {}
        masks: dict[tuple[str, str], str] = {}
        jpg_counts: dict[str, int] = {}  # class folder -> number of .jpg images
        for rel in rels:
            parts = rel.split("/")
            if len(parts) != 3 or not parts[0].startswith(CLASS_PREFIX):
                continue  # SOURCE.md and anything outside MT_*/ is not part of the layout
            folder, sub, filename = parts
            if sub != IMAGE_FOLDER:
                continue
            jpg_counts.setdefault(folder, 0)
            path = PurePosixPath(filename)
            suffix = path.suffix.lower()
            if suffix == ".jpg":
                images[(folder, path.stem)] = rel
                jpg_counts[folder] += 1
            elif suffix == ".png":
                masks[(folder, path.stem)] = rel

        for folder, count in sorted(jpg_counts.items()):
            if folder == CLASS_PREFIX:
                raise DatasetError(f"folder {join_key(root, folder)!r} has no class name after MT_")
            if count == 0:
                raise DatasetError(
                    f"class folder {join_key(root, f'{folder}/{IMAGE_FOLDER}')!r} holds no .jpg "
                    "images"
                )
        for item, rel in sorted(images.items()):
            if item not in masks:
                raise DatasetError(
                    f"image {join_key(root, rel)!r} has no mask {item[1]}.png beside it"
                )
        for item, rel in sorted(masks.items()):
            if item not in images:
                raise DatasetError(f"mask {join_key(root, rel)!r} has no image {item[1]}.jpg")

        return [
            ImageRecord(
                key=join_key(root, rel),
                label=folder[len(CLASS_PREFIX) :],
                mask_key=join_key(root, masks[(folder, stem)]),
            )
            for (folder, stem), rel in images.items()
        ]
