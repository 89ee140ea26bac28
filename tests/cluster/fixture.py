"""pytest fixtures for the real control plane (tests/cluster/controlplane.py).

Registered for the whole suite through ``pytest_plugins`` in tests/conftest.py; the control plane
starts only when a test asks for one of these fixtures, once per session:

* ``k8s_control_plane``: the running :class:`~tests.cluster.controlplane.ControlPlane` (etcd,
  kube-apiserver, kube-controller-manager and the kubelet stand-in), stopped at session end;
* ``kubeconfig``: the path of its admin kubeconfig;
* ``k8s_namespace``: a fresh namespace per test (its ``default`` ServiceAccount already there),
  deleted afterwards.

Tests that use them are marked ``cluster``. When the binaries are missing the fixture *fails*
(never skips) with a message naming ``bash tests/cluster/build.sh``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.controlplane import BinariesMissing, ControlPlane, StartError, start
from tests.cluster.kubelet import KubeRest


@pytest.fixture(scope="session")
def k8s_control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    failure = ""
    for attempt in range(2):
        try:
            plane = start(tmp_path_factory.mktemp("k8s"))
        except (BinariesMissing, StartError) as exc:
            failure = str(exc)
            # A free port taken by another process between the probe and the bind: once more.
            if attempt == 0 and "address already in use" in failure:
                continue
        else:
            failure = ""
        break
    if failure:  # fail (never skip) with the build command or the logs' tails
        pytest.fail(failure, pytrace=False)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kubeconfig(k8s_control_plane: ControlPlane) -> Path:
    return k8s_control_plane.kubeconfig


@pytest.fixture(scope="session")
def k8s_api(k8s_control_plane: ControlPlane) -> KubeRest:
    """A JSON client for the API server as the admin."""
    return KubeRest(k8s_control_plane.kubeconfig)


@pytest.fixture
def k8s_namespace(k8s_api: KubeRest) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    k8s_api.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                        "metadata": {"name": name}})
    deadline = time.monotonic() + 30
    while k8s_api.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] != 200:
        assert time.monotonic() < deadline, f"no default ServiceAccount in {name} after 30 s"
        time.sleep(0.2)
    yield name
    k8s_api.request("DELETE", f"/api/v1/namespaces/{name}")
