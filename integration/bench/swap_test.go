package bench

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
)

// TestDaemonSwap keeps the same-lab baseline (UpstreamSwapExtra) from
// rotting: on one lab pair, upstream wireguard-go takes over from the
// agents and hands back, pods reach each other through each (use checks
// that), traffic flows, and the harness follows the pids and the peaks.
func TestDaemonSwap(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireTools(t, "ip", "wg", "iperf3", "ping", "nft", "iptables")
	tools := buildTools(t, t.TempDir())
	tools.LabDir = t.TempDir()
	buildLab(t, tools.LabDir)
	p := Setup(t, tools, WGMesh, SetupOptions{})
	StartServers(t, tools.Self, p)
	if err := p.Lab.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	comm := func(pid int) string {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil {
			t.Fatalf("pid %d: %v", pid, err)
		}
		return strings.TrimSpace(string(raw))
	}
	flows := func(through string) {
		smp, err := Bulk(p, 1, false, time.Second, 0)
		if err != nil || smp.Gbps <= 0 || smp.DaemonCPU <= 0 {
			t.Fatalf("bulk through %s: %+v, %v", through, smp, err)
		}
	}
	s := newDaemonSwap(t, tools, p)
	agents := [2]int{p.Nodes[0].Pid, p.Nodes[1].Pid}
	flows("the agents")

	s.use(t, Upstream, true)
	for i, n := range p.Nodes {
		if n.Pid == agents[i] || !strings.HasPrefix(comm(n.Pid), "wireguard-go") {
			t.Errorf("%s: pid %d (%s) after the switch to upstream, agent was %d", n.Name, n.Pid, comm(n.Pid), agents[i])
		}
	}
	flows("upstream")
	s.use(t, Upstream, true) // no-op: already running
	if s.Swaps != 1 {
		t.Errorf("swaps = %d after one switch and a no-op", s.Swaps)
	}

	s.use(t, WGMesh, false)
	for i, n := range p.Nodes {
		if n.Pid == agents[i] || comm(n.Pid) != "wgmesh-agent" {
			t.Errorf("%s: pid %d (%s) after the switch back, old agent %d", n.Name, n.Pid, comm(n.Pid), agents[i])
		}
	}
	flows("the restarted agents")
	if p.Lab.State().APIServer != nil {
		t.Error("the lab apiserver runs after the switch back: it must be stopped for the measurements")
	}
	if s.Peak[WGMesh] <= 0 || s.Peak[Upstream] <= 0 {
		t.Errorf("peaks not kept over lifetimes: %v", s.Peak)
	}
}
