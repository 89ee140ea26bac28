"""Dockerfile.trainer, .dockerignore and requirements/operator.txt, checked without a Docker engine.

A small parser reads the Dockerfile as BuildKit does (parser directives, comments, line
continuations, ARGs before the first FROM, exec-form JSON), so these tests prove: two stages,
`trainer` and `operator`; every base image pinned; a non-root numeric USER in each; the
entrypoints (`scarce-trainer`, `kopf run -m scarce.operator.handlers`); the trainer installs the
project without extras; the operator stage installs only requirements/operator.txt plus the
project with --no-deps, and that file's dependency closure holds no torch, torchvision or timm
while importing `scarce.operator.handlers` (and kopf's CLI) needs nothing outside it; every COPY
source exists and is in the build context after .dockerignore.

What they cannot prove: no image is built or run here (no Docker engine). Whether the pinned
base tags exist in their registries, whether pip resolves on the base images (the CUDA
PyTorch base's Python and its torch build), and whether the images start are left to
`docker build` (docs/deploy.md).
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.trainer"
OPERATOR_REQUIREMENTS = ROOT / "requirements" / "operator.txt"
TORCH = {"torch", "torchvision", "timm"}
INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
    "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}


@dataclass
class Stage:
    name: str
    image: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name}: no {keyword}"
        return found[-1]


def logical_lines(text: str) -> list[str]:
    """Instructions with continuations joined and comments dropped (parser directives too)."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return lines


def substitute(value: str, args: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        assert name in args, f"${name} has no default ARG"
        return args[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, value)


def parse(path: Path = DOCKERFILE) -> list[Stage]:
    stages: list[Stage] = []
    global_args: dict[str, str] = {}
    for line in logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        assert keyword.upper() in INSTRUCTIONS, f"unknown instruction {keyword}"
        assert keyword == keyword.upper(), f"{keyword}: instructions are upper case here"
        rest = rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            parts = rest.split()
            assert len(parts) == 3 and parts[1].upper() == "AS", f"FROM needs a stage name: {rest}"
            stages.append(Stage(name=parts[2], image=substitute(parts[0], global_args)))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest))
    return stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return {stage.name: stage for stage in parse()}


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def pip_installs(stage: Stage) -> list[list[str]]:
    """The argument lists of every `pip install` in the stage's RUN instructions."""
    found = []
    for run in stage.all("RUN"):
        for command in re.split(r"&&|;", run):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"] or words[1:4] == ["-m", "pip", "install"]:
                found.append(words[words.index("install") + 1:])
    return found


# --- structure ----------------------------------------------------------------------------------


def test_the_dockerfile_parses_into_the_two_targets(stages):
    assert list(stages) == ["trainer", "operator"]


def test_base_images_are_pinned(stages):
    for stage in stages.values():
        image = stage.image
        if "@sha256:" in image:
            assert re.search(r"@sha256:[0-9a-f]{64}$", image), image
            continue
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{stage.name}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), (
            f"{stage.name}: {image} is not pinned to a full version")


def test_trainer_base_is_the_cuda_pytorch_runtime_of_the_pinned_torch(stages):
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    image = stages["trainer"].image
    assert image.startswith(f"pytorch/pytorch:{pins['torch']}-cuda"), image
    assert image.endswith("-runtime"), image


def test_operator_base_is_a_slim_python_the_project_supports(stages):
    image = stages["operator"].image
    match = re.fullmatch(r"python:(3)\.(\d+)\.\d+-slim(-\w+)?", image)
    assert match, image
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11" and int(match.group(2)) >= 11


