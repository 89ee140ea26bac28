"""Object store: one interface over a local folder (``file://``) and S3 (``s3://``, MinIO client).

Every SCARCE artefact (split manifests, results, reports) goes through :class:`Store`, so the
embedded single-machine run and the cluster run share one code path. Open a store with
:func:`open_store`::

    store = open_store("s3://scarce/bench1", endpoint="minio:9000")
    digest = store.put_json("results/r.json", {"acc": 0.9})
    assert store.get_json("results/r.json") == {"acc": 0.9}

Keys are ``/``-separated paths relative to the store root, checked by :func:`safe_key`.
``list(prefix)`` treats the prefix as a folder: ``list("a")`` returns ``a/x`` and ``a/b/y`` but
not ``ab/z``.

Integrity: every put records the sha256 of the bytes written; every get checks it when one is
recorded and raises :class:`IntegrityError` on a mismatch. Objects written by other tools carry
no record and are returned unverified. ``get_json`` of bytes that are not JSON raises
:class:`CorruptObjectError` (a ValueError: permanent) with the sha256 found and the one recorded.

File backend
    A put writes a temporary file ``.<name>.<random>.scarce-tmp`` in the target folder, fsyncs
    it and renames it over the target (``os.replace``), so a reader sees the old object or the
    new one, never a part. The digest is recorded in a sidecar in a hidden folder next to the
    object: key ``a/b.png`` -> ``a/.scarce-sha256/b.png``, holding the hex digest and a newline,
    written atomically the same way and *before* the object is renamed into place (a crash in
    between leaves an invisible sidecar for a new key; for an overwritten key the next read
    raises IntegrityError rather than returning unverified bytes). Sidecars sit next to their
    objects so that a store opened at a subfolder and a ``child()`` store agree. Folders named
    ``.scarce-sha256`` and names ending in ``.scarce-tmp`` are reserved: :func:`safe_key`
    rejects them and ``list()`` never returns them, so a temporary file left by a crash is never
    taken for an object. Reads (get, exists, list) write nothing, so read-only folders work.
    Reads never follow a symlink out of the root: getting an object whose path leads outside
    it through a link, or listing a folder that holds a linked folder leading outside, raises
    UnsafeKeyError naming the link and its target (links that stay inside are read as usual,
    though linked folders are not descended into).
    A write creates the root folder if needed; a read of a missing root raises BucketNotFound.
    ``content_type`` is ignored by this backend. Unlike S3, a folder cannot also be an object,
    so ``a`` and ``a/b`` cannot both exist. ``file://`` URIs are taken literally (no
    percent-decoding), so ``open_store(store.uri)`` always reopens the same folder.

S3 backend
    The digest travels as user metadata ``x-amz-meta-sha256``; a get reads it from the same
    response, so verification costs no extra request. S3 puts are atomic. Transient failures
    (connection errors, timeouts, HTTP 5xx, SlowDown/InternalError/RequestTimeout/
    ServiceUnavailable) are retried ``retries`` times with exponential backoff and jitter, then
    raise :class:`TransientStoreError` chaining the last cause. The MinIO client is given a
    urllib3 pool that never retries by itself (by default it retries 5xx and connection errors
    five times with its own backoff, which would multiply with ours and hide the attempt count).
    Missing keys, missing buckets and access errors are never retried. The bucket is never
    created by the store. Credentials are kept only inside the MinIO client; they appear in no
    message, repr or log line.
"""

from __future__ import annotations

import abc
import builtins
import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import random
import re
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import check_bucket_name

__all__ = [
    "BucketNotFound",
    "CorruptObjectError",
    "FileStore",
    "IntegrityError",
    "ObjectNotFound",
    "S3Store",
    "Store",
    "StoreConfigError",
    "StoreError",
    "TransientStoreError",
    "UnsafeKeyError",
    "open_store",
    "safe_key",
]

log = logging.getLogger(__name__)

SIDECAR_DIR = ".scarce-sha256"
TEMP_SUFFIX = ".scarce-tmp"
SHA256_META = "x-amz-meta-sha256"
_CHUNK = 1 << 20
_T = TypeVar("_T")


