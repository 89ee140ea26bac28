"""kmock set up as the operator's cluster: shared by the kmock and reliability tests.

kmock must be told about the ScarceBenchmark resource (a CRD object is not enough) and about
the built-in ones, and the kubernetes client reads $KUBECONFIG once, at import
(../shared/test-infra-notes.md, kmock notes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kmock as kmock_lib
import kubernetes
import pytest
import yaml

BENCHMARKS = "scarce.dev/v1alpha1/scarcebenchmarks"


def serve_benchmarks(
    kmock: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, namespace: str
) -> Path:
    """Register the resources in kmock and point $KUBECONFIG (and the client's default) at it."""
    kmock.resources.load_bundled()
    kmock.resources[BENCHMARKS] = kmock_lib.ResourceInfo(
        kind="ScarceBenchmark", namespaced=True, subresources={"status"},
        verbs={"list", "watch", "patch", "get", "create", "delete", "update"})
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
        "users": [{"name": "kmock", "user": {"token": "test"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock",
                                                   "namespace": namespace}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION",
                        str(kubeconfig))
    return kubeconfig
