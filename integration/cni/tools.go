//go:build tools

// Package cnitest holds the root tests of the wgmesh CNI plugin. They drive
// the built binary through libcni, as a container runtime does. This file
// only pins the portmap plugin, which the chaining test builds, in go.mod.
package cnitest

import (
	_ "github.com/containernetworking/plugins/plugins/meta/portmap"
)
