#!/usr/bin/env python3
"""Regenerate the kubectl output shown in docs/kubernetes.md from a real control plane.

    .venv/bin/python scripts/capture-kubectl-docs.py            # from the repository root

It starts the control plane of tests/cluster/ (build it once with ``bash tests/cluster/build.sh``)
and a moto S3 server, puts the demo data into the store with ``scarce data import``, installs the
chart with ``helm install``, applies the small benchmark that tests/test_cluster_userpath.py runs,
and writes what ``kubectl get sb`` (while it trains and once it finished), ``kubectl describe sb``
and ``kubectl explain scarcebenchmark.spec`` print into docs/kubernetes.md, between the
``<!-- BEGIN kubectl-... -->`` and ``<!-- END kubectl-... -->`` markers. Nothing in those blocks
is typed by hand. Everything it starts is stopped at the end; it takes about two minutes on two
cores. ``--dry-run`` prints the blocks instead of writing them.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.cluster: the control plane and the user's tools

from tests.cluster.controlplane import ControlPlane, start  # noqa: E402
from tests.cluster.userpath import (  # noqa: E402
    Ports,
    StoreAccess,
    apply,
    benchmark_manifest,
    create_namespace,
    install_chart,
    upload_demo_data,
)
from tests.s3server import running_s3_server  # noqa: E402

DOCS = REPO / "docs" / "kubernetes.md"
NAMESPACE = "ml-bench"
NAME = "demo"


def block(commands: list[tuple[str, str]]) -> str:
    """A fenced block of ``$ command`` lines, each followed by its output (trailing blanks cut,
    so an editor that strips them changes nothing)."""
    lines = ["```"]
    for command, output in commands:
        lines.append(f"$ {command}")
        lines += [line.rstrip() for line in output.rstrip("\n").splitlines()]
    lines.append("```")
    return "\n".join(lines) + "\n"


def replace_block(text: str, name: str, body: str) -> str:
    """Put BODY between the BEGIN and END markers of NAME (which must exist once)."""
    pattern = re.compile(rf"(<!-- BEGIN {name} [^\n]*-->\n).*?(<!-- END {name} -->)", re.S)
    if len(pattern.findall(text)) != 1:
        raise SystemExit(f"{DOCS}: expected one '<!-- BEGIN {name} ... -->' ... "
                         f"'<!-- END {name} -->' pair")
    return pattern.sub(lambda m: m[1] + body + m[2], text)


def capture(plane: ControlPlane, workdir: Path) -> dict[str, str]:
    """Run the small benchmark and capture the three outputs."""
    with running_s3_server() as s3:
        store = StoreAccess(s3.endpoint, s3.access_key, s3.secret_key)
        s3.make_bucket("scarce-data")
        s3.make_bucket("scarce")
        for namespace in ("scarce-system", NAMESPACE):
            create_namespace(plane, namespace, store)
        data = upload_demo_data(store, "scarce-data", workdir)
        install_chart(plane, benchmark_namespaces=[NAMESPACE], store=store, ports=Ports.free())
        manifest = benchmark_manifest(NAME, NAMESPACE, store=store, store_uri="s3://scarce",
                                      data=data)
        apply(plane, manifest)
        get = f"kubectl -n {NAMESPACE} get sb"
        training = ""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            out = plane.kubectl("-n", NAMESPACE, "get", "sb").stdout
            if " Training " in out and not training:
                training = out
            if " Succeeded " in out or " Failed " in out:
                break
            time.sleep(1)
        else:
            raise SystemExit(f"the benchmark did not finish:\n{out}")
        plane.kubectl("-n", NAMESPACE, "wait", "--for=condition=Complete", f"sb/{NAME}",
                      "--timeout=60s")
        done = plane.kubectl("-n", NAMESPACE, "get", "sb").stdout
        describe = plane.kubectl("-n", NAMESPACE, "describe", "sb", NAME).stdout
        explain = plane.kubectl("explain", "scarcebenchmark.spec").stdout
    return {
        "kubectl-get-sb": block([(f"{get}          # while it trains", training),
                                 (f"{get}          # once it finished", done)]),
        "kubectl-describe-sb": block([(f"kubectl -n {NAMESPACE} describe sb {NAME}", describe)]),
        "kubectl-explain": block([("kubectl explain scarcebenchmark.spec", explain)]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print, do not write the docs")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="scarce-kubectl-docs-"))
    started = time.monotonic()
    plane = start(workdir / "k8s")
    try:
        blocks = capture(plane, workdir)
    finally:
        plane.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.dry_run:
        for name, body in blocks.items():
            print(f"--- {name}\n{body}")
    else:
        text = DOCS.read_text()
        for name, body in blocks.items():
            text = replace_block(text, name, body)
        DOCS.write_text(text)
        print(f"wrote {len(blocks)} blocks into {DOCS.relative_to(REPO)} "
              f"in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