class StoreError(Exception):
    """Base of all store errors; the message names the store URI and the key."""


class ObjectNotFound(StoreError):
    """The key does not exist in the store."""


class BucketNotFound(StoreError):
    """The S3 bucket, or the root folder of a file store, does not exist."""


class IntegrityError(StoreError):
    """The bytes read do not match the sha256 recorded when they were written."""


class CorruptObjectError(StoreError, ValueError):
    """An object's bytes are not what the reader needs (e.g. not JSON); a retry cannot help."""


class TransientStoreError(StoreError):
    """A transient S3 or network error persisted through every retry (see ``__cause__``)."""


class UnsafeKeyError(StoreError, ValueError):
    """A key is not a safe relative path inside the store root."""


class StoreConfigError(StoreError, ValueError):
    """A store URI or S3 setting is invalid or missing."""


def safe_key(key: str) -> str:
    """Validate a store key and return it in normal form.

    A key is a relative, ``/``-separated path: no leading ``/``, no empty, ``.`` or ``..``
    segment, no backslash, NUL or other control character, and no segment reserved for the
    store's own files (``.scarce-sha256``, ``*.scarce-tmp``). Keys are compared as given (no
    case folding), so the valid form is already the normal form.

    Raises
    ------
    UnsafeKeyError
        Naming the key and the rule it breaks.
    """
    if not isinstance(key, str):
        raise UnsafeKeyError(f"unsafe key {key!r}: a key must be a str, got {type(key).__name__}")
    reason = _unsafe_reason(key)
    if reason:
        raise UnsafeKeyError(f"unsafe key {key!r}: {reason}")
    return key


def _unsafe_reason(key: str) -> str | None:
    if not key:
        return "the key is empty"
    if any(ord(c) < 32 or c == "\x7f" for c in key):
        return "control characters (NUL, newline ...) are not allowed"
    if "\\" in key:
        return "backslashes are not allowed; use '/'"
    if key.startswith("/"):
        return "absolute keys are not allowed; keys are relative to the store root"
    for segment in key.split("/"):
        if segment == "":
            return "empty segments ('//' or a trailing '/') are not allowed"
        if segment in (".", ".."):
            return f"'{segment}' segments are not allowed"
        if segment == SIDECAR_DIR or segment.endswith(TEMP_SUFFIX):
            return f"'{segment}' is reserved for the store's own files"
    return None


def _folder_prefix(prefix: str) -> str:
    """A folder prefix: '' (the root) or a safe key; one trailing '/' is accepted."""
    return "" if prefix in ("", "/") else safe_key(prefix.removesuffix("/"))


def _integrity_error(uri: str, key: str, expected: str, found: str) -> IntegrityError:
    return IntegrityError(
        f"{uri}: object '{key}' failed its sha256 check: expected {expected} (recorded when "
        f"written), found {found}"
    )


