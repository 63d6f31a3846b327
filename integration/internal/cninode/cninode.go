// Package cninode helps the suites that drive the CNI plugin through libcni
// on a network namespace playing a node: the exec that starts the plugin
// inside that namespace, and a reader of the plugin's address store.
package cninode

import (
	"context"
	"errors"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/wgmesh/wgmesh/cni"
	"github.com/wgmesh/wgmesh/ipam"
)

// Exec runs CNI plugins inside the node namespace. libcni forks the plugin
// from the calling thread, and ns.Do runs the call on a thread locked into
// the node namespace, so the plugin process starts (and stays) there, as it
// would on a real node; the harness itself never leaves its namespace.
type Exec struct {
	invoke.DefaultExec
	node ns.NetNS
}

// NewExec returns an Exec for node whose plugins write their stderr to
// the harness's.
func NewExec(node ns.NetNS) *Exec {
	return &Exec{DefaultExec: invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}}, node: node}
}

// ExecPlugin runs the plugin inside the node namespace.
func (e *Exec) ExecPlugin(ctx context.Context, path string, stdin []byte, env []string) ([]byte, error) {
	var out []byte
	err := e.node.Do(func(ns.NetNS) error {
		var err error
		out, err = e.DefaultExec.ExecPlugin(ctx, path, stdin, env)
		return err
	})
	return out, err
}

// Allocations reads the plugin's address store in dataDir (the conflist's
// dataDir), under its lock; none if the plugin never stored an address.
func Allocations(dataDir string) ([]ipam.Allocation, error) {
	dir := filepath.Join(dataDir, cni.NetworkName)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	s, err := ipam.OpenDisk(dir)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	if err := s.Lock(); err != nil {
		return nil, err
	}
	defer s.Unlock()
	return s.List()
}
