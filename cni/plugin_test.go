package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/google/go-cmp/cmp"

	"github.com/wgmesh/wgmesh/ipam"
	"github.com/wgmesh/wgmesh/mesh/nodenet"
)

type harness struct {
	t       *testing.T
	net     *fakeNet
	dataDir string
	out     *bytes.Buffer
	p       *Plugin
	// agentDown stops add from playing the agent (see add).
	agentDown bool
}

// newHarness starts with the agent's bridge in place for the default
// config's podCIDR, as on a node where the agent runs.
func newHarness(t *testing.T, netns ...string) *harness {
	h := &harness{t: t, net: newFakeNet(netns...), dataDir: t.TempDir(), out: &bytes.Buffer{}}
	h.p = New(Config{Network: h.net, Stdout: h.out})
	h.net.agentBridge(DefaultBridge, netip.MustParsePrefix("10.244.1.1/24"))
	return h
}

// agentCaughtUp plays the agent's data plane for a config: the bridge
// carries the gateway of each of its podCIDRs, as the agent's pass after a
// podCIDR change leaves it.
func (h *harness) agentCaughtUp(conf []byte) {
	var c struct {
		Bridge   string
		PodCIDRs []string
	}
	if json.Unmarshal(conf, &c) != nil {
		return // a broken config: ADD fails before it looks at the bridge
	}
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	for _, s := range c.PodCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			continue
		}
		if gw, err := nodenet.Gateway(p); err == nil {
			h.net.agentBridge(c.Bridge, gw)
		}
	}
}

// conf returns a plugin config with our dataDir; extra keys override.
func (h *harness) conf(extra map[string]any) []byte {
	m := map[string]any{"cniVersion": "1.1.0", "name": "wgmesh", "type": "wgmesh", "bridge": "wgmesh-br0",
		"mtu": 1420, "podCIDRs": []string{"10.244.1.0/24"}, "dataDir": h.dataDir}
	for k, v := range extra {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		h.t.Fatal(err)
	}
	return b
}

func args(cid, netns string, conf []byte) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: cid, Netns: netns, IfName: "eth0", StdinData: conf}
}

// add runs ADD after the agent has caught up with conf, unless agentDown.
func (h *harness) add(cid, netns string, conf []byte) (*current.Result, error) {
	if !h.agentDown {
		h.agentCaughtUp(conf)
	}
	h.out.Reset()
	if err := h.p.Add(args(cid, netns, conf)); err != nil {
		if h.out.Len() != 0 {
			h.t.Errorf("failed ADD printed %q", h.out)
		}
		return nil, err
	}
	var v struct {
		CNIVersion string `json:"cniVersion"`
	}
	json.Unmarshal(h.out.Bytes(), &v)
	r, err := version.NewResult(v.CNIVersion, h.out.Bytes())
	if err != nil {
		h.t.Fatalf("ADD printed unparsable result %q: %v", h.out, err)
	}
	cur, err := current.NewResultFromResult(r)
	if err != nil {
		h.t.Fatal(err)
	}
	return cur, nil
}

func (h *harness) records() []ipam.Allocation {
	h.t.Helper()
	s, err := ipam.OpenDisk(filepath.Join(h.dataDir, "wgmesh"))
	if err != nil {
		h.t.Fatal(err)
	}
	defer s.Close()
	s.Lock()
	defer s.Unlock()
	list, err := s.List()
	if err != nil {
		h.t.Fatal(err)
	}
	return list
}

func code(t *testing.T, err error) uint {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("%v (%T) is not a CNI error", err, err)
	}
	return e.Code
}