class Store(abc.ABC):
    """An object store rooted at :attr:`uri`; keys are relative paths (see :func:`safe_key`)."""

    uri: str

    @abc.abstractmethod
    def put_bytes(
        self, key: str, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> str:
        """Write ``data`` atomically under ``key``, record its sha256 and return it (hex)."""

    @abc.abstractmethod
    def get_bytes(self, key: str, *, verify: bool = True) -> bytes:
        """Read ``key``; with ``verify``, check the recorded sha256 when one exists."""

    @abc.abstractmethod
    def put_file(self, key: str, path: Path) -> str:
        """Upload the local file ``path`` to ``key``; return its sha256 (hex)."""

    @abc.abstractmethod
    def get_file(self, key: str, path: Path) -> None:
        """Download ``key`` to ``path`` (verified; temp file + rename, parents created)."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object exists under ``key`` (BucketNotFound if the root is missing)."""

    @abc.abstractmethod
    def recorded_sha256(self, key: str) -> str | None:
        """The sha256 recorded for ``key`` at write time, or None for foreign objects."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> builtins.list[str]:
        """All keys under the folder ``prefix`` (recursive), relative to the root, sorted."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete ``key`` and its digest record; a missing key is not an error."""

    @abc.abstractmethod
    def child(self, prefix: str) -> Store:
        """A store of the same backend rooted at ``root/prefix``."""

    @abc.abstractmethod
    def local_path(self, key: str) -> Path | None:
        """The local file behind ``key`` for fast reads (file backend), else None.

        Reading it directly skips the sha256 check.
        """

    def put_json(self, key: str, obj: Any) -> str:
        """Write ``obj`` as indented, key-sorted UTF-8 JSON with a final newline."""
        text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
        return self.put_bytes(key, text.encode("utf-8"), content_type="application/json")

    def get_json(self, key: str) -> Any:
        """Read and parse a JSON object (verified like :meth:`get_bytes`).

        Raises :class:`CorruptObjectError` (permanent: the same bytes come back on a retry)
        naming the key, the sha256 found and the one recorded, when the bytes are not JSON.
        """
        data = self.get_bytes(key)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            recorded = self.recorded_sha256(key)
            raise CorruptObjectError(
                f"{self.uri}: object '{key}' is not valid JSON ({exc}); found sha256 "
                f"{hashlib.sha256(data).hexdigest()}, "
                + (f"expected {recorded} (recorded when written)" if recorded
                   else "no sha256 recorded (written by another tool)")
            ) from exc

    def _key(self, key: str) -> str:
        try:
            return safe_key(key)
        except UnsafeKeyError as exc:
            raise UnsafeKeyError(f"{self.uri}: {exc}") from None

    def _child_prefix(self, prefix: str) -> str:
        """A non-empty folder prefix; one trailing '/' is accepted."""
        return self._key(prefix[:-1] if len(prefix) > 1 and prefix.endswith("/") else prefix)

    def _prefix(self, prefix: str) -> str:
        try:
            return _folder_prefix(prefix)
        except UnsafeKeyError as exc:
            raise UnsafeKeyError(f"{self.uri}: prefix: {exc}") from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


# ---------------------------------------------------------------------------------------------
# File backend


def _fsync_dir(folder: Path) -> None:
    # Makes the rename durable; some filesystems refuse fsync on a folder, which only costs
    # durability on power loss, never atomicity.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _temp_beside(target: Path) -> Iterator[tuple[IO[bytes], Path]]:
    """A temp file beside ``target`` (same filesystem: rename is atomic); removed on error."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh, tmp
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_and_sync(fh: IO[bytes]) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class FileStore(Store):
    """A store in a local folder; see the module docstring for the on-disk layout."""

    def __init__(self, root: Path) -> None:
        if not root.is_absolute():
            raise StoreConfigError(f"file store root must be absolute, got {str(root)!r}")
        self.root = root
        self.uri = "file://" + root.as_posix()

    def local_path(self, key: str) -> Path:
        """The file that holds ``key`` (it may not exist)."""
        return self.root / self._key(key)

    def _sidecar(self, key: str) -> Path:
        path = self.root / key
        return path.parent / SIDECAR_DIR / path.name

    def _require_root(self, key: str) -> None:
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise BucketNotFound(f"{self.uri}: store root {self.root} {what} (for '{key}')")

    def _replace_sidecar(self, key: str, digest: str | None) -> None:
        sidecar = self._sidecar(key)
        if digest is None:
            sidecar.unlink(missing_ok=True)
            return
        with _temp_beside(sidecar) as (fh, tmp):
            fh.write(f"{digest}\n".encode())
            _write_and_sync(fh)
            fh.close()
            os.replace(tmp, sidecar)

    def _write(self, key: str, fill: Callable[[IO[bytes], Any], None]) -> str:
        """Write via ``fill(file, hasher)`` to a temp file, record the digest, rename into place."""
        path = self.root / key
        try:
            with _temp_beside(path) as (fh, tmp):
                hasher = hashlib.sha256()
                fill(fh, hasher)
                _write_and_sync(fh)
                fh.close()
                digest = hasher.hexdigest()
                previous = self._read_sidecar(key) if path.is_file() else None
                self._replace_sidecar(key, digest)
                try:
                    os.replace(tmp, path)
                except BaseException:
                    # Best effort: put the old record back so the old object still verifies.
                    with contextlib.suppress(OSError):
                        self._replace_sidecar(key, previous)
                    raise
        except OSError as exc:
            raise StoreError(f"{self.uri}: cannot write '{key}': {exc}") from exc
        _fsync_dir(path.parent)
        return digest

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> str:
        """Write ``data`` atomically under ``key``; ``content_type`` is not stored on disk."""
        key = self._key(key)

        def fill(fh: IO[bytes], hasher: Any) -> None:
            hasher.update(data)
            fh.write(data)

        return self._write(key, fill)

    def put_file(self, key: str, path: Path) -> str:
        """Copy the local file ``path`` to ``key`` atomically; return its sha256."""
        key = self._key(key)

        def fill(fh: IO[bytes], hasher: Any) -> None:
            with open(path, "rb") as src:
                while chunk := src.read(_CHUNK):
                    hasher.update(chunk)
                    fh.write(chunk)

        return self._write(key, fill)

    def recorded_sha256(self, key: str) -> str | None:
        """The digest in the sidecar of ``key``, or None when the object has none."""
        key = self._key(key)
        self._require_root(key)
        if not (self.root / key).is_file():
            raise ObjectNotFound(
                f"{self.uri}: object '{key}' not found (no file {self.root / key})"
            )
        return self._read_sidecar(key)

    def _read_sidecar(self, key: str) -> str | None:
        try:
            text = self._sidecar(key).read_text(encoding="ascii")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(
                f"{self.uri}: cannot read the sha256 record of '{key}': {exc}"
            ) from exc
        return text.strip()

    def _inside_root(self, key: str, path: Path) -> None:
        """Refuse ``path`` (of ``key``, or a folder being listed) when a symlink on the way
        leads outside the root: a dataset folder must not read whatever a link points to."""
        # realpath, not Path.resolve(): a symlink loop must fail later as an unreadable
        # object (StoreError), not here as a RuntimeError.
        real, root = Path(os.path.realpath(path)), Path(os.path.realpath(self.root))
        if real != root and not real.is_relative_to(root):
            raise UnsafeKeyError(
                f"{self.uri}: '{key}' is a symlink (or lies under one) that leads outside the "
                f"store root, to {real}; refusing to read it"
            )

    def _open_object(self, key: str) -> IO[bytes]:
        self._require_root(key)
        path = self.root / key
        self._inside_root(key, path)
        try:
            return open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"{self.uri}: object '{key}' not found (no file {path})") from None
        except OSError as exc:
            raise StoreError(f"{self.uri}: cannot read '{key}': {exc}") from exc

    def get_bytes(self, key: str, *, verify: bool = True) -> bytes:
        """Read ``key``, checking its recorded sha256 unless ``verify`` is False."""
        key = self._key(key)
        with self._open_object(key) as fh:
            data = fh.read()
        if verify:
            expected = self._read_sidecar(key)
            if expected is not None:
                found = hashlib.sha256(data).hexdigest()
                if found != expected:
                    raise _integrity_error(self.uri, key, expected, found)
        return data

    def get_file(self, key: str, path: Path) -> None:
        """Copy ``key`` to ``path`` through a temp file; ``path`` is untouched on a mismatch."""
        key = self._key(key)
        path = Path(path)
        with self._open_object(key) as src:
            expected = self._read_sidecar(key)
            try:
                with _temp_beside(path) as (fh, tmp):
                    hasher = hashlib.sha256()
                    while chunk := src.read(_CHUNK):
                        hasher.update(chunk)
                        fh.write(chunk)
                    found = hasher.hexdigest()
                    if expected is not None and found != expected:
                        raise _integrity_error(self.uri, key, expected, found)
                    _write_and_sync(fh)
                    fh.close()
                    os.replace(tmp, path)
            except OSError as exc:
                raise StoreError(f"{self.uri}: cannot copy '{key}' to {path}: {exc}") from exc

    def exists(self, key: str) -> bool:
        """Whether a file exists under ``key``."""
        key = self._key(key)
        self._require_root(key)
        return (self.root / key).is_file()

    def list(self, prefix: str = "") -> builtins.list[str]:
        """Keys of all files under the folder ``prefix``, skipping sidecars and temp files."""
        prefix = self._prefix(prefix)
        self._require_root(prefix)
        base = self.root / prefix if prefix else self.root
        keys: builtins.list[str] = []
        self._inside_root(prefix or ".", base)
        for folder, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if d != SIDECAR_DIR]
            rel = Path(folder).relative_to(self.root).as_posix()
            for name in dirs:
                # os.walk does not descend into linked folders; one that leaves the root is
                # an error (a class folder linked elsewhere must not vanish silently).
                if os.path.islink(os.path.join(folder, name)):
                    self._inside_root(name if rel == "." else f"{rel}/{name}",
                                      Path(folder, name))
            for name in files:
                key = name if rel == "." else f"{rel}/{name}"
                if _unsafe_reason(key) is None:
                    keys.append(key)
                elif not name.endswith(TEMP_SUFFIX):
                    log.warning("%s: skipping %r: not a valid store key", self.uri, key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        """Remove the file and its sidecar; a missing key is not an error."""
        key = self._key(key)
        self._require_root(key)
        try:
            (self.root / key).unlink(missing_ok=True)
            self._sidecar(key).unlink(missing_ok=True)
        except (IsADirectoryError, NotADirectoryError):
            pass  # a folder, or a path through a file, is not an object: nothing to delete
        except OSError as exc:
            raise StoreError(f"{self.uri}: cannot delete '{key}': {exc}") from exc

    def child(self, prefix: str) -> FileStore:
        """A file store rooted at ``root/prefix``."""
        return FileStore(self.root / self._child_prefix(prefix))


# ---------------------------------------------------------------------------------------------
# S3 backend

_TRANSIENT_S3_CODES = frozenset(
    {"SlowDown", "InternalError", "RequestTimeout", "ServiceUnavailable", "Throttling"}
)
_PERMANENT_S3_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "AccessDenied"})
_NETWORK_ERRORS = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)
_MAX_BACKOFF_S = 30.0


def _is_transient(exc: Exception) -> bool:
    if isinstance(exc, S3Error):
        if exc.code in _PERMANENT_S3_CODES:
            return False
        status = getattr(exc.response, "status", None)
        return exc.code in _TRANSIENT_S3_CODES or (status is not None and status >= 500)
    if isinstance(exc, ServerError):
        return exc.status_code >= 500
    if isinstance(exc, InvalidResponseError):
        return int(getattr(exc, "_code", 0) or 0) >= 500
    return isinstance(exc, _NETWORK_ERRORS)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, S3Error):
        return f"S3 error {exc.code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


class S3Store(Store):
    """A store in an S3 bucket (optionally under a key prefix), through a MinIO client."""

    def __init__(
        self,
        client: Minio,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str,
        secure: bool,
        retries: int = 5,
        backoff_s: float = 0.2,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint = endpoint
        self.secure = secure
        self.retries = retries
        self.backoff_s = backoff_s
        self.uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r}, endpoint={self.endpoint!r})"

    def local_path(self, key: str) -> None:
        """Always None: S3 objects have no local file."""
        self._key(key)
        return None

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, action: str, key: str, fn: Callable[[], _T]) -> _T:
        """Run ``fn``, retrying transient failures and translating the rest to StoreErrors."""
        attempt = 0
        while True:
            try:
                return fn()
            except (S3Error, ServerError, InvalidResponseError, *_NETWORK_ERRORS) as exc:
                if not _is_transient(exc):
                    raise self._translate(action, key, exc) from exc
                if attempt >= self.retries:
                    raise TransientStoreError(
                        f"{self.uri}: {action} '{key}' failed after {attempt + 1} attempts at "
                        f"endpoint {self.endpoint}: {_describe(exc)}"
                    ) from exc
                delay = min(self.backoff_s * 2**attempt, _MAX_BACKOFF_S)
                delay *= 1 + 0.1 * random.random()
                log.warning(
                    "%s: %s '%s' failed (%s); retry %d/%d in %.2f s",
                    self.uri,
                    action,
                    key,
                    _describe(exc),
                    attempt + 1,
                    self.retries,
                    delay,
                )
                time.sleep(delay)
                attempt += 1

    def _translate(self, action: str, key: str, exc: Exception) -> StoreError:
        code = getattr(exc, "code", None)
        if code == "NoSuchBucket" or (code == "NoSuchKey" and not self._bucket_exists(key)):
            # A HEAD on a missing bucket has no body, so the client reports NoSuchKey for it.
            return BucketNotFound(
                f"{self.uri}: bucket '{self.bucket}' does not exist at endpoint "
                f"{self.endpoint} ({action} '{key}')"
            )
        if code == "NoSuchKey":
            return ObjectNotFound(
                f"{self.uri}: object '{key}' not found (object '{self._name(key)}' in bucket "
                f"'{self.bucket}' at endpoint {self.endpoint})"
            )
        return StoreError(
            f"{self.uri}: {action} '{key}' failed at endpoint {self.endpoint}: {_describe(exc)}"
        )

    def _bucket_exists(self, key: str) -> bool:
        return self._call("check bucket for", key, lambda: self.client.bucket_exists(self.bucket))

    def _put(
        self,
        key: str,
        open_data: Callable[[], IO[bytes]],
        length: int,
        digest: str,
        content_type: str,
    ) -> None:
        def put() -> None:
            with open_data() as data:
                self.client.put_object(
                    self.bucket,
                    self._name(key),
                    data,
                    length,
                    content_type=content_type,
                    metadata={SHA256_META: digest},
                )

        self._call("put", key, put)

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> str:
        """Upload ``data`` with its sha256 as object metadata; return the digest."""
        key = self._key(key)
        digest = hashlib.sha256(data).hexdigest()
        self._put(key, lambda: io.BytesIO(data), len(data), digest, content_type)
        return digest

    def put_file(self, key: str, path: Path) -> str:
        """Upload the local file ``path``; it is hashed first, then streamed."""
        key = self._key(key)
        path = Path(path)
        try:
            digest = _sha256_of_file(path)
            size = path.stat().st_size
        except OSError as exc:
            raise StoreError(f"{self.uri}: cannot upload {path} to '{key}': {exc}") from exc
        self._put(key, functools.partial(path.open, "rb"), size, digest, "application/octet-stream")
        return digest

    def _stream(self, key: str, sink: Callable[[bytes], None]) -> tuple[str, str | None]:
        """Feed the object's bytes to ``sink``; return (found digest, recorded digest)."""
        response = self.client.get_object(self.bucket, self._name(key))
        try:
            hasher = hashlib.sha256()
            for chunk in response.stream(_CHUNK):
                hasher.update(chunk)
                sink(chunk)
            return hasher.hexdigest(), response.headers.get(SHA256_META)
        finally:
            response.close()
            response.release_conn()

    def get_bytes(self, key: str, *, verify: bool = True) -> bytes:
        """Download ``key`` and check it against its ``x-amz-meta-sha256`` metadata."""
        key = self._key(key)

        def get() -> tuple[bytes, str, str | None]:
            buf = io.BytesIO()
            found, expected = self._stream(key, buf.write)
            return buf.getvalue(), found, expected

        data, found, expected = self._call("get", key, get)
        if verify and expected is not None and found != expected:
            raise _integrity_error(self.uri, key, expected, found)
        return data

    def get_file(self, key: str, path: Path) -> None:
        """Download ``key`` to ``path`` via a temp file in its folder, verified before rename."""
        key = self._key(key)
        path = Path(path)
        try:
            with _temp_beside(path) as (fh, tmp):

                def get() -> tuple[str, str | None]:
                    fh.seek(0)
                    fh.truncate()
                    return self._stream(key, fh.write)

                found, expected = self._call("get", key, get)
                if expected is not None and found != expected:
                    raise _integrity_error(self.uri, key, expected, found)
                _write_and_sync(fh)
                fh.close()
                os.replace(tmp, path)
        except OSError as exc:
            raise StoreError(f"{self.uri}: cannot write '{key}' to {path}: {exc}") from exc

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists (a HEAD request, plus one for the bucket when it is absent)."""
        try:
            self.recorded_sha256(key)
        except ObjectNotFound:
            return False
        return True

    def recorded_sha256(self, key: str) -> str | None:
        """The ``x-amz-meta-sha256`` of ``key``, or None when it was written by another tool."""
        key = self._key(key)
        name = self._name(key)
        stat = self._call("stat", key, lambda: self.client.stat_object(self.bucket, name))
        return stat.metadata.get(SHA256_META) if stat.metadata else None

    def list(self, prefix: str = "") -> builtins.list[str]:
        """Keys of all objects under the folder ``prefix``, sorted."""
        prefix = self._prefix(prefix)
        full = "/".join(p for p in (self.prefix, prefix) if p)
        skip = len(self.prefix) + 1 if self.prefix else 0

        def names() -> builtins.list[str]:
            objects = self.client.list_objects(
                self.bucket, prefix=f"{full}/" if full else None, recursive=True
            )
            return [obj.object_name for obj in objects if obj.object_name]

        keys = []
        for name in self._call("list", prefix, names):
            key = name[skip:]
            if _unsafe_reason(key) is None:
                keys.append(key)
            elif not key.endswith("/"):  # folder markers made by other tools are expected
                log.warning("%s: skipping %r: not a valid store key", self.uri, key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        """Remove ``key`` (S3 deletes of missing keys succeed)."""
        key = self._key(key)
        self._call("delete", key, lambda: self.client.remove_object(self.bucket, self._name(key)))

    def child(self, prefix: str) -> S3Store:
        """A store under ``prefix`` in the same bucket, sharing this store's client."""
        return S3Store(
            self.client,
            self.bucket,
            self._name(self._child_prefix(prefix)),
            endpoint=self.endpoint,
            secure=self.secure,
            retries=self.retries,
            backoff_s=self.backoff_s,
        )


# ---------------------------------------------------------------------------------------------
# Opening a store

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
_SUPPORTED = "file:///abs/path, a plain local path, s3://bucket or s3://bucket/prefix"
_CONNECT_TIMEOUT_S = 10.0
_READ_TIMEOUT_S = 120.0


def _parse_endpoint(endpoint: str, secure: bool | None) -> tuple[str, bool]:
    """(host:port, secure) from ``host:port`` or an ``http(s)://host:port`` URL."""
    if "@" in endpoint:
        # Never echo the endpoint here: the part before '@' is a credential.
        raise StoreConfigError(
            "S3 endpoint must not contain credentials ('user:password@'); pass access_key/"
            "secret_key or set SCARCE_S3_ACCESS_KEY/SCARCE_S3_SECRET_KEY"
        )
    if "://" not in endpoint:
        host, default_secure = endpoint, False
    else:
        parts = urllib.parse.urlsplit(endpoint)
        if parts.scheme not in ("http", "https"):
            raise StoreConfigError(
                f"S3 endpoint scheme {parts.scheme!r} is not supported: use host:port, "
                "http://host:port or https://host:port"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise StoreConfigError(f"S3 endpoint {endpoint!r} must be host:port with no path")
        host, default_secure = parts.netloc, parts.scheme == "https"
    if not host or "/" in host:
        raise StoreConfigError("S3 endpoint must be host:port, http://host:port or https://...")
    return host, default_secure if secure is None else secure


def _http_client() -> urllib3.PoolManager:
    # Retries belong to S3Store._call only; total=0 makes urllib3 surface the first failure.
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=_CONNECT_TIMEOUT_S, read=_READ_TIMEOUT_S),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=0, raise_on_redirect=False, raise_on_status=False),
    )


