"""Reliability and security guarantees of the single-machine pipeline (issue 8), each a test
that fails if the guarantee breaks. docs/reliability.md maps every guarantee to its tests.

Faults: the S3 server (a real moto process, tests/crashing_s3.py) dies in the middle of an
upload and comes back with its data; split shards and manifests are corrupted; the local
executor is stopped with SIGTERM and rerun. Bad input: broken images, links and names in
dataset sources and synthetic drops, and object keys built from user input. Security: a real
benchmark on S3 with known secret values leaks none of them.

The two end-to-end runs (module fixture ``outage_run`` and the SIGTERM test) train the tiny
demo benchmark: 2 seeds x 2 arms of a test-size backbone at 32 px for 2 epochs.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from scarce.operator.plan import bind_digests, plan_benchmark
from scarce.operator.spec import SpecError, validate_document
from scarce.trainer import cli as trainer_cli
from scarce.trainer.config import DatasetConfig, SyntheticConfig
from scarce.trainer.data import assemble
from scarce.trainer.datasets import DatasetError, generate_demo, scan_dataset
from scarce.trainer.prepare import freeze_split
from scarce.trainer.runner import exit_code_for, run_unit
from scarce.trainer.shards import pack_shard
from scarce.trainer.splits import SplitIntegrityError, manifest_digest
from scarce.trainer.store import (
    CorruptObjectError,
    FileStore,
    IntegrityError,
    ObjectNotFound,
    S3Store,
    Store,
    TransientStoreError,
    UnsafeKeyError,
    open_store,
)
from scarce.trainer.synth import SyntheticSourceError, TrainingPool, get_source
from scarce.trainer.unit import EXIT_PERMANENT, WorkUnit
from tests.crashing_s3 import CRASH_EXIT_CODE
from tests.s3server import S3Server, free_port

REPO = Path(__file__).resolve().parents[1]
CRASHING_S3 = Path(__file__).with_name("crashing_s3.py")
FAST_MODEL = {"backbone": "test_resnet", "imageSize": 32, "channels": 1}
FAST_SCHEDULE = {"epochs": 2, "batchSize": 32, "lr": 0.003}
TRAIN_KEYS = {
    f"results/demo/surfaces/{arm}/kfull/seed{seed}.json"
    for arm in ("real", "vendor")
    for seed in (0, 1)
}
#: Known secret values put in the environment of the S3 run; none may appear anywhere.
SECRETS = {
    "SCARCE_S3_ACCESS_KEY": "AKIARELIABILITY7F3A9C",
    "SCARCE_S3_SECRET_KEY": "rel/SECRET+value=9b2e4d-never-printed",
    "AWS_ACCESS_KEY_ID": "AKIAOTHERKEY55B1E0D",
    "AWS_SECRET_ACCESS_KEY": "aws/OTHER+secret=c81f3a-never-printed",
}


# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "data"
    generate_demo(root, seed=0)
    return root


def bench_document(data: Path, storage: str) -> dict[str, Any]:
    """The shipped demo spec on test data: real and vendor arms, 2 seeds, a few seconds a unit."""
    document = yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())
    spec = document["spec"]
    spec["storage"] = {"uri": storage}
    spec["datasets"][0]["source"] = str(data / "surfaces")
    spec["synthetic"][0].update(uri=str(data / "vendor-drop"), perClass=12)
    spec.update(seeds=2, arms=["real", "vendor"], model=dict(FAST_MODEL),
                schedule=dict(FAST_SCHEDULE))
    return document


def write_spec(folder: Path, document: dict[str, Any]) -> Path:
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def scarce_run(spec: Path, logs: Path) -> list[str]:
    return [sys.executable, "-m", "scarce.operator.cli", "run", str(spec), "--workers", "2",
            "--log-dir", str(logs)]


def train_results(store_root: Path) -> dict[str, bytes]:
    """Train result objects of the demo benchmark in a file store: key -> bytes."""
    folder = store_root / "results" / "demo" / "surfaces"
    return {
        p.relative_to(store_root).as_posix(): p.read_bytes()
        for p in sorted(folder.glob("*/kfull/seed*.json"))
    }


def png(seed: int, size: int = 16, mode: str = "L") -> bytes:
    """A small noise image: every seed gives other bytes and another perceptual hash."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def write(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_tiles(root: Path, counts: dict[str, int] | None = None) -> Path:
    """An imagefolder dataset: good and pit, 6 noise images each."""
    for label, n in (counts or {"good": 6, "pit": 6}).items():
        for i in range(n):
            write(root, f"{label}/{label}{i}.png", png(zlib.crc32(f"{label}{i}".encode())))
    return root


