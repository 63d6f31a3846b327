package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"syscall"
)

// State is everything a lab made, written to <state-dir>/state.json before
// (intent) and after each step, so that `down` can remove all of it even after
// a crash or Ctrl-C half-way through `up`.
type State struct {
	Name string `json:"name"`
	// NetnsPrefix prefixes every network namespace this lab creates; `down`
	// also sweeps /run/netns for names with this prefix.
	NetnsPrefix string `json:"netnsPrefix"`
	Underlay    string `json:"underlay"` // netns name
	Etcd        *Proc  `json:"etcd,omitempty"`
	APIServer   *Proc  `json:"apiserver,omitempty"`
	// APIServerArgv is kept so the apiserver can be restarted as it was.
	APIServerArgv []string `json:"apiserverArgv,omitempty"`
	// MountDir is the private bind mount holding the nodes' mount-namespace
	// files; unmounted last.
	MountDir string `json:"mountDir,omitempty"`
	// CreatedDirs are host directories the lab created as mount points for
	// node-private directories; removed by `down` when empty.
	CreatedDirs []string         `json:"createdDirs,omitempty"`
	Nodes       map[string]*Node `json:"nodes"`
	// NextIndex is the index the next node gets (1-based); indexes are never
	// reused within a lab so a re-added node never inherits stale state.
	NextIndex int `json:"nextIndex"`
	// Kubelet marks a lab whose nodes run the real node stack (containerd,
	// kubelet, kube-proxy; the agent as the shipped DaemonSet); see kubelet.go.
	Kubelet           bool  `json:"kubelet,omitempty"`
	ControllerManager *Proc `json:"controllerManager,omitempty"`
	Scheduler         *Proc `json:"scheduler,omitempty"`
	ClusterDNS        *Proc `json:"clusterDNS,omitempty"`
	// ControlPlaneWG is the control plane's wireguard-go (controlpeer.go).
	ControlPlaneWG *Proc `json:"controlPlaneWG,omitempty"`
	// DualStack gives every node an IPv6 podCIDR (fd00:10:244:i::/64)
	// beside its IPv4 one, and every pod an address of each family.
	DualStack bool `json:"dualStack,omitempty"`
	// IPv6Underlay adds 2001:db8:100::/64 to the underlay: every node
	// gets 2001:db8:100::(10+i) beside its IPv4 address (see
	// NodeOptions.Underlay for nodes with IPv6 endpoints or no IPv4).
	// Always set in a kubelet-mode dual-stack lab (node IPs of both
	// families).
	IPv6Underlay bool `json:"ipv6Underlay,omitempty"`
}

// Node is one lab node.
type Node struct {
	Name  string `json:"name"`
	Index int    `json:"index"`
	// Netns is the node's network namespace name (/run/netns/<Netns>).
	Netns string `json:"netns"`
	// MountNS is the file the node's mount namespace is bound to.
	MountNS string `json:"mountns"`
	// Dir holds the node's private directories.
	Dir string `json:"dir"`
	// Link is the node's veth end in the underlay namespace.
	Link string `json:"link"`
	// UnderlayIP is the node's IPv4 underlay address, or its IPv6 one on
	// an IPv6-only node.
	UnderlayIP string `json:"underlayIP"`
	PodCIDR    string `json:"podCIDR"`
	// UnderlayIPv6 is the node's address on an IPv6 underlay ("" without).
	UnderlayIPv6 string `json:"underlayIPv6,omitempty"`
	// Underlay is the node's underlay family (NodeOptions.Underlay).
	Underlay UnderlayKind `json:"underlay,omitempty"`
	// PodCIDRv6 is the node's IPv6 podCIDR in a dual-stack lab.
	PodCIDRv6 string `json:"podCIDRv6,omitempty"`
	// NAT, when set, puts the node behind its own masquerading namespace.
	NAT *NAT `json:"nat,omitempty"`
	// Location, when set, gives the node a second interface (eth1,
	// PrivateIP) on the location's own network (namespace LocationNetns,
	// a bridge shared by the location's nodes): PrivateIP is its Node's
	// InternalIP and UnderlayIP its public endpoint (see NodeOptions).
	Location      string `json:"location,omitempty"`
	LocationNetns string `json:"locationNetns,omitempty"`
	PrivateIP     string `json:"privateIP,omitempty"`
	// MTU of the node's underlay interface (0 = default 1500).
	MTU int `json:"mtu,omitempty"`
	// AgentArgs are this node's extra agent flags (after Config.AgentArgs).
	AgentArgs []string        `json:"agentArgs,omitempty"`
	Agent     *Proc           `json:"agent,omitempty"`
	Pods      map[string]*Pod `json:"pods"`
	// NextPod numbers the node's pods (p1, p2, ...).
	NextPod int `json:"nextPod"`
	// The kubelet mode's node stack (nil in the default mode).
	Containerd *Proc `json:"containerd,omitempty"`
	Kubelet    *Proc `json:"kubelet,omitempty"`
	KubeProxy  *Proc `json:"kubeProxy,omitempty"`
	// CgroupRoot is the kubelet's cgroupRoot (v1, every hierarchy); `down`
	// kills what is left in it and removes it.
	CgroupRoot string `json:"cgroupRoot,omitempty"`
}

