#!/usr/bin/env bash
# Builds the real control plane for the cluster tests from Go modules, once:
#   kube-apiserver, kube-controller-manager, kubectl (k8s.io/kubernetes, version from go.mod)
#   etcd (go.etcd.io/etcd/server/v3, version from go.mod)
# into ~/.cache/scarce/k8s-<version>-<first 12 hex of sha256(go.sum)>/ (or $SCARCE_K8S_CACHE/...),
# outside the repository; nothing is rebuilt when all four binaries are already there.
#
#   bash tests/cluster/build.sh              build if missing, print the folder and the time taken
#   bash tests/cluster/build.sh --print-dir  only print the folder (builds nothing)
#
# A cold build takes about 10 minutes on 2 cores (see docs/development.md, "Real control
# plane"); the Go module and build caches (~/go/pkg/mod, ~/.cache/go-build) make a rebuild quick.
set -euo pipefail

# All in a function, so bash has read the whole file before it runs any of it.
main() {
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    cd "$here"

    k8s_version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' go.mod)
    etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" && $2 ~ /^v/ {print $2; exit}' go.mod)
    sum_hash=$(sha256sum go.sum | cut -c1-12)
    out="${SCARCE_K8S_CACHE:-$HOME/.cache/scarce}/k8s-${k8s_version}-${sum_hash}"

    if [[ "${1:-}" == "--print-dir" ]]; then
        echo "$out"
        return 0
    fi

    binaries=(etcd kube-apiserver kube-controller-manager kubectl)
    missing=0
    for b in "${binaries[@]}"; do
        [[ -x "$out/$b" ]] || missing=1
    done
    if [[ $missing == 0 ]]; then
        echo "build.sh: binaries present in $out (nothing to build, 0s)"
        return 0
    fi

    started=$(date +%s)
    if ! command -v go >/dev/null; then
        echo "build.sh: needs Go (1.25 or newer) and the Go module proxy" >&2
        exit 1
    fi
    export GOTOOLCHAIN=local        # build with this machine's Go; never fetch another toolchain
    export CGO_ENABLED=0            # upstream ships these binaries static
    export GOFLAGS="-mod=readonly -buildvcs=false"

    minor=${k8s_version#v1.}
    minor=${minor%%.*}
    # The -X keys of upstream's hack/lib/version.sh, so /version and `--version` tell the release
    # (module zips carry no git metadata, so the default would be v0.0.0-master).
    ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        ldflags+=" -X $pkg.gitTreeState=clean"
    done

    echo "build.sh: building Kubernetes $k8s_version and etcd $etcd_version with $(go version)"
    echo "build.sh: into $out"
    mkdir -p "$(dirname "$out")"
    tmp=$(mktemp -d "$out.tmp.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    # One `go build` for all four: the shared packages compile once. The etcd main package's import
    # path ends in /v3, so Go names its binary "server".
    go build -trimpath -tags=notest,grpcnotrace -ldflags="$ldflags" -o "$tmp/" \
        k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kubectl \
        go.etcd.io/etcd/server/v3
    mv "$tmp/server" "$tmp/etcd"
    "$tmp/kube-apiserver" --version
    "$tmp/etcd" --version
    "$tmp/kubectl" version --client
    rm -rf "$out"
    mv "$tmp" "$out"
    trap - EXIT
    echo "build.sh: built into $out in $(( $(date +%s) - started ))s"
}

main "$@"
