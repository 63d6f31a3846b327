//go:build tools

// Package tools pins the real control-plane binaries the lab runs: kube-apiserver
// and kubectl from k8s.io/kubernetes, and etcd from go.etcd.io/etcd/server/v3.
// build.sh builds them with `go build` from this module so their versions are
// exactly what go.mod/go.sum record.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
