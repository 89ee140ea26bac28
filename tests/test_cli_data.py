"""`scarce data import` and `scarce data inspect` from the command line, on real images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RIAWELC = REPO.parent / "shared" / "datasets" / "riawelc"
SCARCE = [sys.executable, "-m", "scarce.operator.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SCARCE, *args], capture_output=True, text=True, timeout=120)


def test_import_then_inspect_riawelc(tmp_path):
    dest = tmp_path / "store" / "datasets" / "riawelc"
    imported = run("data", "import", "riawelc", str(RIAWELC), str(dest))
    assert imported.returncode == 0, imported.stderr
    assert "Imported 52 images" in imported.stdout
    index = json.loads((dest / "index.json").read_text())
    labels = {item["class"] for item in index["images"]}
    assert len(index["images"]) == 52
    inspected = run("data", "inspect", str(dest))
    assert inspected.returncode == 0, inspected.stderr
    for label in ("porosity", "crack", "lack_of_penetration", "no_defect"):
        assert label in inspected.stdout
        assert label in labels


def test_import_refuses_a_truncated_image_and_leaves_nothing(tmp_path):
    src = tmp_path / "src"
    sample = sorted((RIAWELC / "CR").iterdir())
    for label in ("good", "pit"):
        (src / label).mkdir(parents=True)
        for i in range(3):
            (src / label / f"{i}.png").write_bytes(sample[i].read_bytes())
    (src / "pit" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    dest = tmp_path / "dest"
    proc = run("data", "import", "imagefolder", str(src), str(dest))
    assert proc.returncode == 1
    assert "pit/broken.png" in proc.stderr
    assert not dest.exists() or not any(dest.iterdir())


def test_inspect_names_a_missing_folder(tmp_path):
    proc = run("data", "inspect", str(tmp_path / "nowhere"))
    assert proc.returncode == 1
    assert "nowhere" in proc.stderr and "Traceback" not in proc.stderr
