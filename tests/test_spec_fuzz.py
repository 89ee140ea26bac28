"""Spec fuzzing: random and mutated ScarceBenchmark documents get field-path errors, never a
traceback, from the spec model, `scarce validate` and `scarce run`; `scarce run` refuses an
invalid spec before any work starts.

Documents are drawn by hypothesis: the shipped examples and a spec that sets nearly every field,
mutated 1 to 3 times (a value replaced by a random or a known-nasty one, a field deleted, an
unknown or misspelt field added, a list item duplicated), plus wholly random documents. The
profile is derandomized (the same examples on every run) and writes no example database, so CI
is stable; the example counts are sized for a 2-core CI machine.
"""

from __future__ import annotations

import copy
import re
import tempfile
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from scarce.operator.cli import app
from scarce.operator.local import RunOutcome
from scarce.operator.plan import plan_benchmark
from scarce.operator.spec import SpecError, validate_document
from scarce.trainer.store import safe_key

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))

#: A spec that sets nearly every field, so mutations reach every model.
FULL: dict[str, Any] = {
    "apiVersion": "scarce.dev/v1alpha1",
    "kind": "ScarceBenchmark",
    "metadata": {"name": "full", "namespace": "lab", "labels": {"team": "qa"}},
    "spec": {
        "storage": {
            "uri": "s3://bucket/prefix",
            "endpoint": "minio:9000",
            "secure": False,
            "credentials": {"secretName": "s3", "accessKeyKey": "a", "secretKeyKey": "s"},
        },
        "datasets": [
            {"name": "tiles", "format": "magnetic-tile", "source": "s3://bucket/tiles",
             "hardestClass": "auto", "goodClass": "Free",
             "split": {"testFraction": 0.3, "valFraction": 0.2, "splitSeed": 1},
             "options": {"root": "MT", "requireGood": True}},
            {"name": "nuts", "format": "mvtec-ad", "source": "data/nuts",
             "hardestClass": "scratch", "options": {"category": "metal_nut"}},
        ],
        "synthetic": [
            {"name": "vendor", "kind": "external", "uri": "drops/vendor", "perClass": 20,
             "seed": 3},
            {"name": "paste", "kind": "cutpaste", "perClass": 10},
        ],
        "arms": ["real", "placebo", "vendor", "paste"],
        "placeboMatches": "vendor",
        "seeds": 7,
        "fewShot": [2, 3, 5],
        "pilotSeeds": 2,
        "parallelism": 4,
        "seedsPerJob": 2,
        "minPairs": 5,
        "suspend": False,
        "queueName": "gpu-queue",
        "model": {"backbone": "resnet18", "pretrained": True, "weightsUri": "weights/r18.pt",
                  "imageSize": 64, "channels": 3},
        "schedule": {"epochs": 3, "batchSize": 16, "optimizer": "sgd", "lr": 0.01,
                     "weightDecay": 0.0, "warmupEpochs": 1, "labelSmoothing": 0.1,
                     "precision": "bf16", "channelsLast": True,
                     "augmentation": {"hflip": True, "vflip": False, "rotate90": True,
                                      "brightness": 0.2, "contrast": 0.0}},
        "leakage": {"policy": "flag", "maxHashDistance": 6},
        "verdict": {"minAbsZ": 2.0, "alpha": 0.01},
        "jobs": {"image": "registry/scarce:1", "gpu": 1, "cpu": "500m", "memory": "8Gi",
                 "nodeSelector": {"gpu": "a100"},
                 "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                 "priorityClassName": "batch", "imagePullSecrets": ["regcred"],
                 "serviceAccountName": "trainer", "backoffLimit": 1,
                 "activeDeadlineSeconds": 3600, "ttlSecondsAfterFinished": 60},
    },
}

BASES: list[dict[str, Any]] = [yaml.safe_load(p.read_text()) for p in EXAMPLES] + [FULL]
LOCATION_FIELDS = ("uri", "source", "weightsUri", "endpoint")
ROOT_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")
#: Every message starts with the path of the field it is about (or "(document)"); an unknown
#: field at the top of the document is its own path.
FIELD_PATH = re.compile(r"^(\(document\)|apiVersion|kind|metadata|spec|status)([.\[:])")
UNKNOWN_FIELD = re.compile(r"^(?P<field>.*): unknown field( \(did you mean '\w+'\?\))?$", re.S)

