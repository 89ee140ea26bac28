"""The object store (scarce.trainer.store) against a local folder and a real S3 server (moto)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import urllib3
from minio.error import S3Error, ServerError

from scarce.trainer import store as store_module
from scarce.trainer.store import (
    SIDECAR_DIR,
    TEMP_SUFFIX,
    BucketNotFound,
    FileStore,
    IntegrityError,
    ObjectNotFound,
    S3Store,
    Store,
    StoreConfigError,
    StoreError,
    TransientStoreError,
    UnsafeKeyError,
    open_store,
    safe_key,
)

# Fixtures s3_server (session) and s3_store; a plugin is registered once per session even when
# conftest.py names it too, so the moto server starts once.
pytest_plugins = ["tests.s3server"]

if TYPE_CHECKING:
    from tests.s3server import S3Server

SHARED_SAMPLE = Path("/work/shared/datasets/riawelc")


def closed_port() -> int:
    """A local port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Backend:
    """A store plus ways to change its objects behind its back."""

    store: Store
    tamper: Callable[[str, bytes], None]  # replace the bytes, keep the recorded digest
    write_foreign: Callable[[str, bytes], None]  # write as another tool would: no digest
    open: Callable[[str], Store]  # open_store with the settings this backend needs


def file_backend(root: Path) -> Backend:
    store = open_store(str(root))
    assert isinstance(store, FileStore)

    def write(key: str, data: bytes) -> None:
        path = store.local_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return Backend(store, tamper=write, write_foreign=write, open=open_store)


def s3_backend(server: S3Server, store: S3Store) -> Backend:
    raw = server.client()

    def name(key: str) -> str:
        return f"{store.prefix}/{key}" if store.prefix else key

    def put(key: str, data: bytes, metadata: dict[str, Any] | None) -> None:
        raw.put_object(store.bucket, name(key), io.BytesIO(data), len(data), metadata=metadata)

    def tamper(key: str, data: bytes) -> None:
        put(key, data, {"x-amz-meta-sha256": store.recorded_sha256(key)})

    return Backend(
        store, tamper=tamper, write_foreign=lambda k, d: put(k, d, None), open=server.open
    )


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "file":
        return file_backend(tmp_path / "root")
    return s3_backend(request.getfixturevalue("s3_server"), request.getfixturevalue("s3_store"))


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.store


# --- round trips ----------------------------------------------------------------------------


def test_bytes_round_trip_returns_the_sha256_of_the_data(store: Store) -> None:
    data = b"\x00\x01 defect \xff" * 100
    digest = store.put_bytes("a/b.bin", data)
    assert digest == sha(data)
    assert store.get_bytes("a/b.bin") == data
    assert store.recorded_sha256("a/b.bin") == digest
    assert store.exists("a/b.bin")


def test_empty_object_round_trips(store: Store) -> None:
    assert store.put_bytes("empty", b"") == sha(b"")
    assert store.get_bytes("empty") == b""