func TestAddResult(t *testing.T) {
	h := newHarness(t, "/run/netns/p1")
	r, err := h.add("c1", "/run/netns/p1", h.conf(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"cniVersion": "1.1.0",
		"interfaces": []any{
			map[string]any{"name": "wgmesh-br0", "mac": "02:00:00:00:00:01"},
			map[string]any{"name": HostVethName("c1", "eth0"), "mac": "02:00:00:00:00:02"},
			map[string]any{"name": "eth0", "mac": "02:00:00:00:00:03", "mtu": float64(1420), "sandbox": "/run/netns/p1"},
		},
		"ips":    []any{map[string]any{"interface": float64(2), "address": "10.244.1.2/24", "gateway": "10.244.1.1"}},
		"routes": []any{map[string]any{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}},
	}
	var got map[string]any
	if err := json.Unmarshal(h.out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("result JSON (-want +got):\n%s", diff)
	}
	if r.IPs[0].Address.String() != "10.244.1.2/24" {
		t.Errorf("typed result %v", r.IPs[0])
	}
	pod := h.net.pods[HostVethName("c1", "eth0")]
	wantSpec := PodSpec{NetNS: "/run/netns/p1", IfName: "eth0", HostVeth: HostVethName("c1", "eth0"), Bridge: "wgmesh-br0", MTU: 1420,
		Addrs: []netip.Prefix{netip.MustParsePrefix("10.244.1.2/24")}, Gateways: []netip.Addr{netip.MustParseAddr("10.244.1.1")}}
	if diff := cmp.Diff(wantSpec, pod, netipOpts); diff != "" {
		t.Errorf("pod spec (-want +got):\n%s", diff)
	}
}

func TestAddDualStackAndOldVersion(t *testing.T) {
	h := newHarness(t, "/run/netns/p1")
	_, err := h.add("c1", "/run/netns/p1", h.conf(map[string]any{"cniVersion": "0.4.0", "podCIDRs": []string{"10.244.1.0/24", "fd00:10:244:1::/64"}}))
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		CNIVersion string `json:"cniVersion"`
		IPs        []struct {
			Version, Address, Gateway string
			Interface                 int
		} `json:"ips"`
		Routes []types.Route `json:"routes"`
	}
	if err := json.Unmarshal(h.out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got.CNIVersion != "0.4.0" || len(got.IPs) != 2 || got.IPs[1].Address != "fd00:10:244:1::2/64" || got.IPs[1].Gateway != "fd00:10:244:1::1" || got.IPs[1].Interface != 2 {
		t.Errorf("result %s", h.out)
	}
	if len(got.Routes) != 2 || got.Routes[1].Dst.String() != "::/0" {
		t.Errorf("routes %v", got.Routes)
	}
}

// TestAddAnswersInRequestedVersion: the result is in the cniVersion of the
// request, whichever the runtime picked from the conflist (a libcni 1.1.x
// client rejects a 1.1.0 result to a 1.0.0 request).
func TestAddAnswersInRequestedVersion(t *testing.T) {
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			h := newHarness(t, "/run/netns/p1")
			r, err := h.add("c1", "/run/netns/p1", h.conf(map[string]any{"cniVersion": v}))
			if err != nil {
				t.Fatal(err)
			}
			var got struct {
				CNIVersion string `json:"cniVersion"`
			}
			if err := json.Unmarshal(h.out.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			if got.CNIVersion != v {
				t.Errorf("result cniVersion %q, want %q: %s", got.CNIVersion, v, h.out)
			}
			if len(r.IPs) != 1 || r.IPs[0].Address.String() != "10.244.1.2/24" {
				t.Errorf("result IPs %v", r.IPs)
			}
		})
	}
}

