"""Operator at scale (issue 7, item 5): reconcile benchmarks of about 100, 1,000 and 5,000 units,
first as the pure decision (no API server), then as the real kopf operator against kmock; time,
API requests, operator RSS and status size, with a log-log growth plot.

Pure part: `scarce.operator.reconcile.reconcile` on a simulated cluster (the Jobs a dict, as in
tests/test_reconcile.py) at five points of a benchmark's life: ``empty`` (nothing exists),
``createTrain`` (splits done: every train Job is built), ``full`` (every train Job exists),
``finished`` (every train Job finished, a third failed: TTLs, Events, the Degraded message)
and ``done`` (every Job gone, outcomes from the ledger: the final phase and seed pairs).

kmock part: the operator runs as ``kopf run -m scarce.operator.handlers`` would, in a child
process (so its CPU time and RSS are its own), against kmock in this process. This process
plays the Job controller and the trainer: it finishes the split Jobs (writing split.json in a
file:// store), waits until every train Job exists, then finishes them all (a third Failed, as
in the pure part), the fidelity Jobs and the reducer, until the benchmark's final phase.
Every request kmock serves is counted by verb and resource, and split by client: kopf's own
(watches, its annotations) and SCARCE's reconcile (the kubernetes client); this process's
requests carry a header and are left out.

kmock 0.8 re-filters its whole request log to route every request, and scans every stored
object to find one: its per-request cost grows with the requests and objects before it. With
``--kmock fast`` (the default) the script routes by each reaction's own filter and finds
objects by key, which gives the same answers in O(1); ``--kmock stock`` measures kmock as
shipped. The operator's own cost is shown apart from kmock's either way: its process CPU time
and the time spent in SCARCE's functions (timed inside the operator process).

Usage (the commands behind docs/performance.md, "Operator at scale")::

    python benchmarks/operator_scale.py --sizes 100 1000 5000 \\
        --pure-sizes 100 300 1000 3000 5000 10000 --json docs/perf/operator-scale-fast.json
    python benchmarks/operator_scale.py --kmock-only --kmock stock --sizes 100 1000 5000 \\
        --no-complete --timeout 400 --json docs/perf/operator-scale-stock.json
    python benchmarks/operator_scale.py --plot docs/perf/operator-scale.png \\
        --from-json docs/perf/operator-scale-fast.json docs/perf/operator-scale-stock.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from scarce.operator.jobs import JobSettings, Owner
from scarce.operator.plan import Plan, plan_benchmark
from scarce.operator.reconcile import packs_of, reconcile
from scarce.operator.spec import ScarceBenchmark, validate_document
from scarce.trainer.unit import WorkUnit

NS = "default"
BENCHMARKS = "scarce.dev/v1alpha1/scarcebenchmarks"
JOBS = "batch/v1/jobs"
DRIVER_HEADER = "X-Scarce-Bench-Driver"
ARMS = ["real", "placebo", "vendor", "cutpaste"]
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


# --- the benchmarks measured ------------------------------------------------------------------


def spec_for(units: int, shape: str) -> dict[str, Any]:
    """A spec whose plan has about `units` units.

    ``datasets``: 7 seeds, arms real/placebo/vendor/cutpaste, fewShot [5]: 49 train units, a
    split and a fidelity unit per dataset, and datasets grow. ``seeds``: one dataset, the same
    arms, fewShot [2, 3, 5]: 13 train units per seed, and seeds grow (at most 1,000).
    """
    if shape == "datasets":
        datasets, seeds, few_shot = max(1, round((units - 1) / 51)), 7, [5]
    elif shape == "seeds":
        datasets, seeds, few_shot = 1, min(1000, max(2, round((units - 3) / 13))), [2, 3, 5]
    else:
        raise ValueError(f"shape: expected datasets or seeds, got {shape!r}")
    return {
        "storage": {"uri": "s3://bench/runs", "credentials": {"secretName": "store"}},
        "datasets": [{"name": f"d{i:03d}", "format": "imagefolder",
                      "source": f"s3://bench/data/d{i:03d}", "hardestClass": "pit"}
                     for i in range(datasets)],
        "synthetic": [{"name": n, "kind": "external", "uri": f"s3://bench/{n}", "perClass": 10}
                      for n in ("vendor", "cutpaste")],
        "arms": ARMS, "seeds": seeds, "fewShot": few_shot, "minPairs": 2,
        "parallelism": 10_000,  # every Job of a stage is created in one pass
    }


def load(name: str, spec: Mapping[str, Any]) -> ScarceBenchmark:
    return validate_document({"apiVersion": "scarce.dev/v1alpha1", "kind": "ScarceBenchmark",
                              "metadata": {"name": name, "namespace": NS}, "spec": spec})


# --- pure part: the decision on a simulated cluster -------------------------------------------


class Store:
    """Split results and the report, as the operator's StoreReader returns them."""

    def split_result(self, dataset: str) -> Mapping[str, Any] | None:
        return {"splitDigest": f"digest-{dataset}", "synthetic": {}}

    def has_result(self, unit: WorkUnit) -> bool:
        return False

    def report(self) -> Mapping[str, Any] | None:
        return {"benchmark": "b", "datasets": []}


