"""Import a dataset into the store (``scarce data import``); inspect one (``scarce data inspect``).

:func:`import_dataset` reads a local folder in any registered layout, checks **every** file
before writing anything, and copies the dataset into a store in the generic ``imagefolder``
layout with an ``index.json``; :func:`inspect_dataset` summarises a dataset in a store.

Layout written at DEST (read it back with ``format: imagefolder``)::

    DEST/index.json                     written last: a complete import exists iff it does
    DEST/<class>/<name>                 each image, bytes unchanged
    DEST/<class>/<stem>_mask.png        its mask, when the source has one

``<name>`` is the image's file name. When several images of one class share a stem (MVTec AD's
``train/good/000.png`` and ``test/good/000.png``), each of them is named by its whole source
key instead, with ``/`` replaced by ``__`` (``metal_nut__test__good__000.png``). Masks are
stored as PNG (other mask formats are re-encoded losslessly; PNG masks keep their bytes).

Refused, with every offending file named: files that are empty, truncated, not an image or over
the pixel limit (:data:`~scarce.trainer.datasets.images.MAX_PIXELS`, checked from the header:
decompression bombs), a mask whose size differs from its image's, symlinks that leave SRC
(after resolving), names containing ``..`` and names that cannot be store keys. Hidden files
and folders (a name starting with ``.``) are never read, by the check or by any format.

Nothing half-written: all files are validated first; then they are written under a hidden
staging prefix ``DEST/.staging-<random>/`` (which no format reads), published, and ``index.json``
is written **last**. A consumer must treat DEST as a dataset only when ``index.json`` exists.
Publishing renames the staged class folders into place on a file store, and copies each object
server-side then deletes the staged one on S3 (which has no rename). Any failure removes the
staging prefix and whatever was already published, so a failed import leaves DEST as it was
(an absent DEST stays absent). A DEST that already holds an ``index.json`` is refused unless
``overwrite=True``: the old index is deleted first, then the old files, so an import that fails
while overwriting leaves no dataset rather than a mix. A non-empty DEST without an index is
always refused: it is not an import and nothing in it is deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import secrets
import shutil
import statistics
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from scarce.trainer.datasets import decode_image, decode_mask, get_format, scan_dataset
from scarce.trainer.datasets.base import DatasetError, ImageRecord, join_key
from scarce.trainer.datasets.imagefolder import MASK_SUFFIX
from scarce.trainer.store import (
    BucketNotFound,
    FileStore,
    S3Store,
    Store,
    StoreError,
    UnsafeKeyError,
    open_store,
    safe_key,
)

__all__ = [
    "INDEX_KEY",
    "ImportSummary",
    "describe_inspection",
    "import_dataset",
    "inspect_dataset",
]

INDEX_KEY = "index.json"
INDEX_VERSION = 1
STAGING_PREFIX = ".staging-"
#: Masks are decoded at this side to measure the defect area (nearest-neighbour, so a 1-pixel
#: crack may vanish: the area is an estimate of what training sees at a similar size).
MASK_AREA_SIZE = 64
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_WORKERS = 8
#: How many offending files an error message lists before "and N more".
_SHOWN_PROBLEMS = 20

#: ``progress(phase, done, total)``; phase is "validate" or "copy".
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class _File:
    """One validated image (and its mask) and where it goes at DEST."""

    label: str
    source_key: str
    path: Path
    sha256: str
    size: int
    width: int
    height: int
    mask_source: str | None = None
    mask_path: Path | None = None
    mask_bytes: bytes | None = None  # the PNG to store, only when the mask was re-encoded
    mask_size: int = 0
    mask_sha256: str | None = None
    mask_area: float | None = None
    dest_key: str = ""

    @property
    def mask_dest_key(self) -> str | None:
        if self.mask_source is None:
            return None
        return f"{self.label}/{PurePosixPath(self.dest_key).stem}{MASK_SUFFIX}"


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_dataset` wrote; :meth:`describe` renders it for a terminal."""

    #: URI of the destination store.
    dest: str
    #: Source folder and the format it was read with.
    source: str
    source_format: str
    #: Images and masks per class, sorted by class.
    classes: dict[str, int]
    masks: dict[str, int]
    #: The no-defect class, or None when the data has none (a synthetic delivery).
    good_class: str | None
    #: Bytes written (images and masks).
    bytes: int
    seconds: float
    index_key: str = INDEX_KEY
    #: The spec fragment that reads the imported data back.
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def images(self) -> int:
        """Number of images imported."""
        return sum(self.classes.values())

    def describe(self) -> str:
        """A few lines for a terminal: totals, a class table and how to use the result."""
        lines = [
            f"Imported {self.images} images ({sum(self.masks.values())} with a mask, "
            f"{self.bytes / 1e6:.1f} MB) from {self.source} (format {self.source_format}) "
            f"into {self.dest} in {self.seconds:.1f} s.",
            *_class_table({c: (n, self.masks.get(c, 0)) for c, n in self.classes.items()}),
            f"Index: {self.index_key}. Use it in a spec as: "
            + ", ".join(f"{k}: {v}" for k, v in self.spec.items()),
        ]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Import