def tiles_config(root: Path, **changes: Any) -> DatasetConfig:
    return DatasetConfig(name="tiles", format="imagefolder", source=str(root),
                         hardest_class="pit", **changes)


def bomb_png(width: int, height: int) -> bytes:
    """A 1-bit PNG: a few hundred bytes on disk, width x height pixels once decoded."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    body = zlib.compress(bytes(1 + (width + 7) // 8) * height, 9)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def tiff(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="TIFF")
    return buffer.getvalue()


# --- a restartable S3 server -------------------------------------------------------------------


@dataclass
class RestartableS3:
    """moto server processes sharing one port and one journal (tests/crashing_s3.py).

    Process 0 listens at once; each later one starts (imports paid), waits for its go file,
    replays the journal and takes the port over: a restart of the same server with its data,
    after exactly the downtime a test chooses.
    """

    folder: Path
    port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def server(self) -> S3Server:
        """Client helpers (open, client, make_bucket) for whichever process listens now."""
        return S3Server(endpoint=self.endpoint, process=self.processes[0],
                        access_key=SECRETS["SCARCE_S3_ACCESS_KEY"],
                        secret_key=SECRETS["SCARCE_S3_SECRET_KEY"])

    def start(self, *, crash_on: str | None = None, crash_at: int = 1) -> subprocess.Popen[bytes]:
        index = len(self.processes)
        command = [sys.executable, str(CRASHING_S3), "--port", str(self.port),
                   "--journal", str(self.folder / "journal.jsonl")]
        if crash_on:
            command += ["--crash-on", crash_on, "--crash-at", str(crash_at)]
        if index:
            command += ["--wait-for", str(self._go(index))]
        with open(self.folder / f"server-{index}.log", "wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        if index == 0:
            self.wait_ready(0)
        return process

    def _go(self, index: int) -> Path:
        return self.folder / f"go-{index}"

    def wait_ready(self, index: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes[index].poll() is not None:
                log = (self.folder / f"server-{index}.log").read_text(errors="replace")
                raise RuntimeError(f"S3 server {index} exited early:\n{log}")
            try:
                with urllib.request.urlopen(f"http://{self.endpoint}/moto-api/", timeout=1):
                    return
            except (OSError, urllib.error.URLError):
                time.sleep(0.02)
        raise RuntimeError(f"S3 server {index} not ready after {timeout:.0f} s")

    def take_over_after_crash(self, index: int, down_s: float) -> threading.Thread:
        """In the background: when process index-1 has died, wait down_s, then let process
        index replay the journal and listen."""

        def take_over() -> None:
            self.processes[index - 1].wait()
            time.sleep(down_s)
            self._go(index).touch()

        thread = threading.Thread(target=take_over, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        for index, process in enumerate(self.processes):
            self._go(index).touch()  # a waiting replacement would otherwise never look up
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def restartable_s3(tmp_path: Path) -> Iterator[RestartableS3]:
    s3 = RestartableS3(tmp_path / "s3")
    s3.folder.mkdir()
    try:
        yield s3
    finally:
        s3.stop()


RETRY_LINE = re.compile(r"put '(?P<key>[^']+)' failed .*; retry (?P<n>\d+)/\d+ in (?P<s>[\d.]+) s")


def retry_delays(text: str, key: str) -> list[float]:
    """The backoff delays the store logged for puts of ``key``."""
    return [float(m["s"]) for m in RETRY_LINE.finditer(text) if m["key"] == key]


# === Faults: the S3 server dies mid-upload and comes back ======================================


def test_s3_server_lost_mid_upload_leaves_the_old_object_and_a_retry_writes_the_new_whole(
    restartable_s3: RestartableS3, caplog: pytest.LogCaptureFixture
) -> None:
    """Process 0 dies half-way through an overwrite by a store that does not retry: after the
    restart the old object is there, whole and verified, never a part of the new one. Process
    1 dies half-way through a 3 MB upload by a retrying store: it backs off (doubling delays)
    while the server is down and, once process 2 is back with the data, writes it whole."""
    s3 = restartable_s3
    s3.start(crash_on=r"/results/r\.json$", crash_at=2)  # dies in the second put of r.json
    s3.start(crash_on=r"/shards/big\.bin$")
    s3.start()
    bucket = s3.server.make_bucket("reliability")
    no_retry = s3.server.open(f"s3://{bucket}/bench", retries=0)
    old = {"acc": 0.5, "pad": "o" * 100_000}
    no_retry.put_json("results/r.json", old)
    s3.take_over_after_crash(1, down_s=0.0)
    with pytest.raises(TransientStoreError, match=r"put 'results/r\.json' failed after 1 att"):
        no_retry.put_json("results/r.json", {"acc": 0.9, "pad": "n" * 100_000})
    assert s3.processes[0].wait(timeout=10) == CRASH_EXIT_CODE
    s3.wait_ready(1)
    # The restarted server has the data, and the half-received overwrite was never stored.
    assert no_retry.get_json("results/r.json") == old  # whole, its sha256 verified

    caplog.set_level(logging.WARNING, logger="scarce.trainer.store")
    retrying = s3.server.open(f"s3://{bucket}/bench", retries=5, backoff_s=0.2)
    data = os.urandom(3 * 2**20)
    s3.take_over_after_crash(2, down_s=1.0)
    started = time.monotonic()
    digest = retrying.put_bytes("shards/big.bin", data)
    assert s3.processes[1].wait(timeout=10) == CRASH_EXIT_CODE
    assert time.monotonic() - started > 1.0  # it really waited for the server to come back
    assert retrying.get_bytes("shards/big.bin") == data  # whole, and its sha256 verified
    assert retrying.recorded_sha256("shards/big.bin") == digest
    assert retrying.get_json("results/r.json") == old
    delays = retry_delays(caplog.text, "shards/big.bin")
    assert len(delays) >= 2, caplog.text
    for earlier, later in itertools.pairwise(delays):
        assert 1.8 <= later / earlier <= 2.2, delays  # exponential backoff, 10 % jitter


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_a_reader_never_sees_a_partial_object(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """While 4 MB objects are being written, a reader polling for them gets "not found" or the
    whole object (sha256 verified), never a part."""
    (tmp_path / "store").mkdir()
    store: Store = (
        open_store(str(tmp_path / "store")) if backend == "file"
        else request.getfixturevalue("s3_store")
    )
    blobs = {f"shards/s{i}.bin": os.urandom(4 * 2**20) for i in range(4)}
    seen: dict[str, int] = dict.fromkeys(blobs, 0)
    misses: list[str] = []
    done = threading.Event()
    deadline = time.monotonic() + 60

    def read() -> None:
        while (not done.is_set() or not all(seen.values())) and time.monotonic() < deadline:
            for key, blob in blobs.items():
                try:
                    data = store.get_bytes(key)
                except ObjectNotFound:
                    continue
                except Exception as error:  # an IntegrityError would mean a torn object
                    misses.append(f"{key}: {error!r}")
                    return
                if data != blob:
                    misses.append(f"{key}: {len(data)} of {len(blob)} bytes")
                seen[key] += 1

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    for key, blob in blobs.items():
        store.put_bytes(key, blob)
    done.set()
    reader.join(timeout=60)
    assert not misses
    assert all(seen.values())


# === Faults: a corrupted split shard or manifest ==============================================


@pytest.fixture(scope="module")
def frozen_split(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo dataset's split unit, run in a file store: manifest, shard, vendor set."""
    tmp = tmp_path_factory.mktemp("split")
    store_root = tmp / "store"
    store_root.mkdir()  # as the local executor does for a local store
    plan = plan_benchmark(validate_document(bench_document(demo_data, str(store_root))))
    (split_unit,) = plan.split
    result, _ = run_unit(split_unit)
    return {"plan": plan, "store": store_root, "split": result}


