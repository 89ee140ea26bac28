"""`scarce validate SPEC`: exit 0 and a summary for a good spec, exit 2 and field-path messages
on stderr for a bad one, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from scarce.operator.cli import app

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.yaml"


def flat(text: str) -> str:
    """Whitespace collapsed: rich wraps long lines at the console width."""
    return " ".join(text.split())


def spec_document(**spec: Any) -> dict[str, Any]:
    body = {
        "storage": {"uri": "store"},
        "datasets": [
            {"name": "first", "format": "imagefolder", "source": "data/first",
             "hardestClass": "pit"},
            {"name": "second", "format": "imagefolder", "source": "data/second",
             "hardestClass": "pit"},
        ],
        "seeds": 7,
        **spec,
    }
    return {
        "apiVersion": "scarce.dev/v1alpha1",
        "kind": "ScarceBenchmark",
        "metadata": {"name": "bench"},
        "spec": body,
    }


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    # Relative file names keep the messages short enough for rich not to fold them.
    monkeypatch.chdir(tmp_path)
    return tmp_path


def validate(path: str | Path):
    result = CliRunner().invoke(app, ["validate", str(path)])
    # typer.Exit surfaces as SystemExit; anything else is a crash with a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"crashed with {result.exception!r}"
    )
    assert "Traceback" not in result.output
    return result


def test_demo_is_valid_and_counts_its_units():
    result = validate(DEMO)
    assert result.exit_code == 0, result.output
    # 1 split + 3 arms x 3 seeds + 1 fidelity + 1 reduce
    assert flat(result.stdout).endswith(
        "valid ScarceBenchmark 'demo': 1 dataset(s), arms real, placebo, vendor, 3 seeds, "
        "12 units"
    ), result.stdout
    # 3 seeds is allowed but below the report's 7
    assert flat(result.stderr) == (
        "warning: spec.seeds: 3 seeds is below the report's minimum of 7; "
        "paired comparisons will be weak"
    )


def test_invalid_spec_exits_2_with_the_field_path(in_tmp):
    doc = spec_document()
    doc["spec"]["datasets"][1]["split"] = {"testFraction": 1.5}
    (in_tmp / "bench.yaml").write_text(yaml.safe_dump(doc))
    result = validate("bench.yaml")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "bench.yaml: invalid spec:",
        "  spec.datasets[1].split.testFraction: must be in (0, 1), got 1.5",
    ]


def test_every_error_is_printed(in_tmp):
    doc = spec_document(seeds=1, seed=7)
    (in_tmp / "bench.yaml").write_text(yaml.safe_dump(doc))
    result = validate("bench.yaml")
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert "  spec.seeds: must be at least 2, got 1" in lines
    assert "  spec.seed: unknown field (did you mean 'seeds'?)" in lines


def test_missing_file_is_named_without_a_traceback(in_tmp):
    result = validate("absent.yaml")
    assert result.exit_code != 0
    assert result.stderr.splitlines() == [
        "absent.yaml: invalid spec:",
        "  cannot read the file: No such file or directory",
    ]


def test_yaml_syntax_error_names_the_line(in_tmp):
    (in_tmp / "bench.yaml").write_text("apiVersion: scarce.dev/v1alpha1\nkind: [oops\n")
    result = validate("bench.yaml")
    assert result.exit_code == 2
    assert flat(result.stderr).startswith(
        "bench.yaml: invalid spec: line 3, column 1: not valid YAML"
    )


def test_binary_file_is_a_clear_error(in_tmp):
    # Today load_spec lets UnicodeDecodeError escape: `scarce validate photo.jpg` prints a
    # traceback and exits 1.
    (in_tmp / "photo.yaml").write_bytes(b"\xff\xd8\xff\xe0 JFIF")
    result = validate("photo.yaml")
    assert result.exit_code == 2
    assert flat(result.stderr).startswith("photo.yaml: ")


def test_values_are_printed_literally(in_tmp):
    # Messages quote the user's values, which may hold brackets: they must not be read as
    # rich markup. Today cli.py wraps the message in "[red]...[/red]" markup, so "[/x]" raises
    # rich.errors.MarkupError (traceback, exit 1) and "[b]" would vanish from the output.
    doc = spec_document()
    doc["metadata"]["name"] = "[/x]"
    doc["spec"]["datasets"][0]["format"] = "[b]folder"
    (in_tmp / "bench.yaml").write_text(yaml.safe_dump(doc))
    result = validate("bench.yaml")
    assert result.exit_code == 2
    text = flat(result.stderr)
    assert "got '[/x]'" in text
    assert "got '[b]folder'" in text
