// Command wgmesh-cni is the wgmesh CNI plugin, installed as <cni-bin-dir>/wgmesh.
// The runtime drives it through CNI_* environment variables and the network
// config on stdin (CNI spec 1.1: ADD, DEL, CHECK, STATUS, GC, VERSION), so
// there are no flags: this file only wires skel to package cni.
package main

import (
	"log/slog"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/wgmesh/wgmesh/cni"
)

func main() {
	// The runtime passes a plugin's stderr into its logs; keep it to problems
	// unless WGMESH_CNI_DEBUG asks for more.
	level := slog.LevelWarn
	if os.Getenv("WGMESH_CNI_DEBUG") != "" {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	p := cni.New(cni.Config{Network: &cni.Netlink{Logger: logger}, Logger: logger})
	skel.PluginMainFuncs(p.Funcs(), version.All, "wgmesh CNI plugin (pods on a bridge, traffic between nodes over WireGuard)")
}
