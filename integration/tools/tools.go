//go:build tools

// Package tools pins the real Kubernetes binaries the lab runs: the control plane
// (kube-apiserver, kubectl, etcd), the node stack (kubelet, kube-proxy,
// kube-controller-manager, kube-scheduler) and the upstream e2e suite with its
// agnhost image binary, all from k8s.io/kubernetes, etcd from
// go.etcd.io/etcd/server/v3, and the ginkgo CLI at the version Kubernetes'
// go.mod requires (it runs e2e.test's specs in parallel processes). build.sh builds them with `go build` (e2e.test with
// `go test -c`) from this module so their versions are exactly what go.mod/go.sum
// record. containerd and the reference CNI plugins live in ./runtime, a module of
// their own, so their dependency graph never moves Kubernetes' one.
package tools

import (
	_ "github.com/onsi/ginkgo/v2/ginkgo"
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/test/images/agnhost"
)
