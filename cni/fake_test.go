package cni

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"

	current "github.com/containernetworking/cni/pkg/types/100"
)

// fakeNet is an in-memory Network: namespaces are paths in a set, the
// bridge and pods are records. fail injects an error into a method.
type fakeNet struct {
	mu      sync.Mutex
	netns   map[string]bool
	bridge  *fakeBridge
	pods    map[string]PodSpec // by HostVeth
	podIfs  map[[2]string]bool // (netns, ifname) present
	fail    map[string]error
	calls   []string
	swept   []string
	ownNS   string
	ifExist map[[2]string]bool // pre-existing pod interfaces
	noGuard bool               // the agent's guard table is absent
}

type fakeBridge struct {
	name string
	up   bool
	gws  []netip.Prefix
}

func newFakeNet(netns ...string) *fakeNet {
	f := &fakeNet{netns: map[string]bool{}, pods: map[string]PodSpec{}, podIfs: map[[2]string]bool{}, fail: map[string]error{}, ifExist: map[[2]string]bool{}}
	for _, n := range netns {
		f.netns[n] = true
	}
	return f
}

func (f *fakeNet) call(name string) error {
	f.calls = append(f.calls, name)
	return f.fail[name]
}

func (f *fakeNet) ValidateNetNS(path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("ValidateNetNS"); err != nil {
		return err
	}
	switch {
	case path == f.ownNS && path != "":
		return fmt.Errorf("%s %w", path, ErrOwnNetNS)
	case !f.netns[path]:
		return fmt.Errorf("%s: %w", path, ErrNetNSNotFound)
	}
	return nil
}

// agentBridge plays the agent's data plane, the bridge's owner: the bridge
// exists, is up and carries gws (added to what it has). It is no Network
// method: the plugin never makes the bridge.
func (f *fakeNet) agentBridge(name string, gws ...netip.Prefix) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.bridge == nil || f.bridge.name != name {
		f.bridge = &fakeBridge{name: name}
	}
	f.bridge.up = true
	for _, g := range gws {
		if !slices.Contains(f.bridge.gws, g) {
			f.bridge.gws = append(f.bridge.gws, g)
		}
	}
}

func (f *fakeNet) GuardReady() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("GuardReady"); err != nil {
		return err
	}
	if f.noGuard {
		return fmt.Errorf("no nftables table inet %s: %w", GuardTable, ErrNoGuard)
	}
	return nil
}

func (f *fakeNet) BridgeReady(b BridgeSpec) (*current.Interface, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("BridgeReady"); err != nil {
		return nil, err
	}
	if f.bridge == nil || f.bridge.name != b.Name {
		return nil, fmt.Errorf("%s does not exist: %w", b.Name, ErrBridgeNotReady)
	}
	if !f.bridge.up {
		return nil, fmt.Errorf("%s is down: %w", b.Name, ErrBridgeNotReady)
	}
	for _, g := range b.Gateways {
		if !slices.Contains(f.bridge.gws, g) {
			return nil, fmt.Errorf("%s lacks gateway address %s: %w", b.Name, g, ErrBridgeNotReady)
		}
	}
	return &current.Interface{Name: b.Name, Mac: "02:00:00:00:00:01"}, nil
}

func (f *fakeNet) AttachPod(s PodSpec) (*current.Interface, *current.Interface, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("AttachPod"); err != nil {
		return nil, nil, err
	}
	if !f.netns[s.NetNS] {
		return nil, nil, fmt.Errorf("%s: %w", s.NetNS, ErrNetNSNotFound)
	}
	key := [2]string{s.NetNS, s.IfName}
	if f.podIfs[key] || f.ifExist[key] {
		return nil, nil, fmt.Errorf("%s: %w", s.IfName, ErrIfaceExists)
	}
	f.pods[s.HostVeth] = s
	f.podIfs[key] = true
	return &current.Interface{Name: s.HostVeth, Mac: "02:00:00:00:00:02"},
		&current.Interface{Name: s.IfName, Mac: "02:00:00:00:00:03", Sandbox: s.NetNS, Mtu: s.MTU}, nil
}

func (f *fakeNet) DetachPod(s PodSpec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("DetachPod"); err != nil {
		return err
	}
	if p, ok := f.pods[s.HostVeth]; ok {
		delete(f.podIfs, [2]string{p.NetNS, p.IfName})
		delete(f.pods, s.HostVeth)
	}
	return nil
}

func (f *fakeNet) CheckPod(s PodSpec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("CheckPod"); err != nil {
		return err
	}
	p, ok := f.pods[s.HostVeth]
	if !ok {
		return fmt.Errorf("host veth %s: not found", s.HostVeth)
	}
	if p.MTU != s.MTU {
		return fmt.Errorf("%s has MTU %d, want %d", s.IfName, p.MTU, s.MTU)
	}
	for _, a := range s.Addrs {
		if !slices.Contains(p.Addrs, a) {
			return fmt.Errorf("%s lacks address %s", s.IfName, a)
		}
	}
	return nil
}

func (f *fakeNet) SweepVeths(bridge string, keep map[string]bool) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("SweepVeths"); err != nil {
		return nil, err
	}
	var removed []string
	for name, p := range f.pods {
		if !keep[name] {
			delete(f.podIfs, [2]string{p.NetNS, p.IfName})
			delete(f.pods, name)
			removed = append(removed, name)
		}
	}
	slices.Sort(removed)
	f.swept = append(f.swept, removed...)
	return removed, nil
}