#: Values that have broken parsers before: paths that escape or are not paths, markup, names
#: that are almost valid, control characters, huge and non-finite numbers.
NASTY = [
    "", " ", "..", "../x", "/abs/path", "~", "~/data", "~nosuchuser/data", "s3://", "s3://ab",
    "s3://bucket/../x", "file://relative", "file:///abs", "http://host/x", "a\x00b", "a\nb",
    "bench\n", "[/x]", "[b]bold", "x" * 300, "UPPER", "-dash-", "ünïcode", "auto", "real",
    "placebo", "%2e%2e", "0", "1e400", 0, -1, 1, 2, 10**30, -(10**30), 0.5, 1.5, -0.0,
    float("nan"), float("inf"), True, False, None, [], {}, [None], {"": None},
]

scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=24)
    | st.sampled_from(NASTY)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=3),
    max_leaves=8,
)


def _slots(node: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key-or-index) pair in a document, depth first."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, child in list(items):
        out.append((node, key))
        if isinstance(child, dict | list):
            _slots(child, out)
    return out


def _containers(node: Any, out: list[Any]) -> list[Any]:
    if isinstance(node, dict | list):
        out.append(node)
        for child in node.values() if isinstance(node, dict) else node:
            _containers(child, out)
    return out


def _typo(name: str, draw: Any) -> str:
    change = draw(st.sampled_from(["drop", "case", "snake", "suffix"]))
    if change == "drop" and len(name) > 1:
        cut = draw(st.integers(0, len(name) - 1))
        return name[:cut] + name[cut + 1 :]
    if change == "case":
        return name.upper()
    if change == "snake":
        return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name) + "_"
    return name + "s"


@st.composite
def mutated_specs(draw: Any) -> Any:
    """A shipped or full spec with 1 to 3 random mutations."""
    document = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.sampled_from([1, 1, 2, 3]))):
        op = draw(st.sampled_from(["location", "location", "text", "text", "replace",
                                   "replace", "delete", "add", "rename", "dup"]))
        if op in ("add", "dup"):
            container = draw(st.sampled_from(_containers(document, [])))
            if isinstance(container, list):
                if container:
                    container.append(copy.deepcopy(draw(st.sampled_from(container))))
                continue
            name = draw(st.sampled_from([*ROOT_FIELDS, "seed", "dataset", "name", "uri"])
                        | st.text(min_size=1, max_size=10))
            container[name] = draw(values)
            continue
        slots = _slots(document, [])
        if op == "text":  # keep the shape, change a string: names, formats, classes ...
            slots = [(c, k) for c, k in slots
                     if isinstance(c[k], str) and k not in ("apiVersion", "kind")]
        elif op == "location":  # a valid spec with a strange path is planned: keep it valid
            slots = [(c, k) for c, k in slots if k in LOCATION_FIELDS]
        if not slots:
            return document
        container, key = draw(st.sampled_from(slots))
        if op in ("text", "location"):
            container[key] = draw(st.sampled_from([v for v in NASTY if isinstance(v, str)])
                                  | st.text(max_size=24))
        elif op == "replace":
            container[key] = draw(st.sampled_from(NASTY) | values)
        elif op == "delete":
            del container[key]
        elif isinstance(container, dict):  # rename: a misspelt field keeps its value
            container[_typo(str(key), draw)] = container.pop(key)
    return document


random_documents = values | st.dictionaries(
    st.sampled_from(ROOT_FIELDS) | st.text(max_size=8), values, max_size=5
)
# Mostly near-valid documents (they reach the deep validators and the planner), some chaos.
documents = mutated_specs() | mutated_specs() | mutated_specs() | random_documents

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _flat(text: str) -> str:
    """Whitespace collapsed (rich wraps long lines) and control characters dropped (rich
    strips them from what it prints)."""
    return " ".join("".join(c for c in text if c.isprintable() or c in " \t\n").split())


def _expected_messages(document: Any) -> list[str] | None:
    """The spec model's messages for a document, or None when it is valid."""
    try:
        validate_document(document)
    except SpecError as error:
        return error.messages
    return None


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """The demo example with one value replaced (regression examples)."""
    document = copy.deepcopy(BASES[0])
    node = document
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return document