def test_json_is_written_indented_key_sorted_with_final_newline(store: Store) -> None:
    obj = {"seed": 3, "arm": "placebo", "acc": [0.5, 0.75], "name": "ñ"}
    digest = store.put_json("results/r.json", obj)
    raw = store.get_bytes("results/r.json")
    assert raw == (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")
    assert digest == sha(raw)
    assert store.get_json("results/r.json") == obj


def test_get_json_of_invalid_json_names_the_key(store: Store) -> None:
    store.put_bytes("bad.json", b"{not json")
    with pytest.raises(StoreError, match=r"'bad\.json' is not valid JSON") as info:
        store.get_json("bad.json")
    assert store.uri in str(info.value)


def test_file_round_trip_is_byte_identical(store: Store, tmp_path: Path) -> None:
    # Bigger than the 1 MiB copy chunk and than S3's 5 MiB multipart threshold.
    data = os.urandom(6 * 1024 * 1024 + 7)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    assert store.put_file("shards/shard.bin", src) == sha(data)
    dst = tmp_path / "out" / "deep" / "dst.bin"
    store.get_file("shards/shard.bin", dst)
    assert dst.read_bytes() == data
    assert store.recorded_sha256("shards/shard.bin") == sha(data)
    assert [p.name for p in dst.parent.iterdir()] == ["dst.bin"]  # no temp file left


def test_put_file_of_missing_source_names_path_and_key(store: Store, tmp_path: Path) -> None:
    missing = tmp_path / "nope.bin"
    with pytest.raises(StoreError, match=r"'k\.bin'") as info:
        store.put_file("k.bin", missing)
    assert str(missing) in str(info.value)
    assert not store.exists("k.bin")


def test_overwrite_replaces_bytes_and_digest(store: Store) -> None:
    store.put_bytes("k", b"old")
    assert store.put_bytes("k", b"new") == sha(b"new")
    assert store.get_bytes("k") == b"new"
    assert store.recorded_sha256("k") == sha(b"new")


# --- listing, existence, deletion, children -------------------------------------------------

KEYS = ["b.txt", "a/2.bin", "a/1.bin", "a/sub/x.json", "ab/c", ".hidden/keep"]


def test_list_is_recursive_sorted_and_hides_internal_files(store: Store) -> None:
    for key in KEYS:
        store.put_bytes(key, key.encode())
    assert store.list() == sorted(KEYS)
    assert store.list("a") == ["a/1.bin", "a/2.bin", "a/sub/x.json"]
    assert store.list("a/") == store.list("a")
    assert store.list("a/sub") == ["a/sub/x.json"]
    assert store.list("missing") == []
    assert store.list("b.txt") == []  # a prefix names a folder, not a key
    if isinstance(store, FileStore):  # the sidecars really are on disk, and filtered
        assert (store.root / "a" / SIDECAR_DIR / "1.bin").read_text() == sha(b"a/1.bin") + "\n"


def test_list_skips_s3_folder_markers(s3_server: S3Server, s3_store: S3Store) -> None:
    s3_store.put_bytes("d/x", b"1")
    s3_server.client().put_object(s3_store.bucket, "d/", io.BytesIO(b""), 0)
    assert s3_store.list() == ["d/x"]


def test_list_skips_files_whose_names_are_not_keys(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    store.put_bytes("ok", b"1")
    (tmp_path / "back\\slash").write_bytes(b"2")
    assert store.list() == ["ok"]


def test_exists_and_delete(backend: Backend) -> None:
    store = backend.store
    store.put_bytes("x/y", b"1")
    assert store.exists("x/y")
    assert not store.exists("x/z")
    assert not store.exists("x")  # a folder is not an object
    store.delete("x/y")
    assert not store.exists("x/y")
    assert store.list() == []
    store.delete("x/y")  # deleting a missing key is not an error
    store.delete("never/was")
    if isinstance(store, FileStore):
        assert not (store.root / "x" / SIDECAR_DIR / "y").exists()


def test_child_store_shares_objects_and_digests_with_its_parent(store: Store) -> None:
    child = store.child("results/bench1")
    assert child.uri == store.uri.rstrip("/") + "/results/bench1"
    digest = child.put_bytes("real/seed1.json", b"{}")
    assert store.get_bytes("results/bench1/real/seed1.json") == b"{}"
    assert store.recorded_sha256("results/bench1/real/seed1.json") == digest
    assert child.list() == ["real/seed1.json"]
    grandchild = child.child("real")
    assert grandchild.list() == ["seed1.json"]
    assert grandchild.exists("seed1.json")
    assert store.child("results/").list() == ["bench1/real/seed1.json"]


@pytest.mark.parametrize("prefix", ["..", "a/../..", "/abs", "", "a//b"])
def test_child_rejects_unsafe_prefixes(store: Store, prefix: str) -> None:
    with pytest.raises(UnsafeKeyError, match="unsafe key") as info:
        store.child(prefix)
    assert store.uri in str(info.value)


def test_local_path_is_the_real_file_or_none(store: Store) -> None:
    store.put_bytes("p/q.png", b"png")
    path = store.local_path("p/q.png")
    if isinstance(store, FileStore):
        assert path == store.root / "p" / "q.png"
        assert path.read_bytes() == b"png"
    else:
        assert path is None


# --- integrity ------------------------------------------------------------------------------


def test_corrupted_object_raises_integrity_error_naming_key_and_digests(
    backend: Backend, tmp_path: Path
) -> None:
    store = backend.store
    good = store.put_bytes("splits/ds/manifest.json", b'{"files": 3}')
    backend.tamper("splits/ds/manifest.json", b'{"files": 4}')
    bad = sha(b'{"files": 4}')
    with pytest.raises(IntegrityError) as info:
        store.get_bytes("splits/ds/manifest.json")
    message = str(info.value)
    assert "'splits/ds/manifest.json'" in message
    assert f"expected {good}" in message
    assert f"found {bad}" in message
    assert store.uri in message
    with pytest.raises(IntegrityError, match=bad):
        store.get_json("splits/ds/manifest.json")
    dst = tmp_path / "dl" / "manifest.json"
    with pytest.raises(IntegrityError, match=good):
        store.get_file("splits/ds/manifest.json", dst)
    assert list(dst.parent.iterdir()) == []  # neither the file nor a temp file
    assert store.get_bytes("splits/ds/manifest.json", verify=False) == b'{"files": 4}'


def test_objects_written_by_others_are_returned_unverified(backend: Backend) -> None:
    backend.write_foreign("synthetic/vendor/img.png", b"vendor bytes")
    store = backend.store
    assert store.recorded_sha256("synthetic/vendor/img.png") is None
    assert store.get_bytes("synthetic/vendor/img.png") == b"vendor bytes"
    assert store.list("synthetic") == ["synthetic/vendor/img.png"]


# --- missing objects, roots and buckets -----------------------------------------------------


def test_missing_object_raises_object_not_found(store: Store, tmp_path: Path) -> None:
    store.put_bytes("present", b"1")  # the root or bucket exists
    calls: list[Callable[[], object]] = [
        lambda: store.get_bytes("results/none.json"),
        lambda: store.get_json("results/none.json"),
        lambda: store.get_file("results/none.json", tmp_path / "out.json"),
        lambda: store.recorded_sha256("results/none.json"),
    ]
    for call in calls:
        with pytest.raises(ObjectNotFound, match=r"object 'results/none\.json' not found") as info:
            call()
        assert str(info.value).startswith(store.uri + ": ")
    assert not (tmp_path / "out.json").exists()
    assert not store.exists("results/none.json")


def test_missing_root_folder_raises_bucket_not_found(tmp_path: Path) -> None:
    root = tmp_path / "no" / "such" / "root"
    store = open_store(str(root))
    for call in (
        lambda: store.get_bytes("k"),
        lambda: store.exists("k"),
        lambda: store.list(),
        lambda: store.recorded_sha256("k"),
    ):
        with pytest.raises(BucketNotFound, match=f"store root {root} does not exist"):
            call()
    assert not root.exists()  # reading created nothing
    store.put_bytes("k", b"v")  # a write creates the root
    assert store.get_bytes("k") == b"v"


@pytest.mark.parametrize("region", [None, "us-east-1"])
def test_missing_bucket_raises_bucket_not_found(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, region: str | None
) -> None:
    # With a fixed region the client skips GetBucketLocation, and a HEAD on a missing bucket
    # comes back as NoSuchKey; both paths must say that the bucket is missing.
    if region:
        monkeypatch.setenv("SCARCE_S3_REGION", region)
    else:
        monkeypatch.delenv("SCARCE_S3_REGION", raising=False)
    store = s3_server.open("s3://no-such-bucket/pre")
    expected = f"bucket 'no-such-bucket' does not exist at endpoint {s3_server.endpoint}"
    for action, call in [
        ("get 'k'", lambda: store.get_bytes("k")),
        ("stat 'k'", lambda: store.exists("k")),
        ("stat 'k'", lambda: store.recorded_sha256("k")),
        ("list 'a'", lambda: store.list("a")),
        ("put 'k'", lambda: store.put_bytes("k", b"v")),
        ("delete 'k'", lambda: store.delete("k")),
    ]:
        with pytest.raises(BucketNotFound) as info:
            call()
        assert str(info.value).startswith("s3://no-such-bucket/pre: ")
        assert expected in str(info.value)
        assert action in str(info.value)


# --- keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("../x", "'..' segments"),
        ("a/../../b", "'..' segments"),
        ("a/./b", "'.' segments"),
        ("/etc/passwd", "absolute keys"),
        ("a\\b", "backslashes"),
        ("a//b", "empty segments"),
        ("a/b/", "empty segments"),
        ("", "empty"),
        ("a\x00b", "control characters"),
        ("a\nb", "control characters"),
        (f"a/{SIDECAR_DIR}/b", "reserved"),
        (f"a/b{TEMP_SUFFIX}", "reserved"),
    ],
)
def test_safe_key_rejects_keys_that_escape_or_clash(key: str, reason: str) -> None:
    with pytest.raises(UnsafeKeyError, match=reason) as info:
        safe_key(key)
    assert repr(key) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("key", ["a/b.png", "x", ".hidden", "a b/ü.json", "seed-1..2/x"])
