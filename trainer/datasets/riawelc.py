"""RIAWELC weld radiographs (Totino, Spagnolo and Perri, 2022), in the archive's layouts.

The published archive splits the 24,407 patches into ``training/``, ``validation/`` and
``testing/``, each holding one folder per class under Italian names; copies made by others
(``../shared/datasets/riawelc``, demo repositories) use the two-letter codes instead::

    training/Difetto2/bam5_Img1_A80_S2_[4][21].png     # the archive
    PO/bam5_Img3_A80_S3_[3][17].png                    # a copy with class codes

Both are read, with or without the split level; SCARCE pools the splits and draws its own.
Class folders are recognised by any of these names (compared ignoring case, spaces, ``_`` and
``-``), and the label is always the readable name of the first column:

=====================  ====  =========  =========================================
label                  code  archive    also accepted
=====================  ====  =========  =========================================
crack                  CR    Difetto4   cracks
lack_of_penetration    LP    Difetto1   lack of penetration
porosity               PO    Difetto2
no_defect              ND    NoDifetto  no defect (the no-defect class)
=====================  ====  =========  =========================================

Readable labels, not codes, because specs and reports name the class as the report does
("RIAWELC porosity"). The archive-name mapping is the one of the dataset's SOURCE.md and of
third-party loaders (the archive has no ``Difetto3``); it was not checked against the archive's
own documentation. A folder with images under any other name is refused, naming it, since a
silently dropped or misnamed class would change the benchmark.
"""

from __future__ import annotations

import re
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

#: label -> folder names that mean it (code, archive name, readable spellings).
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "crack": ("CR", "Difetto4", "crack", "cracks"),
    "lack_of_penetration": ("LP", "Difetto1", "lack of penetration"),
    "porosity": ("PO", "Difetto2", "porosity"),
    "no_defect": ("ND", "NoDifetto", "no defect"),
}
#: Split folders of the archive (and their usual short forms); their contents are pooled.
SPLIT_FOLDERS = frozenset({"training", "validation", "testing", "train", "val", "valid", "test"})


def _normal(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).lower()


_LABEL_OF = {_normal(alias): label for label, names in CLASS_NAMES.items() for alias in names}


def riawelc_label(folder: str) -> str | None:
    """The label of a RIAWELC class folder name (``'Difetto2'`` -> ``'porosity'``), or None."""
    return _LABEL_OF.get(_normal(folder))


@register_format
class RiawelcFormat(DatasetFormat):
    """``[<split>/]<class>/<image>`` with class folders named by code, archive or readable name."""

    name: ClassVar[str] = "riawelc"
    default_good_class: ClassVar[str] = "no_defect"

    def scan(self, store: Store, options: Mapping[str, Any]) -> list[ImageRecord]:
        root, rels = list_dataset_files(store, options)
        # class folder (its path relative to root) -> image keys relative to root
        folders: dict[str, list[str]] = defaultdict(list)
        others: dict[str, list[str]] = defaultdict(list)
        for rel in rels:
            parts = rel.split("/")
            nested = len(parts) == 3 and parts[0].lower() in SPLIT_FOLDERS
            if len(parts) != 2 and not nested:
                continue  # SOURCE.md, MANIFEST.csv and anything deeper
            folder = "/".join(parts[:-1])
            if PurePosixPath(parts[-1]).suffix.lower() in IMAGE_EXTENSIONS:
                folders[folder].append(rel)
            else:
                others[folder].append(parts[-1])

        accepted = "; ".join(f"{label}: {', '.join(names)}" for label, names in CLASS_NAMES.items())
        claimed: dict[tuple[str, str], str] = {}  # (split folder, label) -> class folder
        records = []
        for folder in sorted(set(folders) | set(others)):
            parent, _, name = folder.rpartition("/")
            label = riawelc_label(name)
            if label is None:
                if folder not in folders or (not parent and name.lower() in SPLIT_FOLDERS):
                    continue  # no images there: not a class folder (notes, a split's README)
                raise DatasetError(
                    f"folder {join_key(root, folder + '/')!r} holds images but is not a RIAWELC "
                    f"class folder; accepted names (case, spaces, '_' and '-' ignored): "
                    f"{accepted}"
                )
            if folder not in folders:
                raise DatasetError(
                    f"class folder {join_key(root, folder + '/')!r} holds no images "
                    f"(extensions {', '.join(sorted(IMAGE_EXTENSIONS))}); found only: "
                    f"{format_names(others[folder])}"
                )
            if (parent, label) in claimed:
                raise DatasetError(
                    f"folders {join_key(root, claimed[(parent, label)] + '/')!r} and "
                    f"{join_key(root, folder + '/')!r} both hold class {label!r}; keep one"
                )
            claimed[(parent, label)] = folder
            records += [ImageRecord(join_key(root, rel), label) for rel in folders[folder]]
        return records
