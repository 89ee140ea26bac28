"""The layering contract of DESIGN.md §2 and STYLE.md principle 2, checked."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imported_modules(folder: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        found[str(path.relative_to(REPO))] = names
    return found


def test_the_trainer_never_imports_the_operator():
    offenders = {
        path: sorted(n for n in names if n.startswith("scarce.operator"))
        for path, names in imported_modules(REPO / "trainer").items()
    }
    assert {p: n for p, n in offenders.items() if n} == {}


def test_the_operator_side_never_loads_torch():
    code = (
        "import sys\n"
        "import scarce.operator.spec, scarce.operator.plan, scarce.operator.local\n"
        "import scarce.operator.cli\n"
        "import scarce.trainer.reduce, scarce.trainer.report_files, scarce.trainer.store\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm'))\n"
        "print(loaded)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_pure_modules_do_no_io():
    pure = ["operator/plan.py", "operator/jobs.py", "operator/status.py",
            "operator/reconcile.py", "trainer/splits.py", "trainer/stats.py",
            "trainer/config.py"]
    io_modules = {"scarce.trainer.store", "minio", "kubernetes", "kopf", "subprocess", "torch"}
    imports = imported_modules(REPO / "operator") | imported_modules(REPO / "trainer")
    for path in pure:
        assert not imports[path] & io_modules, path


def test_no_top_level_operator_module_shadows_the_standard_library():
    import operator

    assert hasattr(operator, "itemgetter") and "site-packages" not in (operator.__file__ or "")