def _open_s3(
    uri: str,
    endpoint: str | None,
    access_key: str | None,
    secret_key: str | None,
    secure: bool | None,
    retries: int,
    backoff_s: float,
) -> S3Store:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    try:
        check_bucket_name(bucket)
    except ValueError as exc:
        raise StoreConfigError(f"{uri}: invalid bucket name {bucket!r}: {exc}") from None
    try:
        prefix = _folder_prefix(prefix)
    except UnsafeKeyError as exc:
        raise StoreConfigError(f"{uri}: invalid prefix: {exc}") from None
    endpoint = endpoint or os.environ.get("SCARCE_S3_ENDPOINT")
    if not endpoint:
        raise StoreConfigError(
            f"{uri}: no S3 endpoint: pass endpoint= or set SCARCE_S3_ENDPOINT (host:port or URL)"
        )
    host, is_secure = _parse_endpoint(endpoint, secure)
    env = os.environ.get
    access = access_key or env("SCARCE_S3_ACCESS_KEY") or env("AWS_ACCESS_KEY_ID")
    secret = secret_key or env("SCARCE_S3_SECRET_KEY") or env("AWS_SECRET_ACCESS_KEY")
    if bool(access) != bool(secret):
        raise StoreConfigError(
            f"{uri}: an S3 access key needs a secret key and vice versa (arguments, "
            "SCARCE_S3_ACCESS_KEY/SCARCE_S3_SECRET_KEY or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
        )
    if retries < 0 or backoff_s < 0:
        raise StoreConfigError(f"{uri}: retries and backoff_s must be >= 0")
    try:
        client = Minio(
            host,
            access_key=access or None,
            secret_key=secret or None,
            secure=is_secure,
            region=env("SCARCE_S3_REGION") or None,
            http_client=_http_client(),
        )
    except ValueError as exc:
        raise StoreConfigError(f"{uri}: invalid S3 endpoint {host!r}: {exc}") from None
    return S3Store(
        client,
        bucket,
        prefix,
        endpoint=host,
        secure=is_secure,
        retries=retries,
        backoff_s=backoff_s,
    )