def import_dataset(
    format_name: str,
    src: Path | str,
    dest_uri: str | Store,
    *,
    options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ImportSummary:
    """Validate a local dataset and copy it into a store with an ``index.json``.

    Parameters
    ----------
    format_name:
        The layout of SRC, one of :func:`~scarce.trainer.datasets.list_formats`.
    src:
        Local folder holding the dataset.
    dest_uri:
        Destination store URI (a path, ``file:///...`` or ``s3://bucket/prefix``; S3 settings
        from the environment, see :func:`~scarce.trainer.store.open_store`), or an open store.
    options:
        Options of the format (``root``, ``category``, ``plant`` ...).
    overwrite:
        Replace a previous import at DEST (one with an ``index.json``).
    progress:
        Called as ``progress(phase, done, total)`` while validating and copying.

    Raises
    ------
    DatasetError
        SRC cannot be imported (every offending file is named) or DEST is not free.
    StoreError
        Writing to DEST failed; nothing of the import is left there.
    """
    started = time.perf_counter()
    fmt = get_format(format_name)
    src_path = Path(src)
    if not src_path.is_dir():
        raise DatasetError(f"SRC {str(src_path)!r}: not a folder")
    real_src = src_path.resolve()
    dest = dest_uri if isinstance(dest_uri, Store) else open_store(str(dest_uri))
    if isinstance(dest, FileStore) and dest.root.resolve().is_relative_to(real_src):
        raise DatasetError(f"DEST {dest.uri} lies inside SRC {src_path}; choose another place")
    previous = _previous_import(dest, overwrite)

    _refuse(_check_tree(src_path, real_src), src_path)
    records = scan_dataset(format_name, open_store(str(real_src)), options)
    files = _name_destinations(_validate(records, src_path, real_src, progress), src_path)
    options = dict(options or {})
    good = options.get("goodClass") or fmt.default_good_class
    good_class = good if any(f.label == good for f in files) else None
    index = _index(
        files, source=str(src_path), source_format=fmt.name, options=options, good_class=good_class
    )

    _write(dest, files, index, previous, progress)
    spec = {"format": "imagefolder", "source": dest.uri}
    if good_class and good_class != "good":
        spec["goodClass"] = good_class
    return ImportSummary(
        dest=dest.uri,
        source=str(src_path),
        source_format=fmt.name,
        classes=dict(sorted(Counter(f.label for f in files).items())),
        masks=dict(sorted(Counter(f.label for f in files if f.mask_source).items())),
        good_class=good_class,
        bytes=sum(f.size + f.mask_size for f in files),
        seconds=round(time.perf_counter() - started, 3),
        spec=spec,
    )


def _refuse(problems: list[str], src: Path) -> None:
    if problems:
        shown = "\n  ".join(problems[:_SHOWN_PROBLEMS])
        more = len(problems) - _SHOWN_PROBLEMS
        raise DatasetError(
            f"import of {src} refused, nothing was written: {len(problems)} file(s) cannot be "
            f"imported:\n  {shown}" + (f"\n  ... and {more} more" if more > 0 else "")
        )


def _visible(keys: Iterable[str]) -> list[str]:
    """Keys with no hidden segment: what a format would read (staging prefixes are hidden)."""
    return [k for k in keys if not any(part.startswith(".") for part in k.split("/"))]


def _previous_import(dest: Store, overwrite: bool) -> list[str]:
    """The keys of an import at DEST to replace ([] for a free DEST); refuse an occupied one."""
    try:
        keys = _visible(dest.list())
    except BucketNotFound:
        if isinstance(dest, FileStore):
            return []  # the folder is created on the first write
        raise
    if not keys:
        return []
    if INDEX_KEY not in keys:
        raise DatasetError(
            f"DEST {dest.uri} is not empty ({len(keys)} file(s), e.g. {keys[0]!r}) and holds no "
            f"{INDEX_KEY}: it is not a SCARCE import; choose an empty destination"
        )
    if not overwrite:
        raise DatasetError(
            f"DEST {dest.uri} already holds a dataset ({INDEX_KEY}); pass overwrite to replace it"
        )
    return keys


def _check_tree(src: Path, real_src: Path) -> list[str]:
    """Symlinks leaving SRC and unusable names anywhere in SRC (hidden entries skipped)."""
    problems = []
    for folder, dirs, files in os.walk(real_src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted([*dirs, *files]):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            rel = path.relative_to(real_src).as_posix()
            shown = src / rel
            if ".." in name:
                problems.append(f"{shown}: name contains '..'")
            else:
                try:
                    safe_key(rel)
                except UnsafeKeyError as exc:
                    problems.append(f"{shown}: name cannot be a store key ({exc})")
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(real_src):
                    problems.append(f"{shown}: symlink leaves SRC (it points to {target})")
    return problems


def _validate(
    records: list[ImageRecord], src: Path, real_src: Path, progress: Progress | None
) -> list[_File]:
    """Read, hash and fully decode every image and mask; refuse listing every bad file."""
    files: list[_File] = []
    problems: list[str] = []
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        results = pool.map(lambda r: _validate_one(r, src, real_src), records)
        for done, result in enumerate(results, 1):
            if isinstance(result, str):
                problems.append(result)
            else:
                files.append(result)
            if progress:
                progress("validate", done, len(records))
    _refuse(problems, src)
    return files


def _validate_one(record: ImageRecord, src: Path, real_src: Path) -> _File | str:
    """A validated file, or the problem (naming the file) as a string."""
    try:
        path, data = _read(record.key, src, real_src)
        shown = str(src / record.key)
        # Decoding every pixel is what catches truncated files; the decoder also enforces
        # the pixel limit from the header, before decoding.
        decode_image(data, channels=1, size=8, name=shown)
        width, height = _image_size(data, shown)
        mask = (
            {}
            if record.mask_key is None
            else _validate_mask(record, (width, height), src, real_src)
        )
    except DatasetError as exc:
        return str(exc)
    return _File(
        label=record.label,
        source_key=record.key,
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        width=width,
        height=height,
        **mask,
    )


def _validate_mask(
    record: ImageRecord, image_size: tuple[int, int], src: Path, real_src: Path
) -> dict[str, Any]:
    """The mask fields of a :class:`_File`; the mask must have its image's size."""
    assert record.mask_key is not None
    path, data = _read(record.mask_key, src, real_src)
    shown = str(src / record.mask_key)
    area = decode_mask(data, size=MASK_AREA_SIZE, name=shown)
    width, height = _image_size(data, shown)
    if (width, height) != image_size:
        raise DatasetError(
            f"{shown}: mask is {width}x{height} but its image {record.key} is "
            f"{image_size[0]}x{image_size[1]}"
        )
    converted = None if data.startswith(_PNG_MAGIC) else _to_png(data)
    stored = converted if converted is not None else data
    return {
        "mask_source": record.mask_key,
        "mask_path": path,
        "mask_bytes": converted,
        "mask_size": len(stored),
        "mask_sha256": hashlib.sha256(stored).hexdigest(),
        "mask_area": round(float((area > 0).mean()), 6),
    }


def _read(key: str, src: Path, real_src: Path) -> tuple[Path, bytes]:
    path = real_src / key
    shown = src / key
    if any(".." in part for part in key.split("/")):
        raise DatasetError(f"{shown}: name contains '..'")
    target = path.resolve()
    if not target.is_relative_to(real_src):
        raise DatasetError(f"{shown}: resolves outside SRC (to {target})")
    try:
        return path, path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{shown}: cannot read it ({exc.strerror or exc})") from exc


def _image_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) from the header only; every PIL failure becomes a DatasetError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Exception as exc:  # PIL raises many types for bad headers
        raise DatasetError(f"{name}: not a readable image ({exc})") from exc


def _to_png(data: bytes) -> bytes:
    """A lossless PNG of an already validated mask in another format."""
    buffer = io.BytesIO()
    with Image.open(io.BytesIO(data)) as image:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _name_destinations(files: list[_File], src: Path) -> list[_File]:
    """Give every file its DEST key ``<class>/<name>`` (see the module docstring)."""
    by_stem: dict[tuple[str, str], list[_File]] = defaultdict(list)
    for f in files:
        by_stem[(f.label, PurePosixPath(f.source_key).stem)].append(f)
    named, problems = [], []
    taken: dict[tuple[str, str], str] = {}
    for (label, _), group in sorted(by_stem.items()):
        if label.startswith(".") or label == INDEX_KEY:
            problems.append(f"{src / group[0].source_key}: class {label!r} cannot be a folder name")
            continue
        for f in group:
            name = PurePosixPath(f.source_key).name
            if len(group) > 1:
                name = f.source_key.replace("/", "__")
            stem = (label, PurePosixPath(name).stem)
            if name.lower().endswith(MASK_SUFFIX):
                problems.append(
                    f"{src / f.source_key}: image name ends in {MASK_SUFFIX!r}, which the "
                    "imported layout keeps for masks; rename it"
                )
            elif stem in taken:
                problems.append(
                    f"{src / f.source_key}: would be stored as {label}/{name}, like {taken[stem]}"
                )
            else:
                taken[stem] = f.source_key
                named.append(dataclasses.replace(f, dest_key=f"{label}/{name}"))
    if problems:
        _refuse(problems, src)
    return sorted(named, key=lambda f: f.dest_key)


def _index(
    files: list[_File],
    *,
    source: str,
    source_format: str,
    options: dict[str, Any],
    good_class: str | None,
) -> dict[str, Any]:
    images = []
    for f in files:
        row: dict[str, Any] = {
            "class": f.label,
            "key": f.dest_key,
            "sha256": f.sha256,
            "width": f.width,
            "height": f.height,
            "source": f.source_key,
            "maskKey": f.mask_dest_key,
        }
        if f.mask_source is not None:
            row |= {
                "maskSha256": f.mask_sha256,
                "maskArea": f.mask_area,
                "maskSource": f.mask_source,
            }
        images.append(row)
    return {
        "kind": "scarce-dataset-index",
        "version": INDEX_VERSION,
        "format": "imagefolder",
        "goodClass": good_class,
        "source": {"path": source, "format": source_format, "options": options},
        "classes": dict(sorted(Counter(f.label for f in files).items())),
        "images": images,
    }


# --- writing: stage, publish, index last; undo on any failure ---------------------------------


def _write(
    dest: Store,
    files: list[_File],
    index: dict[str, Any],
    previous: list[str],
    progress: Progress | None,
) -> None:
    staging = f"{STAGING_PREFIX}{secrets.token_hex(8)}"
    created_root = isinstance(dest, FileStore) and not dest.root.exists()
    published: list[str] = []
    try:
        staged = _stage(dest, staging, files, progress)
        _remove_previous(dest, previous)
        _publish(dest, staging, staged, published)
        dest.put_json(INDEX_KEY, index)
    except BaseException:
        _undo(dest, staging, files, published, created_root)
        raise


def _stage(dest: Store, staging: str, files: list[_File], progress: Progress | None) -> list[str]:
    """Write every file under the staging prefix; return their keys relative to it."""
    jobs: list[tuple[str, Path | bytes, str]] = []
    for f in files:
        jobs.append((f.dest_key, f.path, f.sha256))
        if f.mask_dest_key is not None:
            content = f.mask_bytes if f.mask_bytes is not None else f.mask_path
            assert content is not None
            jobs.append((f.mask_dest_key, content, f.mask_sha256 or ""))

    def put(job: tuple[str, Path | bytes, str]) -> None:
        key, content, expected = job
        target = f"{staging}/{key}"
        if isinstance(content, bytes):
            digest = dest.put_bytes(target, content)
        else:
            digest = dest.put_file(target, content)
        if digest != expected:
            raise DatasetError(f"{content}: changed while it was being imported; run it again")

    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        try:
            for done, _ in enumerate(pool.map(put, jobs), 1):
                if progress:
                    progress("copy", done, len(jobs))
        except BaseException:
            pool.shutdown(cancel_futures=True)  # the staging is discarded: stop writing to it
            raise
    return [key for key, _, _ in jobs]


def _remove_previous(dest: Store, previous: list[str]) -> None:
    """Delete an import being overwritten: its index first, so no one trusts a partial one."""
    if not previous:
        return
    dest.delete(INDEX_KEY)
    if isinstance(dest, FileStore):
        for entry in sorted(dest.root.iterdir()):
            if not entry.name.startswith("."):
                _remove_path(entry)
        return
    for key in previous:
        dest.delete(key)


def _publish(dest: Store, staging: str, staged: list[str], published: list[str]) -> None:
    """Move the staged files to their keys; record each published name in ``published``."""
    if isinstance(dest, FileStore):
        # One rename per class folder: the folder moves with its sha256 sidecars.
        staging_dir = dest.root / staging
        for entry in sorted(staging_dir.iterdir()):
            try:
                os.rename(entry, dest.root / entry.name)
            except OSError as exc:
                raise StoreError(f"{dest.uri}: cannot publish {entry.name}/: {exc}") from exc
            published.append(entry.name)
        staging_dir.rmdir()
        return
    for key in staged:
        _copy(dest, f"{staging}/{key}", key)
        published.append(key)
    for key in staged:
        dest.delete(f"{staging}/{key}")


def _copy(dest: Store, source: str, target: str) -> None:
    if isinstance(dest, S3Store):
        # Server-side copy; the default metadata directive keeps x-amz-meta-sha256.
        from minio.commonconfig import CopySource

        def name(key: str) -> str:
            return f"{dest.prefix}/{key}" if dest.prefix else key

        try:
            dest.client.copy_object(
                dest.bucket, name(target), CopySource(dest.bucket, name(source))
            )
        except Exception as exc:
            raise StoreError(f"{dest.uri}: cannot copy '{source}' to '{target}': {exc}") from exc
        return
    dest.put_bytes(target, dest.get_bytes(source))


def _undo(
    dest: Store, staging: str, files: list[_File], published: list[str], created_root: bool
) -> None:
    """Best effort: remove the staging prefix and anything already published."""
    if isinstance(dest, FileStore):
        _remove_path(dest.root / staging)
        for name in published:
            _remove_path(dest.root / name)
        if created_root:
            _remove_empty_root(dest.root)
        return
    keys = [f.dest_key for f in files] + [f.mask_dest_key for f in files if f.mask_dest_key]
    for key in [*published, *(f"{staging}/{k}" for k in keys)]:
        # The original error matters more; a staged leftover is hidden from every format.
        with contextlib.suppress(StoreError):
            dest.delete(key)


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _remove_empty_root(root: Path) -> None:
    sidecars = root / ".scarce-sha256"
    if sidecars.is_dir() and not any(sidecars.iterdir()):
        sidecars.rmdir()
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()


# ---------------------------------------------------------------------------------------------
# Inspect


@dataclass(frozen=True)
class _Row:
    label: str
    width: int
    height: int
    mask_area: float | None  # None: no mask
    sha256: str | None


def inspect_dataset(
    uri: str | Store,
    format_name: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Classes, counts, image sizes and mask coverage of a dataset in a store.

    Reads ``index.json`` when it exists and no format is given (an import: nothing else is
    read but one listing, which reports files the index names that are missing); otherwise
    scans with ``format_name`` (default ``imagefolder``) and reads every image's header and
    every mask. Pass the result to :func:`describe_inspection` for a terminal, or print it as
    JSON. Image sizes are ``{"min", "median", "max"}`` of widths and heights; ``masks.share``
    is the share of images with a mask and ``masks.meanArea`` the mean defect share of their
    pixels (decoded at :data:`MASK_AREA_SIZE` px, as training decodes them).
    """
    store = uri if isinstance(uri, Store) else open_store(str(uri))
    options = dict(options or {})
    root = str(options.get("root") or "").strip("/")
    index_key = join_key(root, INDEX_KEY)
    if format_name is None and store.exists(index_key):
        rows, info = _rows_from_index(store, index_key, root)
    else:
        rows, info = _rows_from_scan(store, format_name or "imagefolder", options)
    return {"uri": store.uri, **info, **_summarise(rows)}


def _rows_from_index(store: Store, index_key: str, root: str) -> tuple[list[_Row], dict]:
    index = store.get_json(index_key)
    try:
        images = index["images"]
        rows = [
            _Row(
                label=str(i["class"]),
                width=int(i["width"]),
                height=int(i["height"]),
                mask_area=(float(i.get("maskArea") or 0.0) if i.get("maskKey") else None),
                sha256=i.get("sha256"),
            )
            for i in images
        ]
        keys = [k for i in images for k in (i["key"], i.get("maskKey")) if k]
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(
            f"{store.uri}: {index_key} is not a SCARCE dataset index ({exc!r})"
        ) from exc
    listed = set(store.list(root))
    missing = sorted(k for k in keys if join_key(root, k) not in listed)
    source = index.get("source") or {}
    info = {
        "read": index_key,
        "format": index.get("format", "imagefolder"),
        "sourceFormat": source.get("format"),
        "goodClass": index.get("goodClass"),
        "missing": missing,
    }
    return rows, info


def _rows_from_scan(store: Store, format_name: str, options: dict) -> tuple[list[_Row], dict]:
    records = scan_dataset(format_name, store, options)

    def row(record: ImageRecord) -> _Row:
        data = store.get_bytes(record.key)
        width, height = _image_size(data, record.key)
        area = None
        if record.mask_key is not None:
            mask = decode_mask(
                store.get_bytes(record.mask_key), size=MASK_AREA_SIZE, name=record.mask_key
            )
            area = float((mask > 0).mean())
        return _Row(record.label, width, height, area, hashlib.sha256(data).hexdigest())

    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        rows = list(pool.map(row, records))
    good = options.get("goodClass") or get_format(format_name).default_good_class
    info = {
        "read": "scan",
        "format": format_name,
        "goodClass": good if any(r.label == good for r in rows) else None,
        "missing": [],
    }
    return rows, info


def _summarise(rows: list[_Row]) -> dict[str, Any]:
    per_class: dict[str, dict[str, int]] = {}
    for r in sorted(rows, key=lambda r: r.label):
        entry = per_class.setdefault(r.label, {"images": 0, "masks": 0})
        entry["images"] += 1
        entry["masks"] += r.mask_area is not None
    areas = [r.mask_area for r in rows if r.mask_area is not None]
    hashes = Counter(r.sha256 for r in rows if r.sha256)

    def spread(values: list[int]) -> dict[str, float]:
        if not values:
            return {"min": 0, "median": 0, "max": 0}
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    return {
        "images": len(rows),
        "classes": per_class,
        "imageSize": {
            "width": spread([r.width for r in rows]),
            "height": spread([r.height for r in rows]),
        },
        "masks": {
            "images": len(areas),
            "share": round(len(areas) / len(rows), 4) if rows else 0.0,
            "meanArea": round(statistics.fmean(areas), 4) if areas else None,
        },
        "duplicates": sum(n - 1 for n in hashes.values()),
    }


def describe_inspection(info: Mapping[str, Any]) -> str:
    """Render a :func:`inspect_dataset` result as a few lines for a terminal."""
    read = "index.json" if info["read"] != "scan" else f"a scan with format {info['format']}"
    good = info.get("goodClass")
    width, height = info["imageSize"]["width"], info["imageSize"]["height"]
    masks = info["masks"]
    area = "n/a" if masks["meanArea"] is None else f"{masks['meanArea']:.1%}"
    lines = [
        f"{info['uri']}: {info['images']} images in {len(info['classes'])} classes "
        f"(read from {read}; good class: {good or 'none'})",
        *_class_table({c: (v["images"], v["masks"]) for c, v in info["classes"].items()}),
        f"image size (min / median / max): width {_fmt(width)}, height {_fmt(height)}",
        f"masks: {masks['images']} images ({masks['share']:.1%}), mean defect area {area}",
        f"duplicate images (same bytes): {info['duplicates']}",
    ]
    missing = info.get("missing") or []
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" * (len(missing) > 5))
        lines.append(f"MISSING: {len(missing)} file(s) named in the index are absent: {shown}")
    return "\n".join(lines)


def _fmt(spread: Mapping[str, float]) -> str:
    return " / ".join(f"{spread[k]:g}" for k in ("min", "median", "max"))


def _class_table(counts: Mapping[str, tuple[int, int]]) -> list[str]:
    width = max([len("class"), *(len(c) for c in counts)])
    lines = [f"  {'class':<{width}}  {'images':>6}  {'masks':>6}"]
    lines += [f"  {c:<{width}}  {n:>6}  {m:>6}" for c, (n, m) in counts.items()]
    return lines