# Found by this fuzzer: the first three crashed `scarce validate` and `scarce run` with a
# traceback (a NUL in a path, another user's home folder); the last passed
# validation and planned a key with a newline in it.
REGRESSIONS = [
    _with(("spec", "storage", "uri"), "a\x00b"),
    _with(("spec", "storage", "uri"), "~nosuchuser/data"),
    _with(("spec", "synthetic", 0, "uri"), "drop\x00"),
    _with(("metadata", "name"), "bench\n"),
]


def _write_spec(folder: Path, document: Any) -> Path:
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=False))
    return path


@settings(FUZZ, max_examples=500)
@example(document=REGRESSIONS[0])
@example(document=REGRESSIONS[1])
@example(document=REGRESSIONS[2])
@example(document=REGRESSIONS[3])
@given(document=documents)
def test_fuzzed_specs_get_field_path_errors_or_plan_cleanly(document: Any) -> None:
    try:
        benchmark = validate_document(copy.deepcopy(document))
    except SpecError as error:
        assert error.messages
        for message in error.messages:
            unknown = UNKNOWN_FIELD.match(message)
            assert FIELD_PATH.match(message) or (
                unknown and isinstance(document, dict)
                and unknown["field"] in {str(k) for k in document}
            ), message
        return
    # `scarce validate` and `scarce run` plan every valid spec: that must not crash either,
    # and every key the plan builds from spec values is a safe key under the benchmark's own
    # prefixes.
    with tempfile.TemporaryDirectory() as folder:
        plan = plan_benchmark(benchmark, base_dir=Path(folder))
    prefixes = (f"results/{plan.benchmark}/", f"reports/{plan.benchmark}/")
    for unit in [*plan.split, *plan.pilot, *plan.train, *plan.fidelity, plan.reduce]:
        assert safe_key(unit.result_key).startswith(prefixes), unit.result_key


@settings(FUZZ, max_examples=80)
@example(document=REGRESSIONS[0])
@example(document=REGRESSIONS[1])
@example(document=REGRESSIONS[2])
@example(document=REGRESSIONS[3])
@given(document=documents)
def test_scarce_validate_prints_field_path_errors_never_a_traceback(document: Any) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = _write_spec(Path(folder), document)
        expected = _expected_messages(yaml.safe_load(path.read_text()))
        result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"crashed with {result.exception!r}:\n{result.output}"
    )
    assert "Traceback" not in result.output
    if expected is None:
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    errors = _flat(result.stderr)
    assert errors.startswith(f"{path}: invalid spec:"), errors
    for message in expected:
        assert _flat(message) in errors


class _NoWork:
    """Stands in for the local executor: records that a run would have started."""

    started: ClassVar[list[Any]] = []

    def __init__(self, plan: Any, **_: Any) -> None:
        _NoWork.started.append(plan)

    def run(self) -> RunOutcome:
        return RunOutcome()


@settings(FUZZ, max_examples=50)
@example(document=REGRESSIONS[0])
@example(document=REGRESSIONS[1])
@example(document=REGRESSIONS[2])
@example(document=REGRESSIONS[3])
@given(document=documents)
def test_scarce_run_refuses_an_invalid_spec_before_any_work(document: Any) -> None:
    _NoWork.started.clear()
    with (
        tempfile.TemporaryDirectory() as folder,
        mock.patch("scarce.operator.local.LocalExecutor", _NoWork),
    ):
        path = _write_spec(Path(folder), document)
        expected = _expected_messages(yaml.safe_load(path.read_text()))
        result = CliRunner().invoke(app, ["run", str(path), "--workers", "1",
                                          "--log-dir", str(Path(folder) / "logs")])
        created = sorted(p.name for p in Path(folder).iterdir())
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"crashed with {result.exception!r}:\n{result.output}"
    )
    assert "Traceback" not in result.output
    if expected is None:
        assert result.exit_code == 0, result.output
        assert len(_NoWork.started) == 1
        return
    assert result.exit_code == 2, result.output
    assert _NoWork.started == [], "a run started on an invalid spec"
    assert created == ["bench.yaml"], created  # no store, no logs: nothing was done
    errors = _flat(result.stderr)
    for message in expected:
        assert _flat(message) in errors