def _copy_store(frozen_split: dict[str, Any], tmp_path: Path) -> FileStore:
    copy = tmp_path / "store"
    shutil.copytree(frozen_split["store"], copy)
    store = open_store(str(copy))
    assert isinstance(store, FileStore)
    return store


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _corrupt(kind: str, store: FileStore, split: dict[str, Any]) -> tuple[str, str, str]:
    """Corrupt one object of the frozen split; return (key, expected, found) to be named."""
    manifest_key, shard_key = split["manifestKey"], split["shardKey"]
    vendor_shard = split["synthetic"]["vendor"]["shardKey"]
    if kind == "manifest bytes":  # changed on disk; its recorded sha256 is still the old one
        expected = store.recorded_sha256(manifest_key)
        _flip_a_byte(store.local_path(manifest_key))
        return manifest_key, expected, _sha(store.local_path(manifest_key).read_bytes())
    if kind == "manifest content":  # rewritten through the store: digest record matches
        manifest = store.get_json(manifest_key)
        manifest["items"][0]["role"] = "train" if manifest["items"][0]["role"] == "test" else "test"
        store.put_json(manifest_key, manifest)
        return manifest_key, split["splitDigest"], manifest_digest(manifest)
    if kind == "manifest not json":  # overwritten by another tool: no digest record at all
        garbage = b"\x00\x01 not a manifest"
        store.delete(manifest_key)
        store.local_path(manifest_key).write_bytes(garbage)
        return manifest_key, "", _sha(garbage)
    if kind in ("shard bytes", "synthetic shard bytes"):
        key = shard_key if kind == "shard bytes" else vendor_shard
        expected = store.recorded_sha256(key)
        _flip_a_byte(store.local_path(key))
        return key, expected, _sha(store.local_path(key).read_bytes())
    if kind == "shard of another split":  # a valid shard, written through the store
        other = "f" * 64
        images = np.zeros((3, 1, 32, 32), dtype=np.uint8)
        store.put_bytes(shard_key, pack_shard(images, other))
        return shard_key, split["splitDigest"], other
    raise AssertionError(kind)


