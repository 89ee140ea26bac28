"""The local executor: run a plan on one machine, stage by stage, in worker processes.

Each worker is a long-lived ``scarce-trainer serve`` process (torch and timm are imported once
per worker, not once per unit); units are handed to free workers as JSON lines. The executor
never imports torch. Results are written by the units themselves, atomically, so an
interrupted run (Ctrl-C, SIGTERM) leaves no partial result and a rerun resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from scarce.operator.plan import Plan, bind_digests
from scarce.trainer.config import PLACEBO_ARM
from scarce.trainer.store import TEMP_SUFFIX, open_store
from scarce.trainer.unit import WorkUnit

ProgressCallback = Callable[[str, dict[str, Any]], None]


class ExecutorInterrupted(Exception):
    """The run was interrupted; finished results are kept, a rerun resumes."""


@dataclass
class RunOutcome:
    """What a local run did: per-unit outcomes, the report (if reduced) and failures."""

    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> dict[str, dict[str, Any]]:
        """Outcomes of units that failed."""
        return {k: o for k, o in self.outcomes.items() if o["status"] == "failed"}

    def count(self, status: str) -> int:
        """Number of units with the given status (done, skipped, failed)."""
        return sum(1 for o in self.outcomes.values() if o["status"] == status)


class _Worker:
    """One `scarce-trainer serve` subprocess."""

    def __init__(self, index: int, device: str, threads: int, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"worker-{index}.log"
        self._log: IO[bytes] = self.log_path.open("ab")
        env = dict(os.environ)
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        # A new session: Ctrl-C reaches only the executor, which stops the workers itself, so
        # no worker is killed half-way through writing (results are atomic anyway).
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scarce.trainer.cli", "serve", "--device", device],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            start_new_session=True,
            text=True,
            bufsize=1,
        )
        ready = self._read_line()
        if not ready or not json.loads(ready).get("ready"):
            raise RuntimeError(f"worker {index} did not start; see {self.log_path}")

    def _read_line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline()

    def run(self, unit: WorkUnit) -> dict[str, Any]:
        """Send one unit, wait for its outcome."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(unit.to_json_dict()) + "\n")
            self.process.stdin.flush()
            line = self._read_line()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            code = self.process.poll()
            return {"key": unit.key, "status": "failed", "exitCode": code or 1,
                    "error": f"worker exited (code {code}); see {self.log_path}"}
        return json.loads(line)

    def stop(self, *, kill: bool = False) -> None:
        """End the worker: close its input (graceful) or terminate it (interrupt)."""
        if kill:
            self.process.terminate()
        elif self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


