package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wgmesh/wgmesh/mesh/kube"
	"github.com/wgmesh/wgmesh/mesh/show"
)

const peerConfigHelp = `peer-config prints the wg-quick configuration of an external peer (a Peer object,
wgmesh.io/v1alpha1): its addresses (the Peer's /32 and /128 allowed IPs), and one
[Peer] per node of the mesh at the node's public endpoint, allowed IPs = that
node's pod CIDRs. The Service range goes to one node, the gateway (--gateway,
default the oldest node), whose kube-proxy sends it on; pick the Peer's addresses
outside the cluster's pod CIDRs so that kube-proxy masquerades that traffic and
the replies come back through the gateway. The Service range is --service-cidr,
else the cluster's ServiceCIDR objects. Fill in the private key.`

func newPeerConfigCommand(stdout, stderr io.Writer) *cobra.Command {
	var serviceCIDRs []string
	var gateway string
	cmd := &cobra.Command{
		Use:   "peer-config NAME",
		Short: "the wg-quick config of an external peer (a Peer object)",
		Long:  peerConfigHelp,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			kubeconfig := ""
			if f := cmd.Flag(keyKubeconfig); f != nil {
				kubeconfig = f.Value.String()
			}
			in, err := peerConfigInput(ctx, kubeconfig, args[0], serviceCIDRs, stderr)
			if err != nil {
				return err
			}
			in.Gateway = gateway
			return show.PeerConfig(stdout, in)
		},
	}
	cmd.Flags().StringSliceVar(&serviceCIDRs, "service-cidr", nil, "Service range(s) routed through the gateway (default: the cluster's ServiceCIDR objects)")
	cmd.Flags().StringVar(&gateway, "gateway", "", "node that carries the Service range (default: the oldest node in the mesh)")
	return cmd
}

// peerConfigInput reads the Nodes, the Peers and the Service ranges.
func peerConfigInput(ctx context.Context, kubeconfig, name string, serviceCIDRs []string, stderr io.Writer) (show.PeerConfigInput, error) {
	var in show.PeerConfigInput
	for _, s := range serviceCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Masked() != p {
			return in, fmt.Errorf("--service-cidr %q: want a network prefix such as 10.96.0.0/16", s)
		}
		in.ServiceCIDRs = append(in.ServiceCIDRs, p)
	}
	c, err := apiClient(kubeconfig)
	if err != nil {
		return in, err
	}
	dyn, err := kube.NewDynamicClient(kube.ClientConfig{Kubeconfig: kubeconfig, DefaultRules: true, UserAgent: userAgent})
	if err != nil {
		return in, err
	}
	peers, err := dyn.Resource(kube.PeerGVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		return in, fmt.Errorf("list peers: %w", err)
	}
	found := false
	for i := range peers.Items {
		p := kube.RawExternalPeer(&peers.Items[i])
		in.Peers = append(in.Peers, p)
		if p.Name == name {
			in.Peer, found = p, true
		}
	}
	if !found {
		return in, fmt.Errorf("peer %q: no such Peer", name)
	}
	nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return in, fmt.Errorf("list nodes: %w", err)
	}
	for i := range nodes.Items {
		in.Nodes = append(in.Nodes, kube.RawNode(&nodes.Items[i]))
	}
	if len(serviceCIDRs) == 0 {
		list, err := c.NetworkingV1().ServiceCIDRs().List(ctx, metav1.ListOptions{})
		if err != nil {
			fmt.Fprintf(stderr, "wgmeshctl: no Service range in the config (pass --service-cidr): list ServiceCIDRs: %v\n", err)
		} else {
			for _, sc := range list.Items {
				for _, s := range sc.Spec.CIDRs {
					if p, err := netip.ParsePrefix(s); err == nil {
						in.ServiceCIDRs = append(in.ServiceCIDRs, p.Masked())
					}
				}
			}
		}
	}
	return in, nil
}
