"""Marble Surface Anomaly Detection (Kaggle, "wardaddy24"), in its ``train|test/<class>`` layout.

Layout, exactly as in ``../shared/datasets/marble-surface`` (the Kaggle dataset has the same
``train/`` and ``test/`` levels, with classes good, crack, joint and dot)::

    train/good/<name>.jpg
    test/crack/_0_1280_20210525_14425.jpg
    masks/test/crack/_0_1280_20210525_14425.png   # optional pixel mask of that image
    SOURCE.md, MANIFEST.csv                        # ignored

Labels are the class folder names, as they are (``good`` is the no-defect class); any class
folder is accepted, so a copy with only some of the four classes reads too. SCARCE pools
``train`` and ``test`` (split folder names compared ignoring case) and draws its own split.

Mask rule: the mask of ``<split>/<class>/<stem>.<ext>`` is ``masks/<split>/<class>/<stem>.png``
(the Marble Crack Segmentation masks: same stem, PNG). Images without a mask are kept; a mask
with no image of its stem, or one whose stem several images share (``a.jpg`` and ``a.png``), is
refused, naming it. The shared masks are palette PNGs holding 0 (background) and 1 (crack).
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
    image_of_mask,
    join_key,
    list_dataset_files,
    register_format,
)
from scarce.trainer.datasets.imagefolder import IMAGE_EXTENSIONS

if TYPE_CHECKING:
    from scarce.trainer.store import Store

SPLITS = frozenset({"train", "test"})
MASK_FOLDER = "masks"


@register_format
class MarbleFormat(DatasetFormat):
    """``{train,test}/<class>/<image>`` with optional ``masks/{train,test}/<class>/<stem>.png``."""

    name: ClassVar[str] = "marble"
    default_good_class: ClassVar[str] = "good"

    def scan(self, store: Store, options: Mapping[str, Any]) -> list[ImageRecord]:
        root, rels = list_dataset_files(store, options)
        # (split lower-case, class, stem) -> image rels; the same key -> mask rel
        images: dict[tuple[str, str, str], list[str]] = defaultdict(list)
        masks: dict[tuple[str, str, str], str] = {}
        others: dict[str, list[str]] = defaultdict(list)  # class folder -> non-image names
        folders: set[str] = set()
        for rel in rels:
            parts = rel.split("/")
            path = PurePosixPath(parts[-1])
            if len(parts) == 4 and parts[0] == MASK_FOLDER and parts[1].lower() in SPLITS:
                if path.suffix.lower() == ".png":
                    masks[(parts[1].lower(), parts[2], path.stem)] = rel
            elif len(parts) == 3 and parts[0].lower() in SPLITS:
                folder = f"{parts[0]}/{parts[1]}"
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    images[(parts[0].lower(), parts[1], path.stem)].append(rel)
                    folders.add(folder)
                else:
                    others[folder].append(parts[-1])

        empty = sorted(set(others) - folders)
        if empty:
            folder = empty[0]
            raise DatasetError(
                f"class folder {join_key(root, folder + '/')!r} holds no images "
                f"(extensions {', '.join(sorted(IMAGE_EXTENSIONS))}); found only: "
                f"{format_names(others[folder])}"
            )
        mask_of: dict[str, str] = {}
        for (split, label, stem), mask in sorted(masks.items()):
            image = image_of_mask(
                root, mask, images.get((split, label, stem), []), f"{split}/{label}/{stem}.<ext>"
            )
            mask_of[image] = mask

        return [
            ImageRecord(
                key=join_key(root, rel),
                label=label,
                mask_key=join_key(root, mask_of[rel]) if rel in mask_of else None,
            )
            for (_, label, _), rel_list in images.items()
            for rel in rel_list
        ]