def test_safe_key_accepts_relative_paths(key: str) -> None:
    assert safe_key(key) == key


def test_store_methods_reject_unsafe_keys_naming_the_store(store: Store, tmp_path: Path) -> None:
    for call in (
        lambda: store.put_bytes("../x", b"1"),
        lambda: store.get_bytes("../x"),
        lambda: store.exists("../x"),
        lambda: store.delete("../x"),
        lambda: store.local_path("../x"),
        lambda: store.list("../x"),
    ):
        with pytest.raises(UnsafeKeyError, match=r"unsafe key '\.\./x'") as info:
            call()
        assert str(info.value).startswith(store.uri + ": ")
    assert not (tmp_path / "x").exists()


# --- atomicity on disk ----------------------------------------------------------------------


def _files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_crash_before_rename_leaves_no_object_and_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(str(tmp_path))

    def crash(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StoreError, match=r"cannot write 'results/r\.json'.*No space left"):
        store.put_json("results/r.json", {"acc": 1.0})
    monkeypatch.undo()
    assert store.list() == []
    assert not store.exists("results/r.json")
    assert _files_under(tmp_path) == []


def test_crash_at_object_rename_keeps_the_old_object_verifiable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(str(tmp_path))
    store.put_bytes("k.bin", b"old")
    real_replace = os.replace

    def crash_on_object(src: Any, dst: Any) -> None:
        if Path(dst) == tmp_path / "k.bin":
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_object)
    with pytest.raises(StoreError, match="Input/output error"):
        store.put_bytes("k.bin", b"new")
    monkeypatch.undo()
    assert store.get_bytes("k.bin") == b"old"  # the old digest record was put back
    assert _files_under(tmp_path) == [f"{SIDECAR_DIR}/k.bin", "k.bin"]


