//go:build tools

// Package tools pins the main packages that build.sh compiles. The build tag keeps this file out
// of every real build; `go mod tidy` still sees the imports and records their dependencies.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