@pytest.mark.parametrize("target", ["trainer", "operator"])
def test_each_target_runs_as_a_non_root_numeric_user(stages, target):
    stage = stages[target]
    user = stage.last("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or int(gid) > 0), user
    # The chart's runAsNonRoot needs a numeric UID; the user also exists in /etc/passwd.
    assert any(f"--uid {uid}" in run for run in stage.all("RUN")), "no useradd of that uid"
    last_user = max(i for i, (kw, _) in enumerate(stage.instructions) if kw == "USER")
    assert all(kw != "RUN" for kw, _ in stage.instructions[last_user:]), "RUN after USER"


def test_trainer_entrypoint_is_scarce_trainer(stages):
    assert exec_form(stages["trainer"].last("ENTRYPOINT")) == ["scarce-trainer"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["scarce-trainer"] == "scarce.trainer.cli:main"


def test_operator_entrypoint_runs_the_kopf_handlers(stages):
    assert exec_form(stages["operator"].last("ENTRYPOINT")) == [
        "kopf", "run", "-m", "scarce.operator.handlers"]
    assert (ROOT / "operator" / "handlers.py").is_file()
    cmd = exec_form(stages["operator"].last("CMD"))
    assert "--standalone" in cmd and "--liveness=http://0.0.0.0:8080/healthz" in cmd


def test_image_and_chart_agree_on_user_and_ports(stages):
    values = yaml.safe_load((ROOT / "charts" / "scarce-operator" / "values.yaml").read_text())
    uid = int(stages["operator"].last("USER").split(":")[0])
    assert values["operator"]["podSecurityContext"]["runAsUser"] == uid
    exposed = {int(p) for p in stages["operator"].last("EXPOSE").split()}
    assert exposed == {values["operator"]["healthPort"], values["metrics"]["port"]}


def test_trainer_installs_the_project_without_extras(stages):
    installs = pip_installs(stages["trainer"])
    assert installs == [["-c", "constraints.txt", "."]]


def test_operator_stage_installs_only_its_requirements_and_the_project_without_deps(stages):
    stage = stages["operator"]
    assert pip_installs(stage) == [["-c", "constraints.txt", "-r", "operator.txt"],
                                   ["--no-deps", "."]]
    copies = [c.split() for c in stage.all("COPY")]
    assert ["requirements/operator.txt", "constraints.txt", "./"] in copies
    text = " ".join(args for _, args in stage.instructions).lower()
    assert not re.search(r"\b(torch|torchvision|timm)\b", text)


# --- the build context --------------------------------------------------------------------------


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        regex = fnmatch.translate(body).replace(".*", "[^/]*")
        regex = regex.replace("[^/]*[^/]*/", "(.*/)?")  # `**/` matches any depth, or none
        if any(re.match(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_every_copy_source_is_in_the_build_context(stages):
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for stage in stages.values():
        for copy in stage.all("COPY"):
            *sources, _ = copy.split()
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"COPY {source}: no such file"
                files = [path] if path.is_file() else [
                    p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
                assert files, source
                for file in files:
                    rel = file.relative_to(ROOT).as_posix()
                    assert not dockerignore_excludes(rel, patterns), f"{rel} is ignored"
    for heavy in (".git/HEAD", ".venv/bin/python", "runs/x", "data/x", "tests/test_chart.py",
                  "operator/__pycache__/spec.cpython-311.pyc"):
        assert dockerignore_excludes(heavy, patterns), f"{heavy} is in the build context"


# --- the operator image's Python dependencies ---------------------------------------------------


def requirement_names(path: Path = OPERATOR_REQUIREMENTS) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(canonicalize_name(Requirement(line).name))
    return names


def closure(names: set[str]) -> set[str]:
    """The distributions pip installs for `names` (their dependencies without extras), as
    installed in this environment."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            todo.append(canonicalize_name(requirement.name))
    return seen


def test_operator_requirements_exclude_torch():
    names = requirement_names()
    assert not names & TORCH
    installed = closure(names)
    assert not installed & TORCH, installed & TORCH
    assert not [n for n in installed if n.startswith("nvidia-")]


def test_operator_requirements_match_the_projects_ranges():
    declared = {canonicalize_name(Requirement(r).name): str(Requirement(r).specifier)
                for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
                    "dependencies"]}
    for line in OPERATOR_REQUIREMENTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            name = canonicalize_name(requirement.name)
            if name in declared:
                assert str(requirement.specifier) == declared[name], name


#: Imports in a fresh interpreter, with every module whose distribution is not in ALLOWED
#: refused (as in the operator image, where it is not installed); prints what got loaded.
IMPORT_CHECK = r"""
import importlib.machinery, importlib.metadata, json, re, sys
allowed = set(sys.argv[1].split(","))
owners = {top: {re.sub(r"[-_.]+", "-", d).lower() for d in dists}
          for top, dists in importlib.metadata.packages_distributions().items()}
refused = set()
class OnlyTheOperatorImage(importlib.machinery.PathFinder):
    # As if the distributions outside `allowed` were not installed: their modules are not found
    # (imports fail, importlib.util.find_spec probes get None).
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        top = name.split(".")[0]
        if not (top in sys.stdlib_module_names or top.startswith("_") or top == "scarce"
                or owners.get(top, set()) & allowed):
            refused.add(top)
            return None
        return super().find_spec(name, path, target)
sys.meta_path = [OnlyTheOperatorImage if f is importlib.machinery.PathFinder else f
                 for f in sys.meta_path]
import scarce.operator.handlers
import kopf.cli
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "torchvision", "timm"})
print(json.dumps({"torch": loaded, "refused": sorted(refused)}))
"""


def test_operator_handlers_import_with_only_the_operator_requirements():
    allowed = closure(requirement_names()) | {"scarce"}
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK, ",".join(sorted(allowed))],
        capture_output=True, text=True, timeout=180, cwd="/",
    )
    assert proc.returncode == 0, (
        "importing scarce.operator.handlers needs a package that requirements/operator.txt "
        f"does not bring:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["torch"] == []
    # Optional imports that were refused (caught by their importers) are fine, but never torch.
    assert not set(result["refused"]) & TORCH