def test_files_left_by_a_hard_crash_are_not_objects(tmp_path: Path) -> None:
    # What a killed writer leaves: a temp file, and a digest record for an object never renamed.
    store = open_store(str(tmp_path))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / f".r.json.k3j4h5{TEMP_SUFFIX}").write_bytes(b'{"acc": 0.')
    (tmp_path / "results" / SIDECAR_DIR).mkdir()
    (tmp_path / "results" / SIDECAR_DIR / "r.json").write_text(sha(b"x") + "\n")
    assert store.list() == []
    assert not store.exists("results/r.json")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("results/r.json")
    store.put_json("results/r.json", {"acc": 0.5})  # a rerun writes over the leftovers
    assert store.get_json("results/r.json") == {"acc": 0.5}
    assert store.list() == ["results/r.json"]


# --- read-only folders ----------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in [root, *root.rglob("*")]
    }


def test_reads_write_nothing_into_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "dataset"
    (root / "CR").mkdir(parents=True)
    (root / "CR" / "1.png").write_bytes(b"\x89PNG one")
    (root / "LP.png").write_bytes(b"\x89PNG two")
    before = _snapshot(root)
    store = open_store(f"file://{root}")
    assert store.list() == ["CR/1.png", "LP.png"]
    assert store.exists("CR/1.png")
    assert store.get_bytes("CR/1.png") == b"\x89PNG one"
    assert store.recorded_sha256("LP.png") is None
    store.get_file("LP.png", tmp_path / "copy.png")
    assert _snapshot(root) == before