CORRUPTIONS = {
    # kind: (error type, arms whose units use the corrupted object)
    "manifest bytes": (IntegrityError, {"real", "vendor"}),
    "manifest content": (SplitIntegrityError, {"real", "vendor"}),
    "manifest not json": (CorruptObjectError, {"real", "vendor"}),
    "shard bytes": (IntegrityError, {"real", "vendor"}),
    "shard of another split": (SplitIntegrityError, {"real", "vendor"}),
    "synthetic shard bytes": (IntegrityError, {"vendor"}),
}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupted_split_object_fails_every_unit_using_it_naming_object_and_digests(
    kind: str, frozen_split: dict[str, Any], tmp_path: Path
) -> None:
    """Every train unit reading a corrupted manifest or shard fails before training (assemble
    is the first thing run_train_unit does; test_pipeline_e2e proves it for the real trainer
    process), with a permanent error naming the object, the expected and the found digest;
    units that do not read it are untouched."""
    store = _copy_store(frozen_split, tmp_path)
    key, expected, found = _corrupt(kind, store, frozen_split["split"])
    error_type, using = CORRUPTIONS[kind]
    units = bind_digests(frozen_split["plan"].train,
                         {"surfaces": frozen_split["split"]["splitDigest"]})
    assert {u.arm for u in units} == {"real", "vendor"} and len(units) == 4
    for unit in units:
        if unit.arm not in using:
            assert len(assemble(store, unit).train_images)
            continue
        with pytest.raises(error_type) as caught:
            assemble(store, unit)
        message = str(caught.value)
        assert key in message and found in message, message
        assert expected in message, message
        assert exit_code_for(caught.value) == EXIT_PERMANENT  # the Job is not retried


def test_a_result_object_that_is_not_json_is_redone_not_trusted(
    frozen_split: dict[str, Any], tmp_path: Path
) -> None:
    from scarce.trainer.runner import existing_result

    store = _copy_store(frozen_split, tmp_path)
    (split_unit,) = frozen_split["plan"].split
    store.delete(split_unit.result_key)
    store.local_path(split_unit.result_key).write_bytes(b'{"splitDigest": "ab')  # cut short
    assert existing_result(store, split_unit) is None


# === Faults: the local executor stopped with SIGTERM and rerun ================================