func TestAddFailures(t *testing.T) {
	tests := []struct {
		name     string
		setup    func(h *harness)
		conf     map[string]any
		netns    string
		code     uint
		msg      string
		attached bool // AttachPod was reached
	}{
		{name: "bad JSON", conf: map[string]any{"mtu": "x"}, code: 7, msg: `field "mtu" must be a number`},
		{name: "no podCIDRs", conf: map[string]any{"podCIDRs": nil}, code: 7, msg: "podCIDRs is empty"},
		{name: "netns gone", netns: "/run/netns/gone", code: 3, msg: "network namespace /run/netns/gone does not exist"},
		{name: "own netns", setup: func(h *harness) { h.net.ownNS = "/run/netns/p1" }, code: 4, msg: "is the plugin's own network namespace"},
		{name: "no guard", setup: func(h *harness) { h.net.noGuard = true }, code: types.ErrTryAgainLater,
			msg: "wgmesh agent has not installed its fail-closed guard (nftables table inet wgmesh-guard) on this node yet; retry when the agent is running"},
		{name: "guard unknown", setup: func(h *harness) { h.net.fail["GuardReady"] = errors.New("nf_tables: protocol not supported") }, code: types.ErrTryAgainLater,
			msg: "cannot tell whether the wgmesh agent's fail-closed guard (nftables table inet wgmesh-guard) is installed; retry when the agent is running: nf_tables: protocol not supported"},
		{name: "no bridge", setup: func(h *harness) { h.agentDown, h.net.bridge = true, nil }, code: types.ErrTryAgainLater,
			msg: "wgmesh agent has not set up bridge wgmesh-br0 for this node's pods yet; retry when the agent is running; wgmesh-br0 does not exist: bridge is not ready"},
		{name: "bridge down", setup: func(h *harness) { h.agentDown, h.net.bridge.up = true, false }, code: types.ErrTryAgainLater,
			msg: "wgmesh agent has not set up bridge wgmesh-br0 for this node's pods yet; retry when the agent is running; wgmesh-br0 is down"},
		{name: "bridge lacks gateway", setup: func(h *harness) { h.agentDown = true }, conf: map[string]any{"podCIDRs": []string{"10.244.2.0/24"}}, code: types.ErrTryAgainLater,
			msg: "wgmesh agent has not set up bridge wgmesh-br0 for this node's pods yet; retry when the agent is running; wgmesh-br0 lacks gateway address 10.244.2.1/24"},
		{name: "bridge unknown", setup: func(h *harness) { h.net.fail["BridgeReady"] = errors.New("netlink: EPERM") }, code: types.ErrInternal, msg: "inspect bridge wgmesh-br0: netlink: EPERM"},
		{name: "attach fails", setup: func(h *harness) { h.net.fail["AttachPod"] = errors.New("no veth module") }, code: types.ErrInternal, msg: "attach pod: no veth module", attached: true},
		{name: "interface exists", setup: func(h *harness) { h.net.ifExist[[2]string{"/run/netns/p1", "eth0"}] = true }, code: 4, msg: "interface eth0 already exists in network namespace /run/netns/p1", attached: true},
		{name: "range exhausted", conf: map[string]any{"podCIDRs": []string{"10.244.1.4/30"}}, setup: func(h *harness) {
			h.net.netns["/run/netns/other"] = true
			if _, err := h.add("other", "/run/netns/other", h.conf(map[string]any{"podCIDRs": []string{"10.244.1.4/30"}})); err != nil {
				h.t.Fatal(err)
			}
		}, code: 11, msg: "no free address in 10.244.1.4/30"},
		{name: "store unusable", setup: func(h *harness) {
			if err := os.WriteFile(filepath.Join(h.dataDir, "wgmesh"), nil, 0o644); err != nil { // a file where the directory goes
				h.t.Fatal(err)
			}
		}, code: 5, msg: "open address store"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, "/run/netns/p1")
			if tt.setup != nil {
				tt.setup(h)
			}
			h.net.calls = nil
			before := len(h.net.pods)
			netns := tt.netns
			if netns == "" {
				netns = "/run/netns/p1"
			}
			_, err := h.add("c1", netns, h.conf(tt.conf))
			if err == nil {
				t.Fatal("ADD succeeded")
			}
			if c := code(t, err); c != tt.code || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("got code %d %q, want %d containing %q", c, err, tt.code, tt.msg)
			}
			if got := h.net.pods; len(got) != before {
				t.Errorf("pods left: %v", got)
			}
			if tt.name != "store unusable" {
				for _, r := range h.records() {
					if r.Owner.ContainerID == "c1" {
						t.Errorf("failed ADD left %v reserved", r)
					}
				}
			}
			attached := slices.Contains(h.net.calls, "AttachPod")
			if attached != tt.attached {
				t.Errorf("AttachPod called = %v, want %v (calls %v)", attached, tt.attached, h.net.calls)
			}
			// Without the guard or the agent's bridge nothing may be
			// reserved: the runtime retries, and a pod would have no way
			// out (or one in plaintext).
			if strings.Contains(tt.name, "guard") || strings.Contains(tt.name, "bridge") {
				if got := h.records(); len(got) != 0 {
					t.Errorf("addresses reserved: %v", got)
				}
			}
		})
	}
}

