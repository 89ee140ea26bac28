"""The ScarceBenchmark spec model (scarce.operator.spec): what it accepts, and the exact text of
what it rejects (STYLE.md principle 6: ``path: problem, got value``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scarce.operator.spec import (
    SpecError,
    load_spec,
    spec_warnings,
    validate_document,
)
from scarce.trainer.config import DATASET_FORMATS, SYNTHETIC_KINDS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

NAME_RULE = (
    "must be 1-40 lowercase letters, digits or '-', starting and ending with a letter or digit"
)


def minimal_document(
    *, datasets: tuple[str, ...] = ("surfaces",), synthetic: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A fresh, valid ScarceBenchmark document with only the required fields (plus the
    datasets and synthetic sources named)."""
    spec: dict[str, Any] = {
        "storage": {"uri": "store"},
        "datasets": [
            {"name": name, "format": "imagefolder", "source": f"data/{name}", "hardestClass": "pit"}
            for name in datasets
        ],
        "seeds": 7,
    }
    if synthetic:
        spec["synthetic"] = [
            {"name": name, "kind": "external", "uri": f"drops/{name}", "perClass": 10}
            for name in synthetic
        ]
    return {
        "apiVersion": "scarce.dev/v1alpha1",
        "kind": "ScarceBenchmark",
        "metadata": {"name": "bench"},
        "spec": spec,
    }


def error_messages(document: Any) -> list[str]:
    """The messages of the SpecError the document must raise."""
    with pytest.raises(SpecError) as caught:
        validate_document(document)
    return caught.value.messages


def only_error(document: Any) -> str:
    """The single message of the SpecError the document must raise."""
    messages = error_messages(document)
    assert len(messages) == 1, messages
    return messages[0]


# --- what is valid --------------------------------------------------------------------------


def test_minimal_document_is_valid_and_gets_defaults():
    benchmark = validate_document(minimal_document())
    assert benchmark.name == "bench"
    spec = benchmark.spec
    assert spec.seeds == 7
    assert [d.name for d in spec.datasets] == ["surfaces"]
    assert spec.datasets[0].split.test_fraction == 0.3
    assert spec.synthetic == []
    assert spec.few_shot == []
    assert spec.model.backbone == "resnet18"
    assert spec.schedule.epochs == 30
    assert spec_warnings(benchmark) == []


def test_demo_example_validates():
    benchmark = load_spec(EXAMPLES / "demo.yaml")
    assert benchmark.name == "demo"
    assert [d.name for d in benchmark.spec.datasets] == ["surfaces"]
    assert benchmark.spec.resolved_arms == ["real", "placebo", "vendor"]
    assert benchmark.spec.model.channels == 1


def test_metadata_passes_kubernetes_fields_through():
    document = minimal_document()
    document["metadata"].update(namespace="lab", labels={"team": "qa"}, uid="1234")
    document["status"] = {"phase": "Running"}
    benchmark = validate_document(document)
    assert benchmark.metadata.namespace == "lab"
    assert benchmark.status == {"phase": "Running"}


def test_dataset_formats_match_the_format_registry():
    # The spec validates `format:` without importing image code; the registry is the truth.
    from scarce.trainer.datasets import list_formats

    assert sorted(DATASET_FORMATS) == list_formats()


@pytest.mark.parametrize("dataset_format", DATASET_FORMATS)
def test_every_registered_format_is_accepted(dataset_format):
    document = minimal_document()
    document["spec"]["datasets"][0]["format"] = dataset_format
    assert validate_document(document).spec.datasets[0].format == dataset_format


# --- field errors name the path and the value -------------------------------------------------


def test_test_fraction_out_of_range_names_the_second_dataset():
    # The issue's own example.
    document = minimal_document(datasets=("first", "second"))
    document["spec"]["datasets"][1]["split"] = {"testFraction": 1.5}
    assert only_error(document) == "spec.datasets[1].split.testFraction: must be in (0, 1), got 1.5"


@pytest.mark.parametrize(
    ("where", "typo", "message"),
    [
        (("spec",), "seed", "spec.seed: unknown field (did you mean 'seeds'?)"),
        (
            ("spec", "model"),
            "imagesize",
            "spec.model.imagesize: unknown field (did you mean 'imageSize'?)",
        ),
        (
            ("spec", "datasets", 0),
            "hardestclass",
            "spec.datasets[0].hardestclass: unknown field (did you mean 'hardestClass'?)",
        ),
        (
            ("spec", "datasets", 0, "split"),
            "testfraction",
            "spec.datasets[0].split.testfraction: unknown field (did you mean 'testFraction'?)",
        ),
        (("spec",), "colour", "spec.colour: unknown field"),
    ],
)
def test_unknown_field_is_an_error_with_a_suggestion(where, typo, message):
    document = minimal_document()
    node: Any = document
    for part in where:
        node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    node[typo] = 7
    assert only_error(document) == message