class Sim:
    """A cluster that applies decisions as the handlers do (status, then Jobs, then TTLs)."""

    def __init__(self, bench: ScarceBenchmark) -> None:
        self.bench, self.plan = bench, plan_benchmark(bench)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.status: dict[str, Any] = {}
        self.owner = Owner(bench.name, NS, "uid-1")

    def decide(self) -> Any:
        return reconcile(self.bench, owner=self.owner, status=self.status, generation=1,
                         jobs=self.jobs, reader=Store(), settings=JobSettings(),
                         plan=self.plan, now=T0)

    def apply(self, decision: Any) -> None:
        self.status = {**self.status, **decision.status}
        for manifest in decision.create:
            self.jobs[manifest["metadata"]["name"]] = manifest
        for name in decision.ttl:
            self.jobs[name]["spec"]["ttlSecondsAfterFinished"] = decision.ttl_seconds

    def finish_running(self, fail_every: int = 0) -> None:
        running = [j for j in self.jobs.values() if not j.get("status")]
        for i, job in enumerate(running):
            kind = "Failed" if fail_every and i % fail_every == fail_every - 1 else "Complete"
            job["status"] = {"conditions": [{"type": kind, "status": "True", "reason": "Sim"}]}

    def ttl_delete(self) -> None:
        self.jobs = {n: j for n, j in self.jobs.items()
                     if "ttlSecondsAfterFinished" not in j["spec"]}


def measure_decision(sim: Sim, repeats: int) -> dict[str, Any]:
    """The decision's median CPU time (other processes on a shared machine inflate its wall
    time, not its CPU time) and wall time, its peak Python allocation, the API calls it makes
    (GET the benchmark, LIST its Jobs, PATCH the status, then the creates, TTL patches and
    Events) and the status size; the decision is then applied."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        decision = sim.decide()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    tracemalloc.start()
    sim.decide()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    sim.apply(decision)
    calls = {"get": 1, "list": 1, "patchStatus": 1, "createJob": len(decision.create),
             "patchJobTtl": len(decision.ttl), "createEvent": len(decision.events)}
    return {"seconds": statistics.median(cpus), "wallSeconds": statistics.median(walls),
            "minSeconds": min(cpus), "peakAllocBytes": peak, "calls": calls,
            "apiCalls": sum(calls.values()), "phase": decision.phase,
            "statusBytes": len(json.dumps(sim.status, separators=(",", ":")))}


def pure_run(units: int, shape: str, repeats: int) -> dict[str, Any]:
    """The five decision points of one benchmark's life (see the module docstring)."""
    bench = load("bench", spec_for(units, shape))
    started = time.perf_counter()
    sim = Sim(bench)
    plan_seconds = time.perf_counter() - started
    out: dict[str, Any] = {"shape": shape, "target": units, "units": sim.plan.total,
                           "datasets": len(bench.spec.datasets), "seeds": bench.spec.seeds,
                           "planSeconds": plan_seconds}
    out["empty"] = measure_decision(sim, repeats)
    sim.finish_running()
    out["createTrain"] = measure_decision(sim, repeats)
    out["full"] = measure_decision(sim, repeats)
    sim.finish_running(fail_every=3)
    out["finished"] = measure_decision(sim, repeats)
    for _ in range(4):  # fidelity, then the reducer; Jobs deleted by their TTL meanwhile
        sim.ttl_delete()
        sim.finish_running()
        sim.apply(sim.decide())
    sim.ttl_delete()
    out["done"] = measure_decision(sim, repeats)
    return out