// NAT describes a node behind a masquerading router namespace.
type NAT struct {
	// Netns of the router; its underlay address is the node's public
	// address, the node itself sits at InsideIP.
	Netns    string `json:"netns"`
	Link     string `json:"link"`
	PublicIP string `json:"publicIP"`
	InsideIP string `json:"insideIP"`
}

// Pod is one pod: a network namespace inside the node's mount namespace,
// attached by the real CNI plugin.
type Pod struct {
	Name        string `json:"name"`
	Netns       string `json:"netns"` // name under /run/netns inside the node's mount namespace
	ContainerID string `json:"containerID"`
	IP          string `json:"ip,omitempty"`
	// IPv6 is the pod's IPv6 address in a dual-stack lab.
	IPv6 string `json:"ipv6,omitempty"`
	// Namespace of the pod's Pod object ("" = PodNamespace).
	Namespace string `json:"namespace,omitempty"`
}

// NodeNames returns the node names sorted by index.
func (s *State) NodeNames() []string {
	names := make([]string, 0, len(s.Nodes))
	for n := range s.Nodes {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return s.Nodes[names[i]].Index < s.Nodes[names[j]].Index })
	return names
}

// PodNames returns the node's pod names in creation order.
func (n *Node) PodNames() []string {
	names := make([]string, 0, len(n.Pods))
	for p := range n.Pods {
		names = append(names, p)
	}
	sort.Slice(names, func(i, j int) bool {
		a, b := names[i], names[j]
		if len(a) != len(b) {
			return len(a) < len(b)
		}
		return a < b
	})
	return names
}

func statePath(dir string) string { return filepath.Join(dir, "state.json") }

// ErrNoLab is returned when the state directory holds no lab.
var ErrNoLab = errors.New("no lab state")

func loadState(dir string) (*State, error) {
	data, err := os.ReadFile(statePath(dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", dir, ErrNoLab)
	}
	if err != nil {
		return nil, fmt.Errorf("read lab state: %w", err)
	}
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("parse %s: %w", statePath(dir), err)
	}
	if s.Nodes == nil {
		s.Nodes = map[string]*Node{}
	}
	for _, n := range s.Nodes {
		if n.Pods == nil {
			n.Pods = map[string]*Pod{}
		}
	}
	return &s, nil
}

// saveState writes atomically (temp file + rename) so a crash never leaves a
// truncated state file that `down` cannot read.
func saveState(dir string, s *State) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("marshal lab state: %w", err)
	}
	tmp := statePath(dir) + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	if err := os.Rename(tmp, statePath(dir)); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	return nil
}

// lockDir takes an exclusive flock on <dir>/lock so two lab commands never
// edit the same state at once. The returned func releases it.
func lockDir(dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock state dir: %w", err)
	}
	return func() { f.Close() }, nil
}