// Once the agent has installed its guard, a retried ADD succeeds; DEL, CHECK
// and GC never look at the guard (a pod must always be deletable, e.g.
// after a reboot before the agent is back).
func TestGuardGatesOnlyAdd(t *testing.T) {
	h := newHarness(t, "/run/netns/p1")
	h.net.noGuard = true
	if _, err := h.add("c1", "/run/netns/p1", h.conf(nil)); code(t, err) != types.ErrTryAgainLater {
		t.Fatalf("ADD without guard: %v", err)
	}
	h.net.noGuard = false
	if _, err := h.add("c1", "/run/netns/p1", h.conf(nil)); err != nil {
		t.Fatalf("ADD once the guard is there: %v", err)
	}
	result := bytes.Clone(h.out.Bytes())

	h.net.noGuard = true
	h.net.calls = nil
	if err := h.p.Check(args("c1", "/run/netns/p1", h.withPrev(result, nil))); err != nil {
		t.Errorf("CHECK without guard: %v", err)
	}
	if err := h.p.GC(&skel.CmdArgs{StdinData: h.conf(map[string]any{"cni.dev/valid-attachments": []any{map[string]any{"containerID": "c1", "ifname": "eth0"}}})}); err != nil {
		t.Errorf("GC without guard: %v", err)
	}
	if err := h.p.Del(args("c1", "/run/netns/p1", h.conf(nil))); err != nil {
		t.Errorf("DEL without guard: %v", err)
	}
	if got := h.records(); len(got) != 0 {
		t.Errorf("records after DEL without guard: %v", got)
	}
	for _, c := range h.net.calls {
		if c == "GuardReady" {
			t.Errorf("CHECK/GC/DEL consulted the guard (calls %v)", h.net.calls)
			break
		}
	}
}

// A runtime that repeats ADD for a running pod gets an error, and the
// running pod keeps its address.
func TestRepeatedAddKeepsRunningPodsAddress(t *testing.T) {
	h := newHarness(t, "/run/netns/p1")
	if _, err := h.add("c1", "/run/netns/p1", h.conf(nil)); err != nil {
		t.Fatal(err)
	}
	_, err := h.add("c1", "/run/netns/p1", h.conf(nil))
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second ADD: %v", err)
	}
	if got := h.records(); len(got) != 1 || got[0].Owner.ContainerID != "c1" {
		t.Errorf("records %v", got)
	}
}

