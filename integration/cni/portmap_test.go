package cnitest

import (
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
)

// TestPortmapChained chains the standard portmap plugin after ours, as the
// agent's conflist does with PortMap set: portmap must accept our result as
// its prevResult, and the hostPort must reach the pod.
func TestPortmapChained(t *testing.T) {
	netnsTools(t)
	n := newNode(t, "10.244.104.0/24", true)
	if len(n.list.Plugins) != 2 || n.list.Plugins[1].Network.Type != "portmap" {
		t.Fatalf("conflist plugins: %+v", n.list.Plugins)
	}
	p := n.newPod("web")
	rt := n.rt(p)
	rt.CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}}}
	res, err := n.cni.AddNetworkList(ctx(t), n.list, rt)
	if err != nil {
		t.Fatalf("ADD through wgmesh+portmap: %v", err)
	}
	if !strings.Contains(fmt.Sprint(res), "10.244.104.2") {
		t.Errorf("chain result lost our address: %v", res)
	}

	// A server in the pod on :80; the socket belongs to the namespace it
	// was created in, so only its creation needs the pod's namespace.
	podNS, err := ns.GetNS(p.path())
	if err != nil {
		t.Fatal(err)
	}
	defer podNS.Close()
	var ln net.Listener
	if err := podNS.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp4", ":80")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "hello from the pod\n")
			c.Close()
		}
	}()

	// From the node, the hostPort on the node's own address reaches the pod.
	var got string
	err = n.handle.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp4", "10.244.104.1:8080", 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		got = string(b)
		return err
	})
	if err != nil || got != "hello from the pod\n" {
		t.Errorf("hostPort 8080 from the node: %q, %v", got, err)
	}

	if err := n.cni.CheckNetworkList(ctx(t), n.list, rt); err != nil {
		t.Errorf("CHECK through the chain: %v", err)
	}
	if err := n.cni.DelNetworkList(ctx(t), n.list, rt); err != nil {
		t.Fatalf("DEL through the chain: %v", err)
	}
	if recs := n.records(); len(recs) != 0 {
		t.Errorf("records after DEL: %v", recs)
	}
}

// netnsTools are what portmap needs in the node namespace.
func netnsTools(t *testing.T) {
	t.Helper()
	requireSetup(t)
	netnstest.RequireTools(t, "iptables")
}
