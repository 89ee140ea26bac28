"""Dataset records, the registry of dataset formats and the checks every scan passes.

A dataset format knows one on-disk layout (a generic class-per-folder layout, or a public
dataset's layout exactly as published) and turns a store listing into :class:`ImageRecord`
rows. Formats are looked up by name, the way timm looks up models, so a benchmark spec can
say ``format: magnetic-tile`` and a wrong name gets an error listing the supported ones.

Scanning only lists keys; it never reads image bytes (decoding lives in ``images.py``).
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:  # the store pulls in the MinIO client; scanning needs only its interface
    from scarce.trainer.store import Store

__all__ = [
    "COMMON_OPTIONS",
    "DatasetError",
    "DatasetFormat",
    "ImageRecord",
    "check_key",
    "format_names",
    "get_format",
    "join_key",
    "list_dataset_files",
    "list_formats",
    "register_format",
    "scan_dataset",
]

#: Options every format accepts (camelCase, the spelling of spec files):
#: ``root``: a folder inside the store under which the dataset lies (``"PlantVillage"`` for
#: ``plantvillage/PlantVillage/<class>/...``). Record keys keep it as a prefix, so they stay
#: relative to the store root and can be passed to ``Store.get_bytes``.
ROOT_OPTION = "root"
#: ``requireGood`` (bool, default True): the data is a full dataset, so it needs a no-defect
#: class and at least one defect class (2 classes or more). False for a synthetic delivery,
#: which holds defect classes only: 1 class is then enough.
REQUIRE_GOOD_OPTION = "requireGood"
#: ``goodClass`` (str): name of the no-defect class; when given (and ``requireGood`` is true)
#: it must be one of the classes found. Defaults to no check, since a spec may rename it.
GOOD_CLASS_OPTION = "goodClass"
COMMON_OPTIONS = frozenset({ROOT_OPTION, REQUIRE_GOOD_OPTION, GOOD_CLASS_OPTION})


class DatasetError(ValueError):
    """A dataset cannot be used as it lies; the message names the file, class or folder."""


@dataclass(frozen=True)
class ImageRecord:
    """One labelled image of a dataset.

    Attributes
    ----------
    key:
        Key of the image, relative to the store root, ``/``-separated.
    label:
        Class name, as the dataset spells it (``"Blowhole"``, ``"good"``).
    mask_key:
        Key of the pixel mask of the image (white = defect), or ``None`` when there is none.
    """

    key: str
    label: str
    mask_key: str | None = None


class DatasetFormat(abc.ABC):
    """One dataset layout. Subclasses set the class attributes and implement :meth:`scan`."""

    #: Registry name, used in benchmark specs (``"imagefolder"``).
    name: ClassVar[str]
    #: Name of the no-defect class in this layout (``"good"``, ``"Free"``).
    default_good_class: ClassVar[str]
    #: Options this format understands besides :data:`COMMON_OPTIONS`; others are refused.
    option_names: ClassVar[frozenset[str]] = frozenset()

    @abc.abstractmethod
    def scan(self, store: Store, options: Mapping[str, Any]) -> list[ImageRecord]:
        """List the images of the dataset in ``store``; raise :class:`DatasetError` if unusable.

        Must raise for a class folder that holds no images, naming it. The result need not be
        sorted nor checked for keys and class counts: :func:`scan_dataset` does that for every
        format.
        """


_FORMATS: dict[str, DatasetFormat] = {}

F = TypeVar("F", bound=type[DatasetFormat])


def register_format(cls: F) -> F:
    """Class decorator: register one instance of a :class:`DatasetFormat` under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__}: a dataset format needs a non-empty `name`")
    if name in _FORMATS and type(_FORMATS[name]) is not cls:
        raise TypeError(
            f"dataset format {name!r} is already registered by {type(_FORMATS[name]).__qualname__}"
        )
    _FORMATS[name] = cls()
    return cls


def list_formats() -> list[str]:
    """Names of the registered dataset formats, sorted."""
    return sorted(_FORMATS)


def get_format(name: str) -> DatasetFormat:
    """The registered format called ``name``; :class:`DatasetError` listing the choices if none."""
    try:
        return _FORMATS[name]
    except KeyError:
        raise DatasetError(
            f"unknown dataset format {name!r}; supported formats: {', '.join(list_formats())}"
        ) from None


def scan_dataset(
    format_name: str, store: Store, options: Mapping[str, Any] | None = None
) -> list[ImageRecord]:
    """Scan a dataset with the named format and check that it can be benchmarked.

    Checks: the options are known, every key is a safe relative key, no key appears twice,
    there are at least 2 classes (1 with ``requireGood: false``) and the ``goodClass`` option,
    if given, names one of them. Empty classes are refused by the format's scan, which alone
    sees class folders that hold no images. The records come back sorted by label,
    then key, so the result does not depend on the order the store lists keys in (splits are
    drawn from this order).

    Parameters
    ----------
    format_name:
        A name from :func:`list_formats`.
    store:
        The store holding the dataset.
    options:
        ``root``, ``requireGood`` and ``goodClass`` (see :data:`COMMON_OPTIONS`), plus the
        format's own :attr:`DatasetFormat.option_names`.
    """
    fmt = get_format(format_name)
    options = _check_options(fmt, dict(options or {}))
    records = fmt.scan(store, options)
    where = _describe(store, options)
    _check_records(records, where)
    counts = Counter(r.label for r in records)
    require_good = options.get(REQUIRE_GOOD_OPTION, True)
    needed = 2 if require_good else 1
    found = ", ".join(f"{label} ({n})" for label, n in sorted(counts.items())) or "none"
    if len(counts) < needed:
        why = (
            "a benchmark dataset needs a no-defect class and at least one defect class"
            if require_good
            else "a delivery needs at least one class"
        )
        raise DatasetError(
            f"{where}: {why}, found {len(counts)} class(es) with format {fmt.name!r} "
            f"(classes: {found})"
        )
    good_class = options.get(GOOD_CLASS_OPTION)
    if require_good and good_class is not None and good_class not in counts:
        raise DatasetError(
            f"{where}: goodClass {good_class!r} is not one of the classes found ({found})"
        )
    return sorted(records, key=lambda r: (r.label, r.key))


