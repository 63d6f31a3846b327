package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"k8s.io/client-go/kubernetes"

	"github.com/wgmesh/wgmesh/mesh/policy"
	policykube "github.com/wgmesh/wgmesh/mesh/policy/kube"
	policynft "github.com/wgmesh/wgmesh/mesh/policy/nft"
)

// startNetworkPolicy wires the NetworkPolicy engine (pod, namespace and
// policy informers → compiler → nftables) and runs it on wgs until ctx
// ends. With network-policy off it removes the policy tables instead, so
// that switching enforcement off really opens traffic again.
func startNetworkPolicy(ctx context.Context, cfg Config, client kubernetes.Interface, log *slog.Logger, wgs *sync.WaitGroup) error {
	dp, err := policynft.New(policynft.Config{Bridge: cfg.CNIBridge, Logger: log})
	if err != nil {
		return err
	}
	if !cfg.NetworkPolicy {
		if err := dp.Remove(); err != nil {
			return fmt.Errorf("remove network policy tables: %w", err)
		}
		log.Info("network policy enforcement is off")
		return nil
	}
	src, err := policykube.New(policykube.Config{Client: client, NodeName: cfg.NodeName, Logger: log})
	if err != nil {
		return err
	}
	ctl := policy.New(policy.Config{NodeName: cfg.NodeName, Source: src, Dataplane: dp, Logger: log})
	wgs.Go(func() {
		if err := src.Run(ctx); err != nil {
			log.Error("policy source stopped", "err", err)
		}
	})
	wgs.Go(func() {
		if err := ctl.Run(ctx); err != nil {
			log.Error("network policy controller stopped", "err", err)
		}
	})
	return nil
}

// removePolicyTables is uninstall's step for the policy tables.
func removePolicyTables(cfg Config) error {
	dp, err := policynft.New(policynft.Config{Bridge: cfg.CNIBridge})
	if err != nil {
		return err
	}
	return dp.Remove()
}
