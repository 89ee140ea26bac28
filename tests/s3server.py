"""A real S3 HTTP server for tests: moto's server as a subprocess on 127.0.0.1.

Plain helpers (:func:`running_s3_server`, :class:`S3Server`) for scripts and benchmarks, and two
pytest fixtures: ``s3_server`` (one server per session, stopped with SIGTERM at the end) and
``s3_store`` (a fresh bucket per test, opened as an :class:`~scarce.trainer.store.S3Store`).
Load them from a test module or from tests/conftest.py with::

    pytest_plugins = ["tests.s3server"]

(pytest registers a plugin module once, so both may name it and the server still starts once;
importing the fixture functions by name instead would register a second session server.)
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from minio import Minio

from scarce.trainer.store import S3Store, open_store

ACCESS_KEY = "scarce-test-access-key"
SECRET_KEY = "scarce-test-secret-key-never-printed"
_START_TIMEOUT_S = 20.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _moto_command(port: int) -> list[str]:
    # The venv's console script sits next to its interpreter; `python -m moto.server` is the
    # same program when the script is not installed.
    script = Path(sys.executable).parent / "moto_server"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    return [*base, "-p", str(port), "-H", "127.0.0.1"]


@dataclass
class S3Server:
    """A running moto S3 server; the credentials are arbitrary (moto accepts any)."""

    endpoint: str
    process: subprocess.Popen[bytes]
    access_key: str = ACCESS_KEY
    secret_key: str = field(default=SECRET_KEY, repr=False)

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://{self.endpoint}"

    def reset(self) -> None:
        """Wipe every bucket and object (``POST /moto-api/reset``)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def client(self) -> Minio:
        """A raw MinIO client for this server (to set up or tamper behind a store's back)."""
        return Minio(
            self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False
        )

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name by default) and return its name."""
        name = name or f"test-{uuid.uuid4().hex[:16]}"
        self.client().make_bucket(name)
        return name

    def open(self, uri: str, **kwargs: object) -> S3Store:
        """``open_store(uri)`` against this server with its credentials."""
        options: dict[str, object] = {
            "endpoint": self.endpoint,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "secure": False,
            "backoff_s": 0.01,
            **kwargs,
        }
        store = open_store(uri, **options)  # type: ignore[arg-type]
        assert isinstance(store, S3Store)
        return store


def _wait_ready(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"moto server exited with code {process.returncode} before it was ready; "
                f"its output:\n{log_path.read_text(errors='replace')}"
            )
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"moto server at {url} not ready after {_START_TIMEOUT_S:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def running_s3_server(port: int | None = None) -> Iterator[S3Server]:
    """Start a moto S3 server on 127.0.0.1, yield it once it answers, stop it on exit."""
    port = port or free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="scarce-moto-"))
    log_path = log_dir / "moto.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(_moto_command(port), stdout=log, stderr=subprocess.STDOUT)
    try:
        endpoint = f"127.0.0.1:{port}"
        _wait_ready(process, f"http://{endpoint}", log_path)
        yield S3Server(endpoint=endpoint, process=process)
    finally:
        _stop(process)
        shutil.rmtree(log_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server for the whole test session."""
    with running_s3_server() as server:
        yield server


@pytest.fixture
def s3_store(s3_server: S3Server) -> S3Store:
    """An S3 store on a fresh, empty bucket of the session's server."""
    return s3_server.open(f"s3://{s3_server.make_bucket()}")