# --- kmock part: the operator process ---------------------------------------------------------


class Timers:
    """Wall and thread-CPU seconds of the operator's own functions (in total and per call),
    written to a JSON file after every reconcile (read by the parent at its milestones, so
    a reconcile still running then is not counted yet)."""

    def __init__(self, path: Path) -> None:
        self.path, self.data = path, {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                entry = self.data.setdefault(name, {"calls": 0, "wall": 0.0, "cpu": 0.0,
                                                    "each": []})
                entry["calls"] += 1
                entry["wall"] += time.perf_counter() - wall
                entry["cpu"] += time.thread_time() - cpu
                entry["each"].append([round(time.perf_counter() - wall, 4),
                                      round(time.thread_time() - cpu, 4)])
        return timed

    def dump(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        tmp.replace(self.path)


def operator_child(stats: Path) -> None:
    """The operator, as ``kopf run -m scarce.operator.handlers --standalone --namespace``,
    with SCARCE's functions timed."""
    import kopf

    from scarce.operator import handlers

    timers = Timers(stats)
    for name in ("_get_benchmark", "_list_jobs", "_decide", "_apply", "reconcile"):
        setattr(handlers, name, timers.wrap(name, getattr(handlers, name)))
    reconcile_benchmark = handlers.reconcile_benchmark

    async def counted(*args: Any, **kwargs: Any) -> Any:
        wall = time.perf_counter()
        try:
            return await reconcile_benchmark(*args, **kwargs)
        finally:
            entry = timers.data.setdefault("reconciles", {"calls": 0, "wall": 0.0})
            entry["calls"] += 1
            entry["wall"] += time.perf_counter() - wall
            timers.dump()

    handlers.reconcile_benchmark = counted
    settings = kopf.OperatorSettings()
    # kmock answers GET /api/v1/namespaces with 500 (test-infra-notes.md): nothing to scan.
    settings.scanning.disabled = True
    kopf.run(standalone=True, namespaces=[NS], settings=settings)
    timers.dump()


def proc_status(pid: int) -> dict[str, float]:
    """RSS, peak RSS (MiB) and CPU seconds of a process, from /proc."""
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"rssMiB": int(fields["VmRSS"].split()[0]) / 1024,
            "peakRssMiB": int(fields["VmHWM"].split()[0]) / 1024,
            "cpuSeconds": (int(stat[11]) + int(stat[12])) / ticks}


def self_cpu() -> float:
    usage = os.times()
    return usage.user + usage.system


# --- kmock part: kmock and this process's side ------------------------------------------------


def fast_kmock() -> None:
    """Make kmock's cost per request independent of the requests and objects before it.

    kmock routes a request by testing ``request in reaction_source``, which iterates the whole
    request log through every filter; and finds an object by scanning every stored object.
    Here, a chain of filters and priorities answers membership by its own criteria, and a
    lookup by resource, namespace and name uses the store's dict (kmock's own key for it).
    """
    from kmock._internal import dsl, k8s, rendering

    contains = dsl.View.__contains__
    scan = k8s.KubernetesEmulator._KubernetesEmulator__get_objs

    def routed(self: Any, item: Any) -> bool:
        if not isinstance(item, rendering.Request):
            return contains(self, item)
        view = self
        while type(view) in (dsl.Filter, dsl.Priority):
            if type(view) is dsl.Filter and not view.criteria(item):
                return False
            view = view._source
        if isinstance(view, dsl.Root):  # the request is among the latest it recorded
            return any(r is item for r in reversed(view._requests))
        return contains(view, item)

    def by_key(self: Any, request: Any, strict: bool) -> list[Any]:
        if strict and request.resource is not None and request.name is not None:
            obj = self._objects._objects.get((request.resource, request.namespace, request.name))
            return [] if obj is None else [obj]
        return scan(self, request, strict)

    dsl.View.__contains__ = routed
    k8s.KubernetesEmulator._KubernetesEmulator__get_objs = by_key


def request_kind(request: Any) -> tuple[str, str]:
    """(client, ``verb resource[/subresource]``) of a request kmock served."""
    headers = request.headers or {}
    if DRIVER_HEADER in headers:
        who = "driver"
    elif str(headers.get("User-Agent", "")).startswith("kopf"):
        who = "kopf"
    else:
        who = "scarce"
    if request.resource is None or request.action is None:
        return who, "discovery"
    verb = {"FETCH": "get", "UPDATE": "patch"}.get(request.action.name,
                                                   request.action.name.lower())
    sub = f"/{request.subresource}" if request.subresource else ""
    return who, f"{verb} {request.resource.plural}{sub}"


class Driver:
    """This process's side: the benchmark's creator, the Job controller and the trainer."""

    def __init__(self, k: Any, session: Any, url: str, name: str, store: Path) -> None:
        self.k, self.session, self.url, self.name, self.store = k, session, url, name, store
        self.seen = 0
        self.counts: Counter[tuple[str, str]] = Counter()

    def tally(self) -> Counter[tuple[str, str]]:
        """Requests served so far, by client and kind (read incrementally)."""
        log = self.k._requests
        for request in log[self.seen:]:
            self.counts[request_kind(request)] += 1
        self.seen = len(log)
        return self.counts

    async def send(self, method: str, path: str, body: Any) -> None:
        async with self.session.request(method, self.url + path, json=body,
                                        headers={DRIVER_HEADER: "1"}) as response:
            if response.status not in (200, 201):
                raise RuntimeError(f"{method} {path}: {response.status} {await response.text()}")

    def jobs(self, stage: str) -> list[dict[str, Any]]:
        import kmock

        jobs = kmock.resource(JOBS)
        return [obj for key, obj in self.k.objects.items() if key[0] == jobs and not obj.deleted
                and obj["metadata"]["labels"].get("scarce.dev/stage") == stage]

    def status(self) -> dict[str, Any]:
        return self.k.objects[BENCHMARKS, NS, self.name].raw.get("status") or {}

    async def finish(self, jobs: list[dict[str, Any]], fail_every: int = 0) -> None:
        """Write what the trainer would (split.json, report.json) and mark the Jobs Complete,
        or every `fail_every`-th one Failed."""
        from scarce.trainer.store import open_store

        store = open_store(f"file://{self.store}")
        for i, job in enumerate(jobs):
            ok = not fail_every or i % fail_every != fail_every - 1
            labels = job["metadata"]["labels"]
            if labels["scarce.dev/stage"] == "split":
                dataset = labels["scarce.dev/dataset"]
                store.put_json(f"results/{self.name}/{dataset}/split.json",
                               {"splitDigest": f"digest-of-{dataset}", "synthetic": {}})
            if labels["scarce.dev/stage"] == "reduce":
                store.put_json(f"reports/{self.name}/report.json",
                               {"benchmark": self.name, "datasets": []})
            status = {"conditions": [{"type": "Complete" if ok else "Failed", "status": "True",
                                      "reason": "Bench" if ok else "BackoffLimitExceeded"}],
                      "startTime": "2026-03-01T12:00:00Z", "succeeded" if ok else "failed": 1,
                      "completionTime": "2026-03-01T12:01:00Z"}
            await self.send("PATCH", f"/apis/batch/v1/namespaces/{NS}/jobs/"
                            f"{job['metadata']['name']}/status", {"status": status})


async def until(check: Callable[[], Any], what: str, deadline: float) -> Any:
    """Poll `check` until it returns something truthy; TimeoutError past `deadline`."""
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def kubeconfig(path: Path, url: str) -> None:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "kmock", "user": {"token": "bench"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock",
                                                   "namespace": NS}}]}))