def _check_options(fmt: DatasetFormat, options: dict[str, Any]) -> dict[str, Any]:
    allowed = COMMON_OPTIONS | fmt.option_names
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise DatasetError(
            f"dataset format {fmt.name!r}: unknown option(s) {', '.join(unknown)}; "
            f"supported options: {', '.join(sorted(allowed))}"
        )
    expected = {ROOT_OPTION: (str, "a folder"), GOOD_CLASS_OPTION: (str, "a class name")}
    for name, (kind, what) in expected.items():
        value = options.get(name)
        if value is not None and (not isinstance(value, kind) or not value.strip("/")):
            raise DatasetError(f"option {name}: must be {what} (a non-empty string), got {value!r}")
    if not isinstance(options.get(REQUIRE_GOOD_OPTION, True), bool):
        raise DatasetError(
            f"option {REQUIRE_GOOD_OPTION}: must be true or false, "
            f"got {options[REQUIRE_GOOD_OPTION]!r}"
        )
    return options


def _describe(store: Store, options: Mapping[str, Any]) -> str:
    uri = getattr(store, "uri", repr(store))
    root = options.get(ROOT_OPTION)
    return f"dataset at {uri}" + (f" (root {root!r})" if root else "")


def _check_records(records: Iterable[ImageRecord], where: str) -> None:
    seen: set[str] = set()
    for record in records:
        if not isinstance(record.label, str) or not record.label.strip() or "/" in record.label:
            raise DatasetError(f"{where}: bad class name {record.label!r} for {record.key!r}")
        for key in (record.key, record.mask_key):
            if key is None:
                continue
            check_key(key, what=f"{where}: key")
            if key in seen:
                raise DatasetError(f"{where}: {key!r} is listed twice (as an image or mask)")
            seen.add(key)


def check_key(key: str, *, what: str = "key") -> str:
    """Return ``key`` if it is a safe relative store key, else raise :class:`DatasetError`.

    Safe: non-empty, ``/``-separated, not absolute, no empty, ``.`` or ``..`` segment, no
    backslash and no control character. Spaces are allowed (PlantVillage file names have them).
    A key that escapes the store root would let a dataset read files outside it.
    """
    bad = (
        not isinstance(key, str)
        or not key
        or key.startswith("/")
        or "\\" in key
        or any(ord(c) < 32 or ord(c) == 127 for c in key)
        or any(part in ("", ".", "..") for part in key.split("/"))
    )
    if bad:
        raise DatasetError(f"{what} {key!r} is not a safe relative key")
    return key


def list_dataset_files(store: Store, options: Mapping[str, Any]) -> tuple[str, list[str]]:
    """List the visible files of a dataset: ``(root, keys relative to root)``.

    ``root`` is the ``root`` option without surrounding slashes (``""`` for the store root).
    Hidden files and anything inside a hidden folder (a segment starting with ``.``, such as
    ``.DS_Store`` or ``.git/``) are dropped: they are never part of a published layout.
    """
    root = str(options.get(ROOT_OPTION) or "").strip("/")
    if root:
        check_key(root, what="option root:")
    prefix = f"{root}/" if root else ""
    keys = []
    for key in store.list(prefix):
        # Keep only keys under the folder, whatever prefix semantics the store has.
        if not key.startswith(prefix):
            continue
        rel = key[len(prefix) :]
        if rel and not any(part.startswith(".") for part in rel.split("/")):
            keys.append(rel)
    return root, sorted(keys)


def image_of_mask(root: str, mask: str, candidates: Sequence[str], expected: str) -> str:
    """The one image a mask belongs to; DatasetError naming the mask when none or several.

    `expected` describes where the image should be (e.g. ``test/bent/007.<ext>``).
    """
    if len(candidates) == 1:
        return candidates[0]
    problem = (
        f"has no image {expected}"
        if not candidates
        else "is ambiguous: several images share its stem "
        f"({format_names(join_key(root, c) for c in candidates)})"
    )
    raise DatasetError(f"mask {join_key(root, mask)!r} {problem}")


def join_key(root: str, rel: str) -> str:
    """``root/rel``, or ``rel`` when the dataset lies at the store root."""
    return f"{root}/{rel}" if root else rel


def format_names(names: Iterable[str], limit: int = 5) -> str:
    """A short, sorted listing of file names for error messages (``a, b, c and 4 more``)."""
    items = sorted(names)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