@pytest.fixture(scope="module")
def outage_run(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`scarce run` of the demo benchmark on S3, with known secrets in its environment, while
    the S3 server dies in the middle of storing the first train result and is back 1 s later
    with its data."""
    tmp = tmp_path_factory.mktemp("outage")
    s3 = RestartableS3(tmp / "s3")
    s3.folder.mkdir()
    try:
        s3.start(crash_on=r"/results/demo/surfaces/real/kfull/seed0\.json$")
        s3.start()
        s3.server.make_bucket("scarce-outage")
        spec = write_spec(tmp, bench_document(demo_data, "s3://scarce-outage/bench"))
        env = {**os.environ, **SECRETS, "SCARCE_S3_ENDPOINT": s3.endpoint, "COLUMNS": "160"}
        s3.take_over_after_crash(1, down_s=1.0)
        logs = tmp / "logs"
        proc = subprocess.run(scarce_run(spec, logs), capture_output=True, text=True,
                              timeout=600, env=env)
        crashed = s3.processes[0].poll()
        store = s3.server.open("s3://scarce-outage/bench")
        objects = {key: store.get_bytes(key, verify=False) for key in store.list()}
        yield {
            "proc": proc, "crashed": crashed, "logs": logs, "store": store, "objects": objects,
            "report": json.loads(objects.get("reports/demo/report.json", b"null")),
            "journal": (s3.folder / "journal.jsonl").read_text(),
        }
    finally:
        s3.stop()


@pytest.mark.e2e
def test_benchmark_finishes_when_the_s3_server_dies_mid_run_and_every_object_verifies(
    outage_run: dict[str, Any],
) -> None:
    proc = outage_run["proc"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert outage_run["crashed"] == CRASH_EXIT_CODE  # it died storing real/seed0's result
    worker_logs = "".join(p.read_text() for p in outage_run["logs"].glob("worker-*.log"))
    crashed_key = "results/demo/surfaces/real/kfull/seed0.json"
    assert len(retry_delays(worker_logs, crashed_key)) >= 1, worker_logs
    store: S3Store = outage_run["store"]
    objects: dict[str, bytes] = outage_run["objects"]
    expected = {*TRAIN_KEYS, "results/demo/surfaces/split.json", "reports/demo/report.json"}
    assert expected <= objects.keys()
    for key, data in objects.items():
        # Every object was written by SCARCE in one piece: it has a digest record, and its
        # bytes are the recorded ones.
        assert store.recorded_sha256(key) == _sha(data), key
    result = json.loads(objects[crashed_key])
    assert result["unitKey"] == "train/surfaces/real/kfull/seed0" and result["perClassAccuracy"]
    assert outage_run["report"]["resultsUsed"] == 4


@pytest.mark.e2e
def test_no_secret_reaches_logs_results_reports_or_printed_output(
    outage_run: dict[str, Any],
) -> None:
    """The S3 run's credentials (and a second, unused pair) never appear in what it printed,
    its worker logs, or any object it wrote (results, splits, shards, reports, figures)."""
    proc = outage_run["proc"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The run really used these credentials: its requests were signed with the access key.
    assert f"Credential={SECRETS['SCARCE_S3_ACCESS_KEY']}/" in outage_run["journal"]
    texts = {"stdout": proc.stdout.encode(), "stderr": proc.stderr.encode()}
    texts |= {f"log {p.name}": p.read_bytes() for p in outage_run["logs"].iterdir()}
    texts |= {f"object {k}": v for k, v in outage_run["objects"].items()}
    assert any(name.startswith("log worker-") for name in texts)
    assert "retry" in texts["log worker-0.log"].decode() + texts["log worker-1.log"].decode()
    for name, value in SECRETS.items():
        for where, data in texts.items():
            assert value.encode() not in data, f"{name} found in {where}"


@pytest.mark.e2e
def test_sigterm_then_rerun_gives_the_same_report_and_no_duplicate_or_partial_result(
    demo_data: Path, tmp_path: Path, outage_run: dict[str, Any]
) -> None:
    """`scarce run` stopped with SIGTERM mid-run keeps only whole results; the rerun trains
    only what is missing, and its report equals that of a run that was never stopped (the S3
    outage run of the same spec: neither the outage nor the store changes a result)."""
    store = tmp_path / "store"
    spec = write_spec(tmp_path, bench_document(demo_data, str(store)))
    logs = tmp_path / "logs"
    proc = subprocess.Popen(scarce_run(spec, logs), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not train_results(store):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "run the same command again to resume" in output
    kept = train_results(store)
    assert 1 <= len(kept) < len(TRAIN_KEYS), output
    for key, data in kept.items():
        result = json.loads(data)  # whole JSON, the right unit, a real result
        assert key.endswith(result["unitKey"].split("/", 2)[2] + ".json")
        assert result["perClassAccuracy"]
    assert not list(store.rglob("*.scarce-tmp"))

    again = subprocess.run(scarce_run(spec, logs), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{len(kept) + 1} reused" in again.stdout  # the split and the kept results
    after = train_results(store)
    assert set(after) == TRAIN_KEYS
    assert {k: after[k] for k in kept} == kept  # kept results were not trained again
    report = json.loads((store / "reports" / "demo" / "report.json").read_text())
    assert outage_run["report"] is not None
    assert report == outage_run["report"]


# === Bad input: dataset sources ================================================================


@pytest.mark.parametrize(
    ("rel", "content", "message"),
    [
        ("pit/cut.png", lambda: png(1, size=64)[:300], "corrupt or truncated"),
        ("pit/empty.png", lambda: b"", "empty file"),
        ("pit/notes.png", lambda: b"class,file\npit,a.png\n", "not a readable image"),
        ("pit/bomb.png", lambda: bomb_png(10_000, 10_000), "decompression bomb"),
        ("pit/depth.tif", lambda: tiff(np.ones((8, 8), dtype=np.float32)), "pixel mode 'F'"),
        ("pit/counts.tif", lambda: tiff(np.ones((8, 8), dtype=np.int32)), "pixel mode 'I'"),
    ],
)
def test_bad_image_in_a_dataset_source_fails_the_split_naming_the_file(
    rel: str, content: Callable[[], bytes], message: str, tmp_path: Path
) -> None:
    root = make_tiles(tmp_path / "tiles")
    write(root, rel, content())
    with pytest.raises(DatasetError, match=message) as caught:
        freeze_split(tiles_config(root), open_store(str(root)), near_distance=4)
    assert rel in str(caught.value)
    assert exit_code_for(caught.value) == EXIT_PERMANENT


def test_other_pixel_modes_are_converted_not_refused(tmp_path: Path) -> None:
    root = make_tiles(tmp_path / "tiles")
    for i, mode in enumerate(("RGB", "RGBA", "P", "LA", "CMYK", "1", "I;16")):
        if mode == "I;16":
            data = tiff(np.full((8, 8), 40_000 + i, dtype=np.uint16))
        else:
            buffer = io.BytesIO()
            Image.open(io.BytesIO(png(100 + i))).convert(mode).save(
                buffer, format="TIFF" if mode == "CMYK" else "PNG")
            data = buffer.getvalue()
        write(root, f"pit/mode{i}.{'tif' if mode in ('CMYK', 'I;16') else 'png'}", data)
    manifest = freeze_split(tiles_config(root), open_store(str(root)), near_distance=4)
    assert sum(i["label"] == "pit" for i in manifest["items"]) == 13


def test_symlink_leaving_the_source_is_refused_naming_link_and_target(tmp_path: Path) -> None:
    root = make_tiles(tmp_path / "tiles")
    secret = write(tmp_path / "outside", "secret.png", png(99))
    (root / "pit" / "link.png").symlink_to(secret)
    with pytest.raises(UnsafeKeyError) as caught:
        freeze_split(tiles_config(root), open_store(str(root)), near_distance=4)
    assert "'pit/link.png'" in str(caught.value) and str(secret.resolve()) in str(caught.value)
    assert exit_code_for(caught.value) == EXIT_PERMANENT


def test_linked_class_folder_leaving_the_source_is_refused_naming_it(tmp_path: Path) -> None:
    root = make_tiles(tmp_path / "tiles")
    elsewhere = make_tiles(tmp_path / "elsewhere", {"crack": 3})
    (root / "crack").symlink_to(elsewhere / "crack", target_is_directory=True)
    with pytest.raises(UnsafeKeyError, match=r"'crack' is a symlink .* outside the store root"):
        scan_dataset("imagefolder", open_store(str(root)))


def test_links_that_stay_inside_the_source_are_read(tmp_path: Path) -> None:
    root = make_tiles(tmp_path / "tiles")
    (root / "pit" / "again.png").symlink_to(root / "pit" / "pit0.png")
    manifest = freeze_split(tiles_config(root), open_store(str(root)), near_distance=4)
    assert "pit/again.png" in {i["key"] for i in manifest["items"]}


def test_dataset_root_option_cannot_leave_the_source(tmp_path: Path) -> None:
    root = make_tiles(tmp_path / "data" / "tiles")
    make_tiles(tmp_path / "data" / "other")
    store = open_store(str(root))
    with pytest.raises(DatasetError, match=r"option root: '\.\./other' is not a safe relative"):
        scan_dataset("imagefolder", store, {"root": "../other"})
    # An absolute root is a folder inside the source, never the machine's /other.
    with pytest.raises(DatasetError, match=r"found 0 class\(es\)"):
        scan_dataset("imagefolder", store, {"root": "/other"})


def test_unsafe_object_names_in_an_s3_source_are_never_read(
    s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = s3_server.make_bucket()
    raw = s3_server.client()
    for key in ("tiles/good/g0.png", "tiles/good/g1.png", "tiles/pit/p0.png",
                "tiles/pit/p1.png", "tiles//pit/abs.png", "tiles/pit//twice.png"):
        data = png(zlib.crc32(key.encode()))
        raw.put_object(bucket, key, io.BytesIO(data), len(data))
    caplog.set_level(logging.WARNING, logger="scarce.trainer.store")
    records = scan_dataset("imagefolder", s3_server.open(f"s3://{bucket}/tiles"))
    assert [r.key for r in records] == ["good/g0.png", "good/g1.png", "pit/p0.png", "pit/p1.png"]
    assert "skipping '/pit/abs.png': not a valid store key" in caplog.text
    assert "skipping 'pit//twice.png': not a valid store key" in caplog.text


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    root = make_tiles(tmp_path / "tiles")
    write(root, "crack/README.txt", b"no images yet")
    with pytest.raises(DatasetError, match=r"class folder 'crack/' holds no images"):
        freeze_split(tiles_config(root), open_store(str(root)))


def test_class_too_small_for_the_split_is_named(tmp_path: Path) -> None:
    root = make_tiles(tmp_path / "tiles", {"good": 6, "pit": 1})
    with pytest.raises(ValueError, match=r"class 'pit' has 1 distinct images .* too few") as c:
        freeze_split(tiles_config(root), open_store(str(root)))
    assert exit_code_for(c.value) == EXIT_PERMANENT


# === Bad input: synthetic drops ===============================================================


def _pool() -> TrainingPool:
    classes = ["good", "pit", "scratch"]
    labels = np.array([0, 0, 1, 1, 2, 2], dtype=np.int64)
    return TrainingPool(
        classes=classes, good_class="good", images=np.zeros((6, 1, 16, 16), dtype=np.uint8),
        labels=labels, keys=[f"k{i}" for i in range(6)], sha256=[f"s{i}" for i in range(6)],
    )


def _drop(root: Path, counts: dict[str, int]) -> Path:
    for label, n in counts.items():
        for i in range(n):
            write(root, f"{label}/{label}_{i}.png", png(zlib.crc32(f"drop{label}{i}".encode())))
    return root


def _generate(drop: Path, per_class: int = 2) -> Any:
    config = SyntheticConfig(name="vendor", kind="external", uri=str(drop), per_class=per_class)
    return get_source("external").generate(config, _pool(), image_size=16, channels=1)


def test_a_good_drop_gives_per_class_images_of_every_defect_class(tmp_path: Path) -> None:
    made = _generate(_drop(tmp_path / "drop", {"pit": 3, "scratch": 2, "good": 4}))
    # Images of the good class are not synthetic defects: they are never added.
    assert made.counts() == {"pit": 2, "scratch": 2}


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ({"pit": 3}, r"class 'scratch' has 0 images in .*drop, perClass asks for 2"),
        ({"pit": 3, "scratch": 1}, r"class 'scratch' has 1 images in .*drop, perClass asks"),
        ({"pit": 3, "scratch": 3, "crack": 2, "Pit": 1},
         r"classes \['Pit', 'crack'\] are not classes of the dataset \(good, pit, scratch\)"),
    ],
)
def test_drop_with_missing_short_or_extra_classes_is_refused_naming_them(
    counts: dict[str, int], message: str, tmp_path: Path
) -> None:
    with pytest.raises(SyntheticSourceError, match=message) as caught:
        _generate(_drop(tmp_path / "drop", counts))
    assert "'vendor'" in str(caught.value)
    assert exit_code_for(caught.value) == EXIT_PERMANENT


def test_unreadable_file_in_a_drop_is_refused_naming_it(tmp_path: Path) -> None:
    drop = _drop(tmp_path / "drop", {"pit": 1, "scratch": 2})
    write(drop, "pit/broken.png", b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DatasetError, match=r"pit/broken.png: corrupt or truncated"):
        _generate(drop)


def test_link_leaving_a_drop_is_refused_naming_it(tmp_path: Path) -> None:
    drop = _drop(tmp_path / "drop", {"pit": 1, "scratch": 2})
    secret = write(tmp_path / "private", "test-image.png", png(7))
    (drop / "pit" / "borrowed.png").symlink_to(secret)
    with pytest.raises(UnsafeKeyError, match=r"'pit/borrowed.png' is a symlink"):
        _generate(drop)


# === Bad input: object keys built from user input ==============================================

ESCAPES = ["..", "../other", "a/b", "/abs", "%2e%2e", "..%2fother", "bench\n", "a\\b",
           "Bench", "-x", "x" * 41, "．．", ""]


def _spec_with(path: tuple[Any, ...] = (), value: str = "") -> dict[str, Any]:
    document = {
        "apiVersion": "scarce.dev/v1alpha1", "kind": "ScarceBenchmark",
        "metadata": {"name": "bench"},
        "spec": {"storage": {"uri": "store"}, "seeds": 2,
                 "datasets": [{"name": "tiles", "format": "imagefolder", "source": "data",
                               "hardestClass": "pit"}],
                 "synthetic": [{"name": "vendor", "kind": "external", "uri": "drop",
                                "perClass": 2}]},
    }
    node: Any = document
    for part in path[:-1]:
        node = node[part]
    if path:
        node[path[-1]] = value
    return document


@pytest.mark.parametrize("name", ESCAPES)
@pytest.mark.parametrize(
    ("path", "shown"),
    [
        (("metadata", "name"), "metadata.name"),
        (("spec", "datasets", 0, "name"), "spec.datasets[0].name"),
        (("spec", "synthetic", 0, "name"), "spec.synthetic[0].name"),
    ],
)
def test_names_that_go_into_object_keys_cannot_leave_the_benchmark_prefix(
    name: str, path: tuple[Any, ...], shown: str
) -> None:
    with pytest.raises(SpecError) as caught:
        validate_document(_spec_with(path, name))
    assert any(m.startswith(f"{shown}: must be 1-40 lowercase") and repr(name) in m
               for m in caught.value.messages), caught.value.messages


@pytest.mark.parametrize("arm", ["../real", "real/../../x", "vendor/..", "/vendor"])
def test_arms_are_only_known_names(arm: str) -> None:
    document = _spec_with()
    document["spec"]["arms"] = ["real", arm]
    with pytest.raises(SpecError, match=r"spec\.arms: unknown arm"):
        validate_document(document)


@pytest.mark.parametrize(
    ("field", "value"),
    [("benchmark", "../other"), ("benchmark", "other/demo"), ("benchmark", "%2e%2e"),
     ("arm", "../../reports/x"), ("placeboSource", "a/b")],
)
def test_a_hand_made_unit_cannot_point_keys_elsewhere(field: str, value: str) -> None:
    """Units reach the trainer as JSON (a Job's arguments, a worker's stdin): one whose names
    would put a key outside its benchmark is refused before anything runs."""
    unit = {"stage": "reduce", "benchmark": "demo", "storage": {"uri": "file:///nowhere"},
            field: value}
    assert trainer_cli.main(["reduce", "--unit-json", json.dumps(unit)]) == EXIT_PERMANENT
    with pytest.raises(ValueError, match=r"must be 1-40 lowercase"):
        WorkUnit.model_validate(unit)


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_the_store_keeps_every_key_inside_the_benchmark_prefix(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Traversal keys are refused; encoded and look-alike dots are literal names that stay
    under the prefix (file names on disk, object names in the bucket)."""
    if backend == "file":
        root: Store = open_store(str(tmp_path / "store"))
    else:
        root = request.getfixturevalue("s3_store")
    bench = root.child("results/demo")
    for key in ("../other/x.json", "../../x", "a/../../x", "/etc/x", "a\\..\\x", "..", "."):
        with pytest.raises(UnsafeKeyError, match="unsafe key"):
            bench.put_bytes(key, b"1")
        with pytest.raises(UnsafeKeyError, match="unsafe key"):
            bench.get_bytes(key)
    literal = ["%2e%2e/%2e%2e/x", "..%2f..%2fx", "．．/x", "\u2025/x", "...", "a..b"]
    for key in literal:
        bench.put_bytes(key, b"1")
    assert sorted(root.list()) == sorted(f"results/demo/{k}" for k in literal)
    if backend == "file":
        assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    else:
        raw = root.client.list_objects(root.bucket, recursive=True)  # type: ignore[attr-defined]
        assert all(o.object_name.startswith("results/demo/") for o in raw)