@pytest.mark.skipif(not SHARED_SAMPLE.is_dir(), reason="shared datasets not present")
def test_shared_dataset_folder_reads_as_a_store() -> None:
    store = open_store(str(SHARED_SAMPLE))
    before = _snapshot(SHARED_SAMPLE)
    keys = store.list("CR")
    assert keys and all(k.startswith("CR/") for k in keys)
    assert store.get_bytes(keys[0]).startswith(b"\x89PNG")
    assert store.exists("SOURCE.md")
    assert _snapshot(SHARED_SAMPLE) == before


# --- opening stores -------------------------------------------------------------------------


def test_store_uri_reopens_the_same_store(backend: Backend, tmp_path: Path) -> None:
    store = backend.store.child("odd name %41")
    store.put_bytes("k", b"v")
    reopened = backend.open(store.uri)
    assert reopened.uri == store.uri
    assert reopened.get_bytes("k") == b"v"


def test_open_store_file_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert open_store(f"file://{tmp_path}/a/../b").uri == f"file://{tmp_path}/b"
    assert open_store(f"file://localhost{tmp_path}").uri == f"file://{tmp_path}"
    assert open_store(str(tmp_path)).uri == f"file://{tmp_path}"
    assert open_store("rel/dir", base_dir=tmp_path).uri == f"file://{tmp_path}/rel/dir"
    monkeypatch.chdir(tmp_path)
    assert open_store("here").uri == f"file://{tmp_path}/here"
    assert open_store(tmp_path / "p").uri == f"file://{tmp_path}/p"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("http://host/bucket", "unsupported store URI 'http://host/bucket'"),
        ("gs://bucket", "unsupported store URI 'gs://bucket'"),
        ("s3:/bucket", "unsupported store URI 's3:/bucket'"),
        ("file://relative/path", "needs an absolute path"),
        ("", "empty store URI"),
        ("s3://bad!bucket", "invalid bucket name 'bad!bucket'"),
        ("s3://ab", "invalid bucket name 'ab'"),
        ("s3://bucket/../x", r"s3://bucket/\.\./x: invalid prefix"),
    ],
)
def test_open_store_rejects_bad_uris_naming_them(uri: str, match: str) -> None:
    with pytest.raises(StoreConfigError, match=match) as info:
        open_store(uri, endpoint="127.0.0.1:9")
    assert isinstance(info.value, ValueError)
    if "unsupported" in match:
        assert "s3://bucket/prefix" in str(info.value)  # lists the supported forms


def test_open_store_s3_forms(s3_server: S3Server) -> None:
    store = s3_server.open("s3://my-bucket/some/prefix/")
    assert (store.bucket, store.prefix, store.uri) == (
        "my-bucket",
        "some/prefix",
        "s3://my-bucket/some/prefix",
    )
    assert store.endpoint == s3_server.endpoint and store.secure is False
    https = open_store("s3://b-1", endpoint="https://s3.example.org:9000")
    assert isinstance(https, S3Store)
    assert (https.endpoint, https.secure) == ("s3.example.org:9000", True)
    forced = open_store("s3://b-1", endpoint="https://s3.example.org", secure=False)
    assert isinstance(forced, S3Store) and forced.secure is False