def test_one_seed_is_too_few():
    document = minimal_document()
    document["spec"]["seeds"] = 1
    assert only_error(document) == "spec.seeds: must be at least 2, got 1"


def test_seeds_must_be_an_integer():
    document = minimal_document()
    document["spec"]["seeds"] = "many"
    assert only_error(document) == "spec.seeds: must be an integer, got 'many'"


def test_five_seeds_are_valid_but_warned_about():
    document = minimal_document()
    document["spec"]["seeds"] = 5
    benchmark = validate_document(document)
    assert spec_warnings(benchmark) == [
        "spec.seeds: 5 seeds is below the report's minimum of 7; paired comparisons will be weak"
    ]


def test_missing_seeds():
    document = minimal_document()
    del document["spec"]["seeds"]
    assert only_error(document) == "spec.seeds: required field is missing"


def test_wrong_api_version():
    document = minimal_document()
    document["apiVersion"] = "scarce.dev/v1"
    assert only_error(document) == (
        "apiVersion: must be one of 'scarce.dev/v1alpha1', got 'scarce.dev/v1'"
    )


def test_wrong_kind():
    document = minimal_document()
    document["kind"] = "Benchmark"
    assert only_error(document) == "kind: must be one of 'ScarceBenchmark', got 'Benchmark'"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (
            "gs://bucket/prefix",
            "spec.storage.uri: must be file:///absolute/path, s3://bucket/prefix or a path, "
            "got 'gs://bucket/prefix'",
        ),
        (
            "file://relative/folder",
            "spec.storage.uri: must be file:///absolute/path, s3://bucket/prefix or a path, "
            "got 'file://relative/folder'",
        ),
        (
            "s3://ab/prefix",
            "spec.storage.uri: s3 bucket name must have at least 3 characters, "
            "got 's3://ab/prefix'",
        ),
    ],
)
def test_bad_storage_uri(uri, message):
    document = minimal_document()
    document["spec"]["storage"]["uri"] = uri
    assert only_error(document) == message


@pytest.mark.parametrize("uri", ["s3://abc/prefix", "file:///srv/store", "runs/store", "/abs"])
def test_good_storage_uri(uri):
    document = minimal_document()
    document["spec"]["storage"]["uri"] = uri
    assert validate_document(document).spec.storage.uri == uri


@pytest.mark.parametrize(
    ("field", "uri"),
    [(("datasets", "source"), "gs://bucket/data"), (("synthetic", "uri"), "gs://bucket/drop")],
)
def test_unsupported_scheme_in_data_uris_is_rejected(field, uri):
    # Only storage.uri checks its scheme today: a dataset source or a vendor drop on gs:// is
    # accepted and later planned as the local path file:///<spec dir>/gs:/bucket/... .
    document = minimal_document(synthetic=("vendor",))
    section, key = field
    document["spec"][section][0][key] = uri
    message = only_error(document)
    assert message.startswith(f"spec.{section}[0].{key}: "), message
    assert message.endswith(f"got {uri!r}"), message


# --- arms and synthetic sources ---------------------------------------------------------------


def test_unknown_arm_lists_the_allowed_ones():
    document = minimal_document(synthetic=("vendor",))
    document["spec"]["arms"] = ["real", "vendr"]
    assert only_error(document) == (
        "spec.arms: unknown arm 'vendr'; an arm is real, placebo or a synthetic source name "
        "(real, placebo, vendor)"
    )


def test_duplicate_arm():
    document = minimal_document(synthetic=("vendor",))
    document["spec"]["arms"] = ["real", "vendor", "real"]
    assert only_error(document) == "spec.arms: arms must be unique, 'real' appears twice"


def test_real_arm_is_required():
    document = minimal_document(synthetic=("vendor",))
    document["spec"]["arms"] = ["vendor", "placebo"]
    assert only_error(document) == (
        "spec.arms: the real arm is required (it is every comparison's baseline), "
        "got ['vendor', 'placebo']"
    )


def test_placebo_arm_needs_a_synthetic_source():
    document = minimal_document()
    document["spec"]["arms"] = ["real", "placebo"]
    assert only_error(document) == (
        "spec.arms: the placebo arm needs at least one synthetic source to match"
    )


@pytest.mark.parametrize("reserved", ["real", "placebo"])
def test_synthetic_source_cannot_take_a_reserved_arm_name(reserved):
    document = minimal_document(synthetic=("vendor",))
    document["spec"]["synthetic"][0]["name"] = reserved
    assert only_error(document) == (
        f"spec.synthetic[0].name: {reserved!r} is reserved for the {reserved} arm; "
        "choose another name"
    )