def _open_file(uri: str, base_dir: Path | None) -> FileStore:
    if uri.startswith("file://"):
        path = uri.removeprefix("file://")
        path = path.removeprefix("localhost") if path.startswith("localhost/") else path
        if not path.startswith("/"):
            raise StoreConfigError(
                f"unsupported store URI {uri!r}: a file URI needs an absolute path "
                f"(file:///abs/path); supported: {_SUPPORTED}"
            )
        root = Path(path)
    else:
        root = Path(uri).expanduser()
        if not root.is_absolute():
            root = Path(base_dir if base_dir is not None else Path.cwd()).absolute() / root
    # normpath, not resolve(): '..' is collapsed but symlinked roots keep the name given.
    return FileStore(Path(os.path.normpath(root)))


def open_store(
    uri: str,
    *,
    base_dir: Path | None = None,
    endpoint: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    secure: bool | None = None,
    retries: int = 5,
    backoff_s: float = 0.2,
) -> Store:
    """Open the store named by ``uri``.

    Parameters
    ----------
    uri
        ``file:///abs/path``; a plain path (relative ones resolve against ``base_dir``, default
        the working directory); ``s3://bucket`` or ``s3://bucket/prefix``.
    base_dir
        Folder that relative plain paths are resolved against.
    endpoint
        S3 only: ``host:port`` (plain HTTP unless ``secure``) or ``http(s)://host:port``;
        default ``$SCARCE_S3_ENDPOINT``.
    access_key, secret_key
        S3 only; default ``$SCARCE_S3_ACCESS_KEY``/``$SCARCE_S3_SECRET_KEY``, then
        ``$AWS_ACCESS_KEY_ID``/``$AWS_SECRET_ACCESS_KEY``; none at all means anonymous access.
        The region comes from ``$SCARCE_S3_REGION`` when set (else it is asked of the server).
    secure
        S3 only: force HTTPS on or off, overriding the endpoint's scheme.
    retries, backoff_s
        S3 only: retries after the first attempt for transient errors, and the first backoff
        delay in seconds (doubled each retry, plus up to 10 % jitter).

    Raises
    ------
    StoreConfigError
        For an unsupported URI, a bad bucket name or prefix, or missing S3 settings.
    """
    text = os.fspath(uri)
    if not text:
        raise StoreConfigError(f"empty store URI; supported: {_SUPPORTED}")
    if text.startswith("s3://"):
        return _open_s3(text, endpoint, access_key, secret_key, secure, retries, backoff_s)
    if _SCHEME.match(text) and not text.startswith("file://"):
        raise StoreConfigError(f"unsupported store URI {text!r}; supported: {_SUPPORTED}")
    return _open_file(text, base_dir)
