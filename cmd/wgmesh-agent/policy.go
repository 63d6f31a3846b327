package main

import (
	policynft "github.com/wgmesh/wgmesh/mesh/policy/nft"
)

// removePolicyTables is uninstall's step for the NetworkPolicy tables.
func removePolicyTables(cfg Config) error {
	dp, err := policynft.New(policynft.Config{Bridge: cfg.CNIBridge})
	if err != nil {
		return err
	}
	return dp.Remove()
}