def test_duplicate_synthetic_source_names():
    document = minimal_document(synthetic=("vendor", "vendor"))
    assert only_error(document) == (
        "spec.synthetic: synthetic source names must be unique, 'vendor' appears twice"
    )


def test_external_source_needs_uri():
    document = minimal_document(synthetic=("vendor",))
    del document["spec"]["synthetic"][0]["uri"]
    assert only_error(document) == (
        "spec.synthetic[0]: a source of kind external needs uri (the vendor's drop)"
    )


def test_unknown_synthetic_kind():
    document = minimal_document(synthetic=("vendor",))
    document["spec"]["synthetic"][0]["kind"] = "diffusion"
    kinds = ", ".join(repr(k) for k in SYNTHETIC_KINDS)
    assert "'external'" in kinds
    assert only_error(document) == (
        f"spec.synthetic[0].kind: must be one of {kinds}, got 'diffusion'"
    )


def test_placebo_matches_must_name_a_source():
    document = minimal_document(synthetic=("vendor",))
    document["spec"]["placeboMatches"] = "nobody"
    assert only_error(document) == (
        "spec.placeboMatches: must name a synthetic source (vendor), got 'nobody'"
    )


def test_a_bad_synthetic_source_does_not_cause_misleading_arm_errors():
    # A typo inside synthetic[0] is reported where it is (the unknown key and the now missing
    # perClass), never as "unknown arm 'vendor'" or "(none declared)" errors that blame the
    # arms and placeboMatches fields, which are correct.
    document = minimal_document(synthetic=("vendor",))
    document["spec"]["synthetic"][0]["perclass"] = document["spec"]["synthetic"][0].pop("perClass")
    document["spec"]["arms"] = ["real", "placebo", "vendor"]
    document["spec"]["placeboMatches"] = "vendor"
    assert sorted(error_messages(document)) == [
        "spec.synthetic[0].perClass: required field is missing",
        "spec.synthetic[0].perclass: unknown field (did you mean 'perClass'?)",
    ]


# --- datasets, model, few-shot ----------------------------------------------------------------


def test_duplicate_dataset_names():
    document = minimal_document(datasets=("tiles", "tiles"))
    assert only_error(document) == (
        "spec.datasets: dataset names must be unique, 'tiles' appears twice"
    )


def test_no_datasets():
    document = minimal_document()
    document["spec"]["datasets"] = []
    assert only_error(document) == "spec.datasets: must have at least 1 item(s), got []"


def test_dataset_name_must_be_a_label():
    document = minimal_document()
    document["spec"]["datasets"][0]["name"] = "Magnetic_Tile"
    message = only_error(document)
    assert message.startswith("spec.datasets[0].name: "), message
    assert NAME_RULE in message
    assert message.endswith("got 'Magnetic_Tile'"), message


def test_unknown_format_lists_the_supported_ones():
    from scarce.trainer.datasets import list_formats

    document = minimal_document()
    document["spec"]["datasets"][0]["format"] = "mvtec"
    supported = ", ".join(repr(name) for name in list_formats())
    assert only_error(document) == (
        f"spec.datasets[0].format: must be one of {supported}, got 'mvtec'"
    )
    assert "'imagefolder'" in supported and "'magnetic-tile'" in supported


def test_hardest_class_auto_needs_a_validation_split():
    document = minimal_document()
    document["spec"]["datasets"][0]["hardestClass"] = "auto"
    assert only_error(document) == (
        "spec.datasets[0]: hardestClass: auto needs split.valFraction > 0 "
        "(the pilot never looks at the test split)"
    )
    document["spec"]["datasets"][0]["split"] = {"valFraction": 0.2}
    assert validate_document(document).spec.datasets[0].split.val_fraction == 0.2


def test_fractions_must_leave_training_data():
    document = minimal_document()
    document["spec"]["datasets"][0]["split"] = {"testFraction": 0.5, "valFraction": 0.45}
    assert only_error(document) == (
        "spec.datasets[0].split: testFraction + valFraction must leave at least 10% of each "
        "class for training, got 0.95"
    )


def test_pretrained_needs_weights_uri():
    document = minimal_document()
    document["spec"]["model"] = {"pretrained": True}
    assert only_error(document) == (
        "spec.model: pretrained: true needs weightsUri (weights are never downloaded at run time)"
    )
    document["spec"]["model"]["weightsUri"] = "weights/resnet18.pt"
    assert validate_document(document).spec.model.pretrained is True


def test_channels_must_be_one_or_three():
    document = minimal_document()
    document["spec"]["model"] = {"channels": 2}
    assert only_error(document) == "spec.model.channels: must be one of 1 or 3, got 2"


def test_few_shot_k_must_be_positive():
    document = minimal_document()
    document["spec"]["fewShot"] = [3, 0]
    assert only_error(document) == "spec.fewShot: every k must be at least 1, got 0"


