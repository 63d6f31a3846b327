//go:build tools

// Package runtime pins the lab's container runtime and reference CNI plugins:
// containerd 2.x with its runc shim and ctr (github.com/containerd/containerd/v2)
// and the loopback and portmap plugins (github.com/containernetworking/plugins).
// It is a module of its own beside ../go.mod so containerd's dependency graph and
// Kubernetes' one never move each other. ../build.sh builds from it.
package runtime

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
	_ "github.com/containernetworking/plugins/plugins/meta/portmap"
)
