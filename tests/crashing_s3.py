"""A moto S3 server that dies in the middle of an upload and comes back with its data.

moto keeps buckets and objects in memory only. To restart "the same server", this launcher
journals every successful mutating request (PUT, POST, DELETE: method, URI, headers, body) to a
file, and a restarted server replays the journal into a fresh moto application *before* it
listens, so a client never sees the new process without its data. With ``--crash-on REGEX`` the
server reads half of the body of the first PUT whose path matches (the Nth with ``--crash-at
N``), then exits at once (``os._exit``: no response, nothing stored, nothing journaled), as if
its machine were lost in the middle of the upload.

    python tests/crashing_s3.py --port PORT --journal FILE [--crash-on REGEX [--crash-at N]]
                                [--wait-for FILE]

``--wait-for`` makes a replacement start (imports done) and wait for a file to appear before it
replays the journal and binds the port, so a test decides exactly how long the store is down.
Used by tests/test_reliability.py; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

#: Exit code of a server that crashed on purpose (what a test waits for).
CRASH_EXIT_CODE = 86
_MUTATING = frozenset({"PUT", "POST", "DELETE"})
_NOT_REPLAYED_HEADERS = frozenset({"host", "content-length"})


class JournalingApp:
    """WSGI middleware: journal successful mutations; crash on the chosen PUT."""

    def __init__(
        self, app: Any, journal: Path, crash_on: re.Pattern[str] | None, crash_at: int = 1
    ) -> None:
        self.app = app
        self.journal = journal
        self.crash_on = crash_on
        self.crash_at = crash_at
        self.matched = 0
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable:
        method = environ["REQUEST_METHOD"]
        if method not in _MUTATING or environ["PATH_INFO"].startswith("/moto-api"):
            return self.app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if self.crash_on and method == "PUT" and self.crash_on.search(environ["PATH_INFO"]):
            with self.lock:
                self.matched += 1
                crash = self.matched == self.crash_at
            if crash:
                environ["wsgi.input"].read(length // 2)  # half of the upload has arrived
                os._exit(CRASH_EXIT_CODE)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        status: list[str] = []

        def capture(code: str, headers: list, exc_info: Any = None) -> Any:
            status.append(code)
            return start_response(code, headers, exc_info)

        result = self.app(environ, capture)
        if status and status[0].startswith("2"):
            headers = {
                key[5:].replace("_", "-").lower(): value
                for key, value in environ.items()
                if key.startswith("HTTP_")
            }
            if environ.get("CONTENT_TYPE"):
                headers["content-type"] = environ["CONTENT_TYPE"]
            entry = {
                "method": method,
                "uri": environ.get("RAW_URI") or environ["PATH_INFO"],
                "host": environ.get("HTTP_HOST", "127.0.0.1"),
                "headers": headers,
                "body": base64.b64encode(body).decode("ascii"),
            }
            with self.lock, self.journal.open("a") as fh:
                fh.write(json.dumps(entry) + "\n")
        return result


def replay(app: Any, journal: Path) -> int:
    """Apply the journaled requests to a fresh moto application; return how many."""
    from werkzeug.test import Client

    if not journal.exists():
        return 0
    client = Client(app)
    count = 0
    for line in journal.read_text().splitlines():
        entry = json.loads(line)
        headers = {
            k: v for k, v in entry["headers"].items() if k.lower() not in _NOT_REPLAYED_HEADERS
        }
        response = client.open(
            entry["uri"],
            method=entry["method"],
            headers=headers,
            data=base64.b64decode(entry["body"]),
            base_url=f"http://{entry['host']}",
        )
        if response.status_code >= 300:
            raise RuntimeError(f"replay of {entry['method']} {entry['uri']} failed: "
                               f"{response.status}")
        count += 1
    return count


def main() -> None:
    """Start (or restart) the server."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--journal", type=Path, required=True)
    parser.add_argument("--crash-on", type=re.compile, default=None)
    parser.add_argument("--crash-at", type=int, default=1)
    parser.add_argument("--wait-for", type=Path, default=None)
    args = parser.parse_args()

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    while args.wait_for is not None and not args.wait_for.exists():
        time.sleep(0.01)
    replay(app, args.journal)
    server = make_server(
        "127.0.0.1",
        args.port,
        JournalingApp(app, args.journal, args.crash_on, args.crash_at),
        threaded=True,
        request_handler=MotoRequestHandler,
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