def start_operator(tmp: Path, url: str, resync: float) -> subprocess.Popen[bytes]:
    kubeconfig(tmp / "kubeconfig", url)
    env = {**os.environ, "KUBECONFIG": str(tmp / "kubeconfig"), "SCARCE_METRICS_PORT": "0",
           "SCARCE_RECONCILE_INTERVAL": str(resync),
           "SCARCE_TRAINER_IMAGE": "registry.test/scarce-trainer:1"}
    log = (tmp / "operator.log").open("wb")
    return subprocess.Popen([sys.executable, __file__, "--operator-child", str(tmp / "stats.json")],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def snapshot(driver: Driver, child: subprocess.Popen[bytes], tmp: Path, t0: float,
             cpu0: dict[str, float]) -> dict[str, Any]:
    """Where the run stands: seconds since the benchmark was created, the operator's and this
    process's CPU, requests by kind, the operator's timers, RSS and the status size."""
    proc = proc_status(child.pid)
    stats = tmp / "stats.json"
    requests: dict[str, dict[str, int]] = {}
    for (who, kind), n in sorted(driver.tally().items()):
        requests.setdefault(who, {})[kind] = n - cpu0["requests"].get(f"{who} {kind}", 0)
    return {
        "seconds": time.monotonic() - t0,
        "operatorCpuSeconds": proc["cpuSeconds"] - cpu0["operator"],
        "kmockCpuSeconds": self_cpu() - cpu0["self"],
        "operatorRssMiB": proc["rssMiB"], "operatorPeakRssMiB": proc["peakRssMiB"],
        "requests": {who: {k: n for k, n in kinds.items() if n} for who, kinds in requests.items()},
        "timers": json.loads(stats.read_text()) if stats.exists() else {},
        "statusBytes": len(json.dumps(driver.status(), separators=(",", ":"))),
        "phase": driver.status().get("phase"),
    }


async def drive(driver: Driver, plan: Plan, train_jobs: int, complete: bool,
                deadline: float, mark: Callable[[str], None]) -> None:
    """Create the benchmark and take it through its stages (see the module docstring)."""
    datasets = len(plan.split)
    await until(lambda: len(driver.jobs("split")) == datasets, "the split Jobs", deadline)
    mark("splitJobs")
    await driver.finish(driver.jobs("split"))
    await until(lambda: len(driver.jobs("train")) >= train_jobs, "every train Job", deadline)
    mark("trainJobs")
    if not complete:
        return
    await driver.finish(driver.jobs("train"), fail_every=3)  # as the pure part: a third fail
    mark("trainFinishedByDriver")
    fidelity = await until(lambda: len(driver.jobs("fidelity")) == len(plan.fidelity)
                           and driver.jobs("fidelity"), "the fidelity Jobs", deadline)
    await driver.finish(fidelity)
    await driver.finish(await until(lambda: driver.jobs("reduce"), "the reducer", deadline))
    await until(lambda: driver.status().get("phase") in ("Succeeded", "Failed"),
                "the final phase", deadline)
    mark("succeeded")


async def kmock_run(units: int, shape: str, *, complete: bool, timeout: float,
                    resync: float) -> dict[str, Any]:
    """One benchmark against kmock with the operator in a child process."""
    import aiohttp
    import kmock

    name = "bench"
    spec = spec_for(units, shape)
    plan = plan_benchmark(load(name, spec))
    train_jobs = sum(1 for p in packs_of(plan, 1) if p.stage == "train")
    out: dict[str, Any] = {"shape": shape, "target": units, "units": plan.total,
                           "trainJobs": train_jobs, "milestones": {}}
    with tempfile.TemporaryDirectory(prefix="operator-scale-") as tmp_name:
        tmp = Path(tmp_name)
        spec["storage"] = {"uri": f"file://{tmp}/store", "endpoint": "minio.minio:9000",
                           "credentials": {"secretName": "store"}}
        async with kmock.KubernetesEmulator() as k, kmock.Server(k, host="127.0.0.1") as server, \
                aiohttp.ClientSession() as session:
            k.resources.load_bundled()
            k.resources[BENCHMARKS] = kmock.ResourceInfo(
                kind="ScarceBenchmark", namespaced=True, subresources={"status"},
                verbs={"list", "watch", "patch", "get", "create", "delete", "update"})
            url = str(server.url).rstrip("/")
            driver = Driver(k, session, url, name, tmp / "store")
            spawned = time.monotonic()
            child = start_operator(tmp, url, resync)
            try:
                await until(lambda: sum(1 for r in k._requests if r.action is not None
                                        and r.action.name == "WATCH") >= 2,
                            "the operator's watches", time.monotonic() + 120)
                out["operatorReadySeconds"] = time.monotonic() - spawned
                base = {"operator": proc_status(child.pid)["cpuSeconds"], "self": self_cpu(),
                        "requests": {f"{w} {k}": n for (w, k), n in driver.tally().items()}}
                out["startup"] = {"operatorRssMiB": proc_status(child.pid)["rssMiB"],
                                  "requests": dict(base["requests"])}
                t0 = time.monotonic()
                await driver.send("POST", f"/apis/scarce.dev/v1alpha1/namespaces/{NS}/"
                                  "scarcebenchmarks", body_of(name, spec))

                def mark(label: str) -> None:
                    out["milestones"][label] = snapshot(driver, child, tmp, t0, base)
                    print(f"  {label}: {out['milestones'][label]['seconds']:.1f} s", flush=True)

                try:
                    await drive(driver, plan, train_jobs, complete, t0 + timeout, mark)
                except TimeoutError as error:
                    out["timedOut"] = str(error)
                    out["jobsAtTimeout"] = {s: len(driver.jobs(s)) for s in
                                            ("split", "train", "fidelity", "reduce")}
                    mark("timeout")
                await asyncio.sleep(1.0)  # let the last reconciles land
                mark("end")
            finally:
                child.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(child.wait, 30)
                except subprocess.TimeoutExpired:
                    child.kill()
            out["operatorExitCode"] = child.returncode
            if child.returncode not in (0, -signal.SIGTERM):
                out["operatorLogTail"] = (tmp / "operator.log").read_text()[-3000:]
    return out


def body_of(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    # kmock stores bodies as sent: give it what an apiserver would have filled in.
    return {"apiVersion": "scarce.dev/v1alpha1", "kind": "ScarceBenchmark",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1,
                         "resourceVersion": "1", "creationTimestamp": "2026-03-01T12:00:00Z"},
            "spec": spec}


# --- report -----------------------------------------------------------------------------------


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y on log x: 1 is linear growth, 2 quadratic."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(pts) < 2:
        return float("nan")
    mx = statistics.fmean(p[0] for p in pts)
    my = statistics.fmean(p[1] for p in pts)
    return (sum((x - mx) * (y - my) for x, y in pts)
            / sum((x - mx) ** 2 for x, _ in pts))


def environment() -> dict[str, Any]:
    from importlib.metadata import version

    return {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "loadavg": os.getloadavg(),
            "versions": {p: version(p) for p in ("kopf", "kmock", "kubernetes", "aiohttp")}}


def print_pure(rows: list[dict[str, Any]]) -> None:
    points = ("empty", "createTrain", "full", "finished", "done")
    print(f"{'shape':9} {'units':>6} " + " ".join(f"{p + ' ms':>14}" for p in points)
          + f" {'status B':>9} {'calls':>6}")
    for r in rows:
        print(f"{r['shape']:9} {r['units']:>6} "
              + " ".join(f"{r[p]['seconds'] * 1000:>14.1f}" for p in points)
              + f" {max(r[p]['statusBytes'] for p in points):>9}"
              + f" {sum(r[p]['apiCalls'] for p in points):>6}")


def print_kmock(runs: list[dict[str, Any]]) -> None:
    for run in runs:
        print(f"\nkmock ({run['kmock']}), {run['units']} units, {run['trainJobs']} train Jobs")
        for label, m in run["milestones"].items():
            ours = m["timers"].get("reconcile", {}).get("wall", 0.0)
            print(f"  {label:22} {m['seconds']:8.1f} s  operator cpu "
                  f"{m['operatorCpuSeconds']:7.1f} s  reconcile() {ours:6.2f} s  kmock cpu "
                  f"{m['kmockCpuSeconds']:7.1f} s  rss {m['operatorRssMiB']:6.1f} MiB  "
                  f"status {m['statusBytes']} B")
            for who, kinds in m["requests"].items():
                print(f"    {who:7} " + ", ".join(f"{k} {n}" for k, n in kinds.items()))


def main() -> None:
    """Run the pure part, then the kmock part, print the tables, write JSON and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000],
                        help="target unit counts (default: 100 1000 5000)")
    parser.add_argument("--shapes", nargs="+", default=["datasets", "seeds"],
                        choices=("datasets", "seeds"), help="pure part: how N grows")
    parser.add_argument("--repeats", type=int, default=5, help="pure part: timed decisions")
    parser.add_argument("--pure-only", action="store_true", help="skip the kmock part")
    parser.add_argument("--kmock-only", action="store_true", help="skip the pure part")
    parser.add_argument("--kmock", choices=("fast", "stock"), default="fast",
                        help="fast: O(1) routing and lookup in kmock; stock: kmock as shipped")
    parser.add_argument("--pure-sizes", type=int, nargs="+",
                        help="pure part sizes (default: --sizes)")
    parser.add_argument("--kmock-sizes", type=int, nargs="+",
                        help="kmock part sizes (default: --sizes)")
    parser.add_argument("--no-complete", action="store_true",
                        help="stop once every train Job exists (do not finish the benchmark)")
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds a kmock run may take before it is reported as partial")
    parser.add_argument("--resync", type=float, default=3600,
                        help="SCARCE_RECONCILE_INTERVAL of the operator (default: no resync "
                        "during a run, so requests count what events triggered)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, help="write the growth plot (PNG) here")
    parser.add_argument("--from-json", type=Path, nargs="+",
                        help="only plot: merge these result files (no measurement)")
    parser.add_argument("--operator-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.operator_child:
        operator_child(args.operator_child)
        return
    if args.from_json:
        results = merge([json.loads(p.read_text()) for p in args.from_json])
    else:
        results = measure(args)
    print_pure(results["pure"])
    print_kmock(results["kmock"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    if args.plot:
        plot(results, args.plot)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"environment": environment(), "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "pure": [], "kmock": []}
    for shape in [] if args.kmock_only else args.shapes:
        for units in args.pure_sizes or args.sizes:
            print(f"pure: {shape} {units}", flush=True)
            results["pure"].append(pure_run(units, shape, args.repeats))
    if not args.pure_only:
        if args.kmock == "fast":
            fast_kmock()
        for units in args.kmock_sizes or args.sizes:
            print(f"kmock ({args.kmock}): {units} units", flush=True)
            run = asyncio.run(kmock_run(units, "datasets", complete=not args.no_complete,
                                        timeout=args.timeout, resync=args.resync))
            results["kmock"].append({"kmock": args.kmock, **run})
    results["environment"]["loadavgAfter"] = os.getloadavg()
    return results


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"environment": [p["environment"] for p in parts],
            "pure": [r for p in parts for r in p["pure"]],
            "kmock": [r for p in parts for r in p["kmock"]]}


def _series(ax: Any, xs: list[float], ys: list[float], label: str, **style: Any) -> None:
    if len(xs) > 1:
        label = f"{label} (slope {loglog_slope(xs, ys):.2f})"
    ax.plot(xs, ys, label=label, **{"marker": "o", **style})


def _reference(ax: Any, x0: float, y0: float, x1: float) -> None:
    ax.plot([x0, x1], [y0, y0 * x1 / x0], color="0.6", linestyle=":", label="O(N) reference")


def _requests(milestone: Mapping[str, Any], who: str, verb: str = "") -> int:
    kinds = milestone["requests"].get(who, {})
    return sum(n for kind, n in kinds.items() if kind.startswith(verb))


def plot(results: dict[str, Any], path: Path) -> None:
    """Log-log growth plot: decision time, requests, time against kmock, RSS, status size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 9.5))
    pure = [r for r in results["pure"] if r["shape"] == "datasets"]
    if not pure:
        raise SystemExit("the plot needs the pure part's results (datasets shape)")
    seeds = [r for r in results["pure"] if r["shape"] == "seeds"]
    ax = axes[0][0]
    for point in ("empty", "createTrain", "full", "finished", "done"):
        _series(ax, [r["units"] for r in pure], [r[point]["seconds"] for r in pure], point)
    if seeds:
        _series(ax, [r["units"] for r in seeds], [r["createTrain"]["seconds"] for r in seeds],
                "createTrain, seeds grow", linestyle="--", color="k")
    _reference(ax, pure[0]["units"], pure[0]["createTrain"]["seconds"], pure[-1]["units"])
    ax.set(title="pure decision (no API server), CPU time", ylabel="seconds")
    fast = [r for r in results["kmock"] if r["kmock"] == "fast" and "end" in r["milestones"]]
    stock = [r for r in results["kmock"] if r["kmock"] == "stock" and "trainJobs" in
             r["milestones"]]
    runs = fast or stock
    units = [r["units"] for r in runs]
    ax = axes[0][1]
    if runs:
        end = [r["milestones"]["end"] for r in runs]
        for who, verb, label, marker in (
                ("scarce", "", "SCARCE, all", "o"), ("scarce", "create jobs", "create jobs", "x"),
                ("scarce", "patch jobs", "patch jobs (TTL)", "+"),
                ("scarce", "patch scarcebenchmarks", "patch status", "s"),
                ("scarce", "list", "list jobs", "v"), ("kopf", "", "kopf's own", "^")):
            _series(ax, units, [max(1, _requests(m, who, verb)) for m in end], label,
                    marker=marker)
        _reference(ax, units[0], _requests(end[0], "scarce"), units[-1])
    ax.set(title="API requests by the operator, created to Succeeded", ylabel="requests")
    ax = axes[0][2]
    if runs:
        for key, label in (("seconds", "wall"), ("operatorCpuSeconds", "operator CPU"),
                           ("kmockCpuSeconds", "kmock + driver CPU")):
            _series(ax, units, [r["milestones"]["end"][key] for r in runs], label)
        _series(ax, units, [r["milestones"]["end"]["timers"]["reconcile"]["wall"]
                            for r in runs], "in reconcile()")
        _reference(ax, units[0], runs[0]["milestones"]["end"]["seconds"], units[-1])
    ax.set(title=f"against kmock ({runs[0]['kmock'] if runs else '-'}), created to Succeeded",
           ylabel="seconds")
    ax = axes[1][0]
    if runs:
        _series(ax, units, [r["milestones"]["end"]["operatorPeakRssMiB"] for r in runs],
                "operator peak RSS")
        _series(ax, units, [r["milestones"]["end"]["operatorPeakRssMiB"]
                            - r["startup"]["operatorRssMiB"] for r in runs],
                "operator peak RSS above its idle RSS")
    _series(ax, [r["units"] for r in pure],
            [max(r[p]["peakAllocBytes"] for p in ("createTrain", "full", "finished"))
             / 2**20 for r in pure], "one decision, peak allocation")
    ax.set(title="memory", ylabel="MiB")
    ax = axes[1][1]
    _series(ax, [r["units"] for r in pure],
            [max(r[p]["statusBytes"] for p in ("createTrain", "finished", "done"))
             for r in pure], "status, largest (pure)")
    if runs:
        _series(ax, units, [r["milestones"]["end"]["statusBytes"] for r in runs],
                "status at the end (kmock)")
    _reference(ax, pure[0]["units"], pure[0]["finished"]["statusBytes"], pure[-1]["units"])
    ax.set(title="status size", ylabel="bytes")
    ax = axes[1][2]
    for mode in ("stock", "fast"):
        group = [r for r in results["kmock"] if r["kmock"] == mode]
        done = [r for r in group if "trainJobs" in r["milestones"]]
        if done:
            _series(ax, [r["units"] for r in done],
                    [r["milestones"]["trainJobs"]["seconds"] for r in done], f"{mode}: wall")
            _series(ax, [r["units"] for r in done],
                    [r["milestones"]["trainJobs"]["operatorCpuSeconds"] for r in done],
                    f"{mode}: operator CPU", linestyle="--")
        for r in (r for r in group if "timeout" in r["milestones"]):
            made = r["jobsAtTimeout"]["train"]
            ax.plot([r["units"]], [r["milestones"]["timeout"]["seconds"]], marker="^",
                    linestyle="none", label=f"{mode}: stopped at {made} of {r['trainJobs']} "
                    f"train Jobs ({r['units']} units)")
    ax.set(title="created to every train Job: kmock as shipped vs fast", ylabel="seconds")
    for ax in (a for row in axes for a in row):
        ax.set(xscale="log", yscale="log", xlabel="units in the plan")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("SCARCE operator at scale (log-log; slope 1 = linear, 2 = quadratic)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
