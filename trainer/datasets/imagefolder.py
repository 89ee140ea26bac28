"""The generic class-per-folder layout: ``<class>/<image>``, masks beside their images.

Layout (relative to the dataset root)::

    good/0001.png
    scratch/0002.jpg
    scratch/0002_mask.png      # optional pixel mask of scratch/0002.jpg (white = defect)

A file whose name ends in ``_mask.png`` is always a mask, never an image. Only files exactly
two levels deep count; files at the root (``SOURCE.md``, ``MANIFEST.csv``), deeper folders,
hidden files and unknown extensions are ignored, so the folders in ``../shared/datasets`` can be
read as they lie.
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

if TYPE_CHECKING:
    from scarce.trainer.store import Store

#: Extensions read as images, compared lower-case.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
MASK_SUFFIX = "_mask.png"


@register_format
class ImageFolderFormat(DatasetFormat):
    """``<class>/<image>`` with optional ``<class>/<image-stem>_mask.png`` masks."""

    name: ClassVar[str] = "imagefolder"
    default_good_class: ClassVar[str] = "good"

    def scan(self, store: Store, options: Mapping[str, Any]) -> list[ImageRecord]:
        root, rels = list_dataset_files(store, options)
        images: dict[tuple[str, str], list[str]] = defaultdict(list)
        masks: dict[tuple[str, str], str] = {}
        ignored: dict[str, list[str]] = defaultdict(list)
        for rel in rels:
            parts = rel.split("/")
            if len(parts) != 2:
                continue
            label, filename = parts
            if filename.lower().endswith(MASK_SUFFIX):
                masks[(label, filename[: -len(MASK_SUFFIX)])] = rel
            elif PurePosixPath(filename).suffix.lower() in IMAGE_EXTENSIONS:
                images[(label, PurePosixPath(filename).stem)].append(rel)
            else:
                ignored[label].append(filename)

        for (label, stem), mask in masks.items():
            candidates = images.get((label, stem), [])
            if not candidates:
                raise DatasetError(
                    f"mask {join_key(root, mask)!r} has no image {stem}.<ext> beside it "
                    f"in class folder {join_key(root, label)!r}"
                )
            if len(candidates) > 1:
                # a.png and a.jpg would both claim a_mask.png; guessing would mislabel pixels.
                raise DatasetError(
                    f"mask {join_key(root, mask)!r} is ambiguous: several images share its stem "
                    f"({format_names(join_key(root, c) for c in candidates)})"
                )

        labels_with_images = {label for label, _ in images}
        for label in sorted({label for label, _ in masks} | set(ignored)):
            if label not in labels_with_images:
                found = [k.rsplit("/", 1)[1] for (lb, _), k in masks.items() if lb == label]
                raise DatasetError(
                    f"class folder {join_key(root, label) + '/'!r} holds no images "
                    f"(extensions {', '.join(sorted(IMAGE_EXTENSIONS))}); found only: "
                    f"{format_names(found + ignored[label])}"
                )

        return [
            ImageRecord(
                key=join_key(root, rel),
                label=label,
                mask_key=join_key(root, masks[(label, stem)]) if (label, stem) in masks else None,
            )
            for (label, stem), rel_list in images.items()
            for rel in rel_list
        ]