def test_open_store_s3_endpoint_url_and_env_credentials(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.make_bucket()
    monkeypatch.setenv("SCARCE_S3_ENDPOINT", s3_server.url)
    monkeypatch.setenv("SCARCE_S3_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("SCARCE_S3_SECRET_KEY", s3_server.secret_key)
    store = open_store(f"s3://{bucket}")
    assert store.put_bytes("k", b"v") == sha(b"v")
    monkeypatch.delenv("SCARCE_S3_ACCESS_KEY")
    monkeypatch.delenv("SCARCE_S3_SECRET_KEY")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    assert open_store(f"s3://{bucket}").get_bytes("k") == b"v"


def test_open_store_s3_without_endpoint_says_how_to_set_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SCARCE_S3_ENDPOINT", raising=False)
    with pytest.raises(StoreConfigError, match=r"s3://bucket: no S3 endpoint.*SCARCE_S3_ENDPOINT"):
        open_store("s3://bucket")


# --- retries --------------------------------------------------------------------------------


def network_error() -> urllib3.exceptions.MaxRetryError:
    reason = urllib3.exceptions.NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
    return urllib3.exceptions.MaxRetryError(None, "/bucket/key", reason)  # type: ignore[arg-type]


def s3_error(code: str, status: int | None = None) -> S3Error:
    response = urllib3.HTTPResponse(status=status) if status else None
    return S3Error(response, code, f"{code} message", "/bucket/key", "req", "host")  # type: ignore[arg-type]


def failing(real: Callable[..., Any], errors: list[Exception], calls: list[int]) -> Any:
    """Wrap ``real``: raise the queued errors one per call, then call through."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return real(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize(
    "error",
    [
        network_error,
        lambda: urllib3.exceptions.ReadTimeoutError(None, "/b/k", "read timed out"),  # type: ignore[arg-type]
        lambda: urllib3.exceptions.ProtocolError("Connection aborted."),
        lambda: ConnectionResetError(104, "reset"),
        lambda: s3_error("InternalError", 500),
        lambda: s3_error("SlowDown", 503),
        lambda: s3_error("RequestTimeout", 400),
        lambda: s3_error("SomethingNew", 502),
        lambda: ServerError("server failed with HTTP status code 503", 503),
    ],
)
def test_transient_errors_are_retried_until_success(
    s3_store: S3Store, monkeypatch: pytest.MonkeyPatch, error: Callable[[], Exception]
) -> None:
    calls: list[int] = []
    client = s3_store.client
    monkeypatch.setattr(client, "put_object", failing(client.put_object, [error(), error()], calls))
    assert s3_store.put_bytes("k", b"v") == sha(b"v")
    assert len(calls) == 3
    get_calls: list[int] = []
    monkeypatch.setattr(client, "get_object", failing(client.get_object, [error()], get_calls))
    assert s3_store.get_bytes("k") == b"v"
    assert len(get_calls) == 2


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("NoSuchKey", 404, ObjectNotFound),
        ("AccessDenied", 403, StoreError),
        ("InvalidArgument", 400, StoreError),
    ],
)
def test_permanent_errors_are_not_retried(
    s3_store: S3Store,
    monkeypatch: pytest.MonkeyPatch,
    code: str,
    status: int,
    expected: type[StoreError],
) -> None:
    calls: list[int] = []
    client = s3_store.client
    errors: list[Exception] = [s3_error(code, status) for _ in range(10)]
    monkeypatch.setattr(client, "get_object", failing(client.get_object, errors, calls))
    with pytest.raises(expected) as info:
        s3_store.get_bytes("k")
    assert type(info.value) is expected
    assert len(calls) == 1
    assert "'k'" in str(info.value)
    if expected is StoreError:
        assert f"S3 error {code}" in str(info.value)


def test_real_missing_key_is_not_retried(
    s3_store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    client = s3_store.client
    monkeypatch.setattr(client, "get_object", failing(client.get_object, [], calls))
    with pytest.raises(ObjectNotFound):
        s3_store.get_bytes("absent")
    assert len(calls) == 1


def test_exhausted_retries_raise_transient_store_error_chaining_the_cause(
    s3_store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    client = s3_store.client
    errors = [network_error() for _ in range(10)]
    monkeypatch.setattr(client, "stat_object", failing(client.stat_object, errors, calls))
    s3_store.retries = 3
    with pytest.raises(TransientStoreError) as info:
        s3_store.exists("results/r.json")
    assert len(calls) == 4
    message = str(info.value)
    assert message.startswith(s3_store.uri + ": stat 'results/r.json' failed after 4 attempts")
    assert f"at endpoint {s3_store.endpoint}" in message
    assert isinstance(info.value.__cause__, urllib3.exceptions.MaxRetryError)


def test_backoff_doubles_with_small_jitter(
    s3_store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    delays: list[float] = []
    monkeypatch.setattr(store_module.time, "sleep", delays.append)
    client = s3_store.client
    errors = [s3_error("SlowDown", 503) for _ in range(3)]
    monkeypatch.setattr(client, "get_object", failing(client.get_object, errors, []))
    s3_store.put_bytes("k", b"v")
    s3_store.backoff_s = 0.1
    assert s3_store.get_bytes("k") == b"v"
    assert len(delays) == 3
    for delay, base in zip(delays, [0.1, 0.2, 0.4], strict=True):
        assert base <= delay <= base * 1.1


def test_unreachable_endpoint_fails_as_transient_after_retries() -> None:
    port = closed_port()  # nothing listens there
    store = open_store(
        "s3://bucket",
        endpoint=f"127.0.0.1:{port}",
        access_key="a",
        secret_key="b",
        retries=2,
        backoff_s=0.01,
    )
    started = time.monotonic()
    with pytest.raises(TransientStoreError, match="failed after 3 attempts") as info:
        store.get_bytes("k")
    assert time.monotonic() - started < 5
    assert isinstance(info.value.__cause__, urllib3.exceptions.MaxRetryError)
    assert f"127.0.0.1:{port}" in str(info.value)


def test_store_retries_rather_than_the_minio_client(s3_store: S3Store) -> None:
    # The client's own urllib3 pool must not retry, or attempts multiply with the store's.
    retries = s3_store.client._http.connection_pool_kw["retries"]
    assert retries.total == 0


# --- credentials ----------------------------------------------------------------------------

ACCESS = "AKIASCARCEACCESS0001"
SECRET = "scarce/SECRET+key/do-not-print-0001"


def _texts(exc: BaseException | None) -> Iterator[str]:
    while exc is not None:
        yield str(exc)
        yield repr(exc)
        exc = exc.__cause__ or exc.__context__


def test_credentials_never_appear_in_messages_reprs_or_logs(
    s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    bucket = s3_server.make_bucket()
    store = open_store(
        f"s3://{bucket}/p",
        endpoint=s3_server.endpoint,
        access_key=ACCESS,
        secret_key=SECRET,
        backoff_s=0.0,
        retries=1,
    )
    assert isinstance(store, S3Store)
    store.put_bytes("k", b"v")
    texts = [repr(store), str(store), repr(store.child("c")), repr(vars(store))]
    client = store.client
    raw = s3_server.client()
    raw.put_object(bucket, "p/t", io.BytesIO(b"x"), 1, metadata={"x-amz-meta-sha256": sha(b"y")})
    unreachable = open_store(
        "s3://bucket",
        endpoint=f"127.0.0.1:{closed_port()}",
        access_key=ACCESS,
        secret_key=SECRET,
        retries=1,
        backoff_s=0.0,
    )
    monkeypatch.setenv("SCARCE_S3_ACCESS_KEY", ACCESS)
    monkeypatch.delenv("SCARCE_S3_SECRET_KEY", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    failures: list[Callable[[], object]] = [
        lambda: store.get_bytes("missing"),
        lambda: store.get_bytes("t"),
        lambda: store.get_bytes("../x"),
        lambda: s3_server.open("s3://no-such-bucket", access_key=ACCESS, secret_key=SECRET).list(),
        lambda: unreachable.get_bytes("k"),
        lambda: open_store("s3://bucket", endpoint=f"http://{ACCESS}:{SECRET}@127.0.0.1:1"),
        lambda: open_store("s3://bucket", endpoint="127.0.0.1:1"),  # access key without secret
    ]
    for call in failures:
        with pytest.raises(StoreError) as info:
            call()
        texts.extend(_texts(info.value))
    monkeypatch.setattr(
        client, "get_object", failing(client.get_object, [s3_error("InternalError", 500)], [])
    )
    store.get_bytes("k")  # logs a retry warning
    texts.append(caplog.text)
    assert "retry 1/1" in caplog.text
    for text in texts:
        assert ACCESS not in text and SECRET not in text, text
