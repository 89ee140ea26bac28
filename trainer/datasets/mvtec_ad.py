"""MVTec AD (Bergmann et al., CVPR 2019), one category at a time, in its published layout.

Layout, exactly as MVTec ships it (and as ``../shared/datasets/mvtec-ad`` holds ``metal_nut``)::

    metal_nut/train/good/000.png
    metal_nut/test/good/000.png                  # absent from the shared partial copy
    metal_nut/test/scratch/000.png
    metal_nut/ground_truth/scratch/000_mask.png  # mask of test/scratch/000.png (white = defect)
    metal_nut/readme.txt, license.txt            # ignored

MVTec AD is an anomaly-detection set (train holds good images only); SCARCE uses it for
supervised classification, so one category's images are **pooled**: ``train/good`` and
``test/good`` become class ``good``, each ``test/<defect>`` becomes class ``<defect>``, and
SCARCE draws its own frozen split from the pool. Masks from ``ground_truth/<defect>/`` are
attached to the test image of the same stem; images without a mask are kept (the shared copy
has no masks at all), but a mask without its image means a damaged copy and is refused.

Option ``category`` picks the category (``metal_nut``) when the dataset root holds several
category folders; it may be left out when there is only one, or when the root is the category
folder itself (``train/`` and ``test/`` at its top).
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
from scarce.trainer.datasets.imagefolder import IMAGE_EXTENSIONS, MASK_SUFFIX

if TYPE_CHECKING:
    from scarce.trainer.store import Store

CATEGORY_OPTION = "category"
_SPLITS = ("train", "test")
_GROUND_TRUTH = "ground_truth"
_LAYOUT_FOLDERS = frozenset({*_SPLITS, _GROUND_TRUTH})


@register_format
class MVTecADFormat(DatasetFormat):
    """``<category>/{train,test}/<class>/<image>``, masks in ``<category>/ground_truth/``."""

    name: ClassVar[str] = "mvtec-ad"
    default_good_class: ClassVar[str] = "good"
    option_names: ClassVar[frozenset[str]] = frozenset({CATEGORY_OPTION})

    def scan(self, store: Store, options: Mapping[str, Any]) -> list[ImageRecord]:
        root, rels = list_dataset_files(store, options)
        category = _find_category(rels, options.get(CATEGORY_OPTION), root, store)
        base = join_key(root, category) if category else root
        prefix = f"{category}/" if category else ""
        # (split, class folder) -> {stem: [rel]} for images; (class, stem) -> rel for masks.
        images: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        masks: dict[tuple[str, str], str] = {}
        other_files: dict[tuple[str, str], list[str]] = defaultdict(list)
        for rel in rels:
            if not rel.startswith(prefix):
                continue
            parts = rel[len(prefix) :].split("/")
            if len(parts) != 3 or parts[0] not in _LAYOUT_FOLDERS:
                continue  # readme.txt, license.txt and anything else outside the layout
            folder, label, filename = parts
            if folder == _GROUND_TRUTH:
                if filename.lower().endswith(MASK_SUFFIX):
                    masks[(label, filename[: -len(MASK_SUFFIX)])] = rel
            elif PurePosixPath(filename).suffix.lower() in IMAGE_EXTENSIONS:
                images[(folder, label)][PurePosixPath(filename).stem].append(rel)
            else:
                other_files[(folder, label)].append(filename)

        for (folder, label), names in sorted(other_files.items()):
            if (folder, label) not in images:
                raise DatasetError(
                    f"class folder {join_key(base, f'{folder}/{label}/')!r} holds no images "
                    f"(extensions {', '.join(sorted(IMAGE_EXTENSIONS))}); found only: "
                    f"{format_names(names)}"
                )
        mask_of: dict[str, str] = {}
        for (label, stem), mask in sorted(masks.items()):
            image = image_of_mask(
                root, mask, images.get(("test", label), {}).get(stem, []),
                f"test/{label}/{stem}.<ext>",
            )
            mask_of[image] = mask

        return [
            ImageRecord(
                key=join_key(root, rel),
                label=label,
                mask_key=join_key(root, mask_of[rel]) if rel in mask_of else None,
            )
            for (_, label), stems in images.items()
            for rels_of_stem in stems.values()
            for rel in rels_of_stem
        ]


def _find_category(rels: list[str], wanted: Any, root: str, store: Store) -> str:
    """The category folder to read, relative to the dataset root ('' if the root is one)."""
    if wanted is not None and (not isinstance(wanted, str) or not wanted or "/" in wanted):
        raise DatasetError(
            f"option {CATEGORY_OPTION}: must be a category folder name such as 'metal_nut', "
            f"got {wanted!r}"
        )
    split_parts = [rel.split("/") for rel in rels]
    root_is_category = any(len(p) == 3 and p[0] in _SPLITS for p in split_parts)
    categories = sorted({p[0] for p in split_parts if len(p) == 4 and p[1] in _SPLITS})
    if wanted is not None:
        if wanted in categories:
            return wanted
        # The root may be the category folder itself; its name is the last segment of the
        # `root` option or of the store URI.
        here = (root or getattr(store, "uri", "")).rstrip("/").rsplit("/", 1)[-1]
        if root_is_category and here == wanted:
            return ""
        found = (
            f"the dataset root is itself a category folder ({here!r})"
            if root_is_category
            else f"categories found: {', '.join(categories) or 'none'}"
        )
        raise DatasetError(f"option {CATEGORY_OPTION}: no MVTec AD category {wanted!r}; {found}")
    if root_is_category:
        return ""
    if len(categories) == 1:
        return categories[0]
    if not categories:
        raise DatasetError(
            f"no MVTec AD category found under {root or 'the store root'!r}: expected "
            "<category>/train/good/*.png and <category>/test/<defect>/*.png"
        )
    raise DatasetError(
        f"the dataset holds several MVTec AD categories ({', '.join(categories)}); set option "
        f"{CATEGORY_OPTION} to one of them"
    )