def test_few_shot_k_must_be_unique():
    document = minimal_document()
    document["spec"]["fewShot"] = [3, 2, 3]
    assert only_error(document) == "spec.fewShot: fewShot values must be unique, 3 appears twice"


def test_few_shot_is_sorted():
    document = minimal_document()
    document["spec"]["fewShot"] = [5, 2, 3]
    assert validate_document(document).spec.few_shot == [2, 3, 5]


# --- metadata and the document as a whole -----------------------------------------------------


def test_metadata_name_must_be_lowercase():
    document = minimal_document()
    document["metadata"]["name"] = "Demo"
    message = only_error(document)
    assert message.startswith("metadata.name: "), message
    assert NAME_RULE in message
    assert message.endswith("got 'Demo'"), message
    # The path is said once; today it reads "metadata.name: metadata.name must be ...".
    assert message.count("metadata.name") == 1, message


def test_every_error_is_reported_at_once():
    document = minimal_document()
    document["kind"] = "Benchmark"
    document["spec"]["seeds"] = 1
    document["spec"]["seed"] = 7
    document["spec"]["model"] = {"channels": 2}
    assert sorted(error_messages(document)) == sorted(
        [
            "kind: must be one of 'ScarceBenchmark', got 'Benchmark'",
            "spec.seeds: must be at least 2, got 1",
            "spec.seed: unknown field (did you mean 'seeds'?)",
            "spec.model.channels: must be one of 1 or 3, got 2",
        ]
    )


@pytest.mark.parametrize(
    ("document", "shown"), [([1, 2], "[1, 2]"), ("text", "'text'"), (None, "None")]
)
def test_document_must_be_a_mapping(document, shown):
    assert error_messages(document) == [f"(document): must be a mapping, got {shown}"]


def test_spec_must_be_a_mapping():
    document = minimal_document()
    document["spec"] = ["datasets"]
    assert only_error(document) == "spec: must be a mapping, got ['datasets']"


def test_spec_error_text_lists_every_message_under_the_source():
    error = SpecError(["spec.seeds: must be at least 2, got 1", "kind: x"], "bench.yaml")
    assert str(error) == (
        "bench.yaml: invalid spec:\n  spec.seeds: must be at least 2, got 1\n  kind: x"
    )


# --- files ------------------------------------------------------------------------------------


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text("apiVersion: scarce.dev/v1alpha1\nkind: ScarceBenchmark\nmetadata: [a: b\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.source == str(path)
    assert str(caught.value).startswith(f"{path}: invalid spec:")
    [message] = caught.value.messages
    assert message.startswith("line 4, column 1: not valid YAML ("), message


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.source == str(path)
    assert caught.value.messages == ["cannot read the file: No such file or directory"]


def test_empty_file_is_not_a_mapping(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.messages == ["(document): must be a mapping, got None"]


def test_file_that_is_not_utf8_is_a_spec_error(tmp_path):
    # Today path.read_text() raises UnicodeDecodeError (not an OSError), which escapes
    # load_spec and ends `scarce validate` with a traceback.
    path = tmp_path / "image.yaml"
    path.write_bytes(b"\xff\xd8\xff\xe0 not a spec")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.source == str(path)


# --- derived values ---------------------------------------------------------------------------


def test_resolved_arms_default_without_synthetic_is_real_only():
    assert validate_document(minimal_document()).spec.resolved_arms == ["real"]


def test_resolved_arms_default_is_real_placebo_then_sources():
    spec = validate_document(minimal_document(synthetic=("vendor", "cutpaste"))).spec
    assert spec.resolved_arms == ["real", "placebo", "vendor", "cutpaste"]


@pytest.mark.parametrize(
    ("arms", "resolved"),
    [
        (["cutpaste", "real"], ["real", "cutpaste"]),
        (["vendor", "placebo", "real"], ["real", "vendor", "placebo"]),
        (["real", "cutpaste", "vendor"], ["real", "cutpaste", "vendor"]),
    ],
)
def test_resolved_arms_keeps_explicit_order_with_real_first(arms, resolved):
    document = minimal_document(synthetic=("vendor", "cutpaste"))
    document["spec"]["arms"] = arms
    assert validate_document(document).spec.resolved_arms == resolved


def test_placebo_source_defaults_to_the_first_source():
    spec = validate_document(minimal_document(synthetic=("vendor", "cutpaste"))).spec
    assert spec.placebo_source == "vendor"


def test_placebo_source_follows_placebo_matches():
    document = minimal_document(synthetic=("vendor", "cutpaste"))
    document["spec"]["placeboMatches"] = "cutpaste"
    assert validate_document(document).spec.placebo_source == "cutpaste"


def test_placebo_source_is_none_without_synthetic():
    assert validate_document(minimal_document()).spec.placebo_source is None
