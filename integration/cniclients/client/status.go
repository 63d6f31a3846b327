//go:build !libcni_v1_1

package main

import (
	"context"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

// STATUS and GC arrived in libcni 1.2; a libcni 1.1 build leaves this file
// out (-tags libcni_v1_1), as it would not compile there.
func init() {
	verbs["status"] = func(ctx context.Context, c *client, _ []string, _ *Report) error {
		return c.cni.GetStatusNetworkList(ctx, c.list)
	}
	verbs["gc"] = func(ctx context.Context, c *client, _ []string, _ *Report) error {
		args := &libcni.GCArgs{ValidAttachments: []types.GCAttachment{}}
		for _, a := range strings.Split(c.valid, ",") {
			if a == "" {
				continue
			}
			id, ifname, ok := strings.Cut(a, "/")
			if !ok {
				return usageError("-valid takes id/ifname,... not " + a)
			}
			args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: id, IfName: ifname})
		}
		return c.cni.GCNetworkList(ctx, c.list, args)
	}
}