class LocalExecutor:
    """Runs a plan with `workers` processes; reports progress through a callback."""

    def __init__(
        self,
        plan: Plan,
        *,
        workers: int = 1,
        device: str = "cpu",
        log_dir: Path,
        progress: ProgressCallback | None = None,
        threads: int | None = None,
    ) -> None:
        self.plan = plan
        self.workers = max(1, workers)
        self.device = device
        self.log_dir = log_dir
        self.progress = progress or (lambda event, data: None)
        cpus = os.cpu_count() or 1
        self.threads = threads or max(1, cpus // self.workers)
        self._stop = threading.Event()

    def run(self) -> RunOutcome:
        """Run every stage; raise ExecutorInterrupted on Ctrl-C/SIGTERM (results kept)."""
        outcome = RunOutcome()
        started = time.perf_counter()
        previous = signal.getsignal(signal.SIGTERM)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _raise_interrupt)
        pool: list[_Worker] = []
        try:
            self.progress("start", {"total": self.plan.total})
            pool = [
                _Worker(i, self.device, self.threads, self.log_dir)
                for i in range(
                    min(self.workers, max(1, len(self.plan.train), len(self.plan.split)))
                )
            ]
            store_uri = self.plan.reduce.storage
            if store_uri.uri.startswith("file://"):
                # A local store is just a folder: make it, as `mkdir -p` would.
                Path(store_uri.uri.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
                _remove_temp_files(store_uri.uri)  # left by a run killed mid-write
            self._run_stage("split", self.plan.split, pool, outcome)
            digests, refused = self._split_digests(store_uri.uri, store_uri.endpoint, outcome)
            pending = self.plan.pilot + self.plan.train + self.plan.fidelity
            ready = [u for u in pending if u.dataset.name in digests]
            blocked = [u for u in pending if u.dataset.name not in digests]
            for unit in blocked:
                self._record(outcome, {"key": unit.key, "status": "failed", "exitCode": 3,
                                       "error": f"split of {unit.dataset.name} failed"})
            # Arms of a source the leakage check refused fail at once, naming the files; the
            # other arms go on (anomalib's rule: log the failed job, run the rest, fail at end).
            for unit in [u for u in ready if _refused_source(u, refused)]:
                ready.remove(unit)
                self._record(outcome, {"key": unit.key, "status": "failed", "exitCode": 3,
                                       "error": _refused_source(unit, refused)})
            bound = bind_digests(ready, digests)
            self._run_stage("pilot", [u for u in bound if u.stage == "pilot"], pool, outcome)
            self._run_stage("train", [u for u in bound if u.stage == "train"], pool, outcome)
            self._run_stage("fidelity", [u for u in bound if u.stage == "fidelity"], pool,
                            outcome)
            if digests and self.plan.reduce_enabled:
                # A dataset whose split failed has nothing to reduce; the others still report
                # (the operator's rule too).
                reduce = self.plan.reduce.model_copy(update={"datasets": [
                    d for d in self.plan.reduce.datasets if d.name in digests
                ]})
                self._run_stage("reduce", [reduce], pool, outcome)
                store = open_store(store_uri.uri, endpoint=store_uri.endpoint)
                outcome.report = store.get_json(self.plan.reduce.result_key)
        except KeyboardInterrupt:
            self._stop.set()
            for worker in pool:
                worker.stop(kill=True)
            pool = []
            # A worker killed mid-write leaves its temporary file (never a visible object).
            _remove_temp_files(self.plan.reduce.storage.uri)
            raise ExecutorInterrupted(
                f"interrupted: {outcome.count('done')} unit(s) finished and kept; run the same "
                "command again to resume"
            ) from None
        finally:
            for worker in pool:
                worker.stop()
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, previous)
            outcome.seconds = time.perf_counter() - started
        return outcome

    def _record(self, outcome: RunOutcome, result: dict[str, Any]) -> None:
        outcome.outcomes[result["key"]] = result
        self.progress("unit", result)

    def _run_stage(
        self, stage: str, units: list[WorkUnit], pool: list[_Worker], outcome: RunOutcome
    ) -> None:
        if not units:
            return
        self.progress("stage", {"stage": stage, "units": len(units)})
        todo: queue.Queue[WorkUnit] = queue.Queue()
        for unit in units:
            todo.put(unit)
        errors: list[BaseException] = []

        def drain(worker: _Worker) -> None:
            while not self._stop.is_set():
                try:
                    unit = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    self._record(outcome, worker.run(unit))
                except BaseException as error:  # surfaced after the threads join
                    errors.append(error)
                    return

        threads = [threading.Thread(target=drain, args=(w,), daemon=True) for w in pool]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.2)  # short joins keep Ctrl-C responsive
        if errors:
            raise errors[0]

    def _split_digests(
        self, store_uri: str, endpoint: str | None, outcome: RunOutcome
    ) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
        """Split digest per dataset, and the error of every (dataset, source) refused by the
        leakage check."""
        store = open_store(store_uri, endpoint=endpoint)
        digests, refused = {}, {}
        for unit in self.plan.split:
            if outcome.outcomes.get(unit.key, {}).get("status") == "failed":
                continue
            result = store.get_json(unit.result_key)
            digests[unit.dataset.name] = result["splitDigest"]
            for source, summary in result.get("synthetic", {}).items():
                if "error" in summary:
                    refused[(unit.dataset.name, source)] = summary["error"]
        return digests, refused


def _refused_source(unit: WorkUnit, refused: dict[tuple[str, str], str]) -> str | None:
    """The refusal a train unit inherits from its synthetic source (or placebo's), if any."""
    if unit.stage != "train":
        return None
    if unit.arm == PLACEBO_ARM:
        error = refused.get((unit.dataset.name, unit.placebo_source or ""))
        return error and f"the placebo arm copies the counts of a refused source: {error}"
    return refused.get((unit.dataset.name, unit.arm or ""))


def _remove_temp_files(store_uri: str) -> None:
    """Delete the temporary files of unfinished writes in a local store.

    Only this executor writes to the store while it runs, so any temporary file there belongs
    to a write that will never finish.
    """
    if not store_uri.startswith("file://"):
        return
    root = Path(store_uri.removeprefix("file://"))
    for path in root.rglob(f"*{TEMP_SUFFIX}"):
        path.unlink(missing_ok=True)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