// An ADD that died after reserving (crash) is retried: same address.
func TestAddAfterCrashReusesAddress(t *testing.T) {
	h := newHarness(t, "/run/netns/p1")
	h.net.fail["AttachPod"] = errors.New("killed") // rollback releases: simulate the crash by reserving directly
	s, _ := ipam.OpenDisk(filepath.Join(h.dataDir, "wgmesh"))
	m, _ := ipam.New(ipam.Config{Prefixes: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, Store: s})
	if _, err := m.Allocate(ipam.Owner{ContainerID: "other", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	crashed, _ := m.Allocate(ipam.Owner{ContainerID: "c1", IfName: "eth0"})
	s.Close()
	delete(h.net.fail, "AttachPod")
	r, err := h.add("c1", "/run/netns/p1", h.conf(nil))
	if err != nil {
		t.Fatal(err)
	}
	if got := r.IPs[0].Address.IP.String(); got != crashed[0].Addr.String() {
		t.Errorf("retried ADD got %s, the crashed one held %s", got, crashed[0].Addr)
	}
	// And a failing retry does not free the earlier reservation.
	h.net.fail["AttachPod"] = errors.New("again")
	h.net.pods = map[string]PodSpec{}
	h.net.podIfs = map[[2]string]bool{}
	if _, err := h.add("c1", "/run/netns/p1", h.conf(nil)); err == nil {
		t.Fatal("ADD succeeded")
	}
	if len(h.records()) != 2 {
		t.Errorf("records %v", h.records())
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("stdout closed") }

func TestAddRollsBackWhenResultCannotBeWritten(t *testing.T) {
	h := newHarness(t, "/run/netns/p1")
	h.p = New(Config{Network: h.net, Stdout: failWriter{}})
	err := h.p.Add(args("c1", "/run/netns/p1", h.conf(nil)))
	if c := code(t, err); c != types.ErrIOFailure {
		t.Errorf("code %d: %v", c, err)
	}
	if len(h.net.pods) != 0 || len(h.records()) != 0 {
		t.Errorf("left pods %v records %v", h.net.pods, h.records())
	}
}

func TestDel(t *testing.T) {
	h := newHarness(t, "/run/netns/p1", "/run/netns/p2")
	for _, c := range []string{"c1", "c2"} {
		if _, err := h.add(c, "/run/netns/"+strings.Replace(c, "c", "p", 1), h.conf(nil)); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.p.Del(args("c1", "/run/netns/p1", h.conf(nil))); err != nil {
		t.Fatal(err)
	}
	if got := h.records(); len(got) != 1 || got[0].Owner.ContainerID != "c2" {
		t.Errorf("records after DEL %v", got)
	}
	if _, ok := h.net.pods[HostVethName("c1", "eth0")]; ok {
		t.Error("veth left")
	}
	// Idempotent, unknown container, no netns, gone netns, broken podCIDRs: all success.
	for name, a := range map[string]*skel.CmdArgs{
		"again":          args("c1", "/run/netns/p1", h.conf(nil)),
		"unknown":        args("nope", "/run/netns/p1", h.conf(nil)),
		"no netns":       args("c1", "", h.conf(nil)),
		"gone netns":     args("c1", "/run/netns/gone", h.conf(nil)),
		"broken podCIDR": args("c1", "/run/netns/p1", h.conf(map[string]any{"podCIDRs": []string{"junk"}})),
	} {
		if err := h.p.Del(a); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Broken podCIDRs still release.
	delete(h.net.netns, "/run/netns/p2")
	if err := h.p.Del(args("c2", "/run/netns/p2", h.conf(map[string]any{"podCIDRs": nil, "mtu": -5}))); err != nil {
		t.Fatal(err)
	}
	if got := h.records(); len(got) != 0 {
		t.Errorf("records %v", got)
	}
	if err := h.p.Del(args("c1", "/run/netns/p1", []byte("{"))); code(t, err) != 6 {
		t.Errorf("undecodable DEL: %v", err)
	}
}

func TestDelKeepsAddressWhenInterfaceRemains(t *testing.T) {
	h := newHarness(t, "/run/netns/p1")
	if _, err := h.add("c1", "/run/netns/p1", h.conf(nil)); err != nil {
		t.Fatal(err)
	}
	h.net.fail["DetachPod"] = errors.New("device busy")
	if err := h.p.Del(args("c1", "/run/netns/p1", h.conf(nil))); err == nil {
		t.Fatal("DEL succeeded")
	}
	if len(h.records()) != 1 {
		t.Error("address freed while the pod may still use it")
	}
}

// withPrev returns the config with prevResult set to the given result JSON.
func (h *harness) withPrev(result []byte, extra map[string]any) []byte {
	var prev map[string]any
	if err := json.Unmarshal(result, &prev); err != nil {
		h.t.Fatal(err)
	}
	if extra == nil {
		extra = map[string]any{}
	}
	extra["prevResult"] = prev
	return h.conf(extra)
}

func TestCheck(t *testing.T) {
	h := newHarness(t, "/run/netns/p1")
	if _, err := h.add("c1", "/run/netns/p1", h.conf(nil)); err != nil {
		t.Fatal(err)
	}
	result := bytes.Clone(h.out.Bytes())
	if err := h.p.Check(args("c1", "/run/netns/p1", h.withPrev(result, nil))); err != nil {
		t.Fatalf("CHECK after ADD: %v", err)
	}

	if err := h.p.Check(args("c1", "/run/netns/p1", h.conf(nil))); code(t, err) != 7 || !strings.Contains(err.Error(), "needs prevResult") {
		t.Errorf("no prevResult: %v", err)
	}
	if err := h.p.Check(args("c1", "/run/netns/p1", h.withPrev(result, map[string]any{"mtu": 1300}))); err == nil || !strings.Contains(err.Error(), "MTU 1420, want 1300") {
		t.Errorf("MTU changed: %v", err)
	}
	other := bytes.Replace(result, []byte("10.244.1.2/24"), []byte("10.244.1.9/24"), 1)
	if err := h.p.Check(args("c1", "/run/netns/p1", h.withPrev(other, nil))); err == nil || !strings.Contains(err.Error(), "10.244.1.9 of c1/eth0 is not reserved") {
		t.Errorf("wrong address: %v", err)
	}
	if err := h.p.Check(args("c1", "/run/netns/p9", h.withPrev(result, nil))); code(t, err) != 3 {
		t.Errorf("gone netns: %v", err)
	}

	// An extra reservation the interface does not carry (crashed ADD).
	s, _ := ipam.OpenDisk(filepath.Join(h.dataDir, "wgmesh"))
	s.Lock()
	if err := s.Reserve(ipam.Owner{ContainerID: "c1", IfName: "eth0"}, []netip.Addr{netip.MustParseAddr("10.244.1.77")}); err != nil {
		t.Fatal(err)
	}
	s.Unlock()
	s.Close()
	if err := h.p.Check(args("c1", "/run/netns/p1", h.withPrev(result, nil))); err == nil || !strings.Contains(err.Error(), "holds address 10.244.1.77") {
		t.Errorf("orphan reservation: %v", err)
	}
	if _, err := ipam.Release(mustOpen(t, h), ipam.Owner{ContainerID: "c1", IfName: "eth0"}, netip.MustParseAddr("10.244.1.77")); err != nil {
		t.Fatal(err)
	}

	// Lost reservation.
	if _, err := ipam.Release(mustOpen(t, h), ipam.Owner{ContainerID: "c1", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if err := h.p.Check(args("c1", "/run/netns/p1", h.withPrev(result, nil))); err == nil || !strings.Contains(err.Error(), "reservation lost") {
		t.Errorf("lost reservation: %v", err)
	}
}

func mustOpen(t *testing.T, h *harness) ipam.Store {
	s, err := ipam.OpenDisk(filepath.Join(h.dataDir, "wgmesh"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestStatus(t *testing.T) {
	h := newHarness(t, "/run/netns/p1")
	h.net.bridge = nil // the agent has not run yet
	statusCode := func(conf []byte) uint {
		t.Helper()
		err := h.p.Status(&skel.CmdArgs{StdinData: conf})
		if err == nil {
			return 0
		}
		t.Logf("STATUS: %v", err)
		return code(t, err)
	}
	if c := statusCode(h.conf(map[string]any{"podCIDRs": nil})); c != 50 {
		t.Errorf("no podCIDRs: %d", c)
	}
	if c := statusCode(h.conf(nil)); c != 50 {
		t.Errorf("no bridge: %d", c)
	}
	if c := statusCode(h.conf(map[string]any{"mtu": "x"})); c != 7 {
		t.Errorf("broken config: %d", c)
	}
	h.net.agentBridge("wgmesh-br0", netip.MustParsePrefix("10.244.1.1/24"))
	if c := statusCode(h.conf(nil)); c != 0 {
		t.Errorf("ready: %d", c)
	}
	// The bridge alone is not enough: after a reboot it may be the
	// plugin's own, with no guard behind it.
	h.net.noGuard = true
	if err := h.p.Status(&skel.CmdArgs{StdinData: h.conf(nil)}); code(t, err) != 50 || !strings.Contains(err.Error(), "fail-closed guard (nftables table inet wgmesh-guard)") {
		t.Errorf("no guard: %v", err)
	}
	h.net.noGuard = false
	h.net.fail["GuardReady"] = errors.New("netlink: permission denied")
	if err := h.p.Status(&skel.CmdArgs{StdinData: h.conf(nil)}); code(t, err) != 50 || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("guard unknown: %v", err)
	}
	delete(h.net.fail, "GuardReady")
	// Bridge present but without this podCIDR's gateway (podCIDR changed).
	if c := statusCode(h.conf(map[string]any{"podCIDRs": []string{"10.244.2.0/24"}})); c != 50 {
		t.Errorf("missing gateway: %d", c)
	}
	// Full range.
	small := h.conf(map[string]any{"podCIDRs": []string{"10.244.1.4/30"}})
	h.net.agentBridge("wgmesh-br0", netip.MustParsePrefix("10.244.1.5/30"))
	if c := statusCode(small); c != 0 {
		t.Errorf("small range, empty: %d", c)
	}
	if _, err := h.add("c1", "/run/netns/p1", small); err != nil {
		t.Fatal(err)
	}
	err := h.p.Status(&skel.CmdArgs{StdinData: small})
	if c := code(t, err); c != 50 || !strings.Contains(err.Error(), "no free address in 10.244.1.4/30") {
		t.Errorf("exhausted: %v", err)
	}
}

func TestGC(t *testing.T) {
	h := newHarness(t)
	for i := range 4 {
		ns := fmt.Sprintf("/run/netns/p%d", i)
		h.net.netns[ns] = true
		if _, err := h.add(fmt.Sprintf("c%d", i), ns, h.conf(nil)); err != nil {
			t.Fatal(err)
		}
	}
	// Plus an unreadable record, as a crash mid-write leaves.
	if err := os.WriteFile(filepath.Join(h.dataDir, "wgmesh", "ips", "10.244.1.100"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	conf := h.conf(map[string]any{"cni.dev/valid-attachments": []map[string]string{
		{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c3", "ifname": "eth0"}, {"containerID": "c1", "ifname": "net1"},
	}})
	if err := h.p.GC(&skel.CmdArgs{StdinData: conf}); err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, r := range h.records() {
		left = append(left, r.Owner.ContainerID+"="+r.Addr.String())
	}
	if diff := cmp.Diff([]string{"c1=10.244.1.3", "c3=10.244.1.5"}, left); diff != "" {
		t.Errorf("records after GC (-want +got):\n%s", diff)
	}
	wantSwept := []string{HostVethName("c0", "eth0"), HostVethName("c2", "eth0")}
	if diff := cmp.Diff(len(wantSwept), len(h.net.swept)); diff != "" {
		t.Errorf("swept %v, want %v", h.net.swept, wantSwept)
	}
	for _, v := range wantSwept {
		if _, ok := h.net.pods[v]; ok {
			t.Errorf("%s not swept", v)
		}
	}
	// Without the list GC refuses rather than freeing everything.
	n := len(h.records())
	if err := h.p.GC(&skel.CmdArgs{StdinData: h.conf(nil)}); err == nil || code(t, err) != 7 || !strings.Contains(err.Error(), "GC needs cni.dev/valid-attachments") {
		t.Errorf("GC without the list: %v", err)
	}
	if len(h.records()) != n {
		t.Error("GC without the list freed addresses")
	}
	// The old key name works too.
	if err := h.p.GC(&skel.CmdArgs{StdinData: h.conf(map[string]any{"cni.dev/attachments": []map[string]string{{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c3", "ifname": "eth0"}}})}); err != nil {
		t.Fatal(err)
	}
	if len(h.records()) != n {
		t.Error("GC with the legacy key freed valid addresses")
	}
	// GC with every attachment gone, and a broken podCIDR: still works.
	if err := h.p.GC(&skel.CmdArgs{StdinData: h.conf(map[string]any{"podCIDRs": []string{"junk"}, "cni.dev/valid-attachments": []any{}})}); err != nil {
		t.Fatal(err)
	}
	if got := h.records(); len(got) != 0 {
		t.Errorf("records %v", got)
	}
	// Errors are reported, after doing what can be done.
	h.net.fail["SweepVeths"] = errors.New("netlink down")
	if err := h.p.GC(&skel.CmdArgs{StdinData: h.conf(map[string]any{"cni.dev/valid-attachments": []any{}})}); err == nil || !strings.Contains(err.Error(), "netlink down") {
		t.Errorf("GC error: %v", err)
	}
}

func TestConcurrentAdds(t *testing.T) {
	h := newHarness(t)
	const n = 60
	var wg sync.WaitGroup
	errs := make([]error, n)
	outs := make([]*bytes.Buffer, n)
	for i := range n {
		h.net.netns[fmt.Sprintf("/run/netns/p%d", i)] = true
	}
	for i := range n {
		ns := fmt.Sprintf("/run/netns/p%d", i)
		outs[i] = &bytes.Buffer{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := New(Config{Network: h.net, Stdout: outs[i]}) // a process each, sharing the node
			errs[i] = p.Add(args(fmt.Sprintf("c%d", i), ns, h.conf(nil)))
		}()
	}
	wg.Wait()
	seen := map[string]int{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("ADD %d: %v", i, errs[i])
		}
		r, err := current.NewResult(outs[i].Bytes())
		if err != nil {
			t.Fatal(err)
		}
		a := r.(*current.Result).IPs[0].Address.IP.String()
		if j, dup := seen[a]; dup {
			t.Errorf("%s given to %d and %d", a, j, i)
		}
		seen[a] = i
	}
	if len(h.records()) != n {
		t.Errorf("%d records, want %d", len(h.records()), n)
	}
}

// A plugin chained in front of ours hands us its result: we keep it and
// append ours, with our address pointing at our interface.
func TestAddKeepsPrevResult(t *testing.T) {
	h := newHarness(t, "/run/netns/p1")
	prev := []byte(`{"cniVersion":"1.1.0","interfaces":[{"name":"lo"}],"ips":[{"address":"192.0.2.5/32","interface":0}],"routes":[{"dst":"192.0.2.0/24"}],"dns":{"nameservers":["192.0.2.53"]}}`)
	r, err := h.add("c1", "/run/netns/p1", h.withPrev(prev, nil))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range r.Interfaces {
		names = append(names, i.Name)
	}
	if diff := cmp.Diff([]string{"lo", "wgmesh-br0", HostVethName("c1", "eth0"), "eth0"}, names); diff != "" {
		t.Errorf("interfaces (-want +got):\n%s", diff)
	}
	if len(r.IPs) != 2 || *r.IPs[0].Interface != 0 || *r.IPs[1].Interface != 3 || r.IPs[1].Address.String() != "10.244.1.2/24" {
		t.Errorf("ips %v", r.IPs)
	}
	if len(r.Routes) != 2 || r.Routes[0].Dst.String() != "192.0.2.0/24" || r.Routes[1].Dst.String() != "0.0.0.0/0" {
		t.Errorf("routes %v", r.Routes)
	}
	if len(r.DNS.Nameservers) != 1 {
		t.Errorf("dns %v", r.DNS)
	}
}
