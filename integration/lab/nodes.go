package lab

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// AgentConflist is the file the agent writes when the node is ready for pods.
const AgentConflist = "10-wgmesh.conflist"

// UnderlayKind says how a node sits on a lab's underlay.
type UnderlayKind string

const (
	// UnderlayDefault: an IPv4 address and endpoint; in a lab with an
	// IPv6 underlay the node has an IPv6 address as well (dual-homed)
	// but still publishes its IPv4 endpoint.
	UnderlayDefault UnderlayKind = ""
	// UnderlayPreferIPv6: dual-homed, but the Node lists its IPv6
	// InternalIP first, so the agent publishes an IPv6 endpoint.
	UnderlayPreferIPv6 UnderlayKind = "ipv6"
	// UnderlayIPv6Only: no IPv4 underlay address or route at all; the
	// node reaches the apiserver and its peers over IPv6 only.
	UnderlayIPv6Only UnderlayKind = "ipv6-only"
)

// NodeOptions shapes a new node.
type NodeOptions struct {
	// Name of the Node object; default node<index>.
	Name string
	// NAT puts the node behind a masquerading router namespace: its own
	// address is 203.0.113.2 (its Node's InternalIP, as a kubelet behind NAT
	// would report), its traffic leaves from 198.51.100.(10+i).
	NAT bool
	// MTU of the node's underlay interface (default 1500).
	MTU int
	// Pods to attach once the agent is ready.
	Pods int
	// NoWait returns as soon as the agent is started (no pods are attached).
	NoWait bool
	// NoAgent creates the node without starting its agent.
	NoAgent bool
	// AgentArgs are extra flags for this node's agent, kept for
	// start-agent.
	AgentArgs []string
	// Location puts the node into a location (1-8 of [a-z0-9]): a
	// network of its own, shared by the location's nodes and reachable
	// from nowhere else, where the node has 203.0.113.(10+i) on eth1. Its
	// Node carries the label wgmesh.io/location and that private address
	// as its InternalIP, as a cloud node in a VPC would; its agent
	// publishes the underlay address as its public endpoint (--endpoint).
	// Not with NAT, not in the kubelet mode.
	Location string
	// Underlay needs a lab with an IPv6 underlay unless it is
	// UnderlayDefault.
	Underlay UnderlayKind
}

var validLocation = regexp.MustCompile(`^[a-z0-9]{1,8}$`)

// AddNode creates a node: namespaces, Node object (podCIDR 10.244.i.0/24,
// InternalIP 198.51.100.(10+i)), the agent's ServiceAccount kubeconfig, the
// CNI binary, and starts the agent.
func (l *Lab) AddNode(ctx context.Context, opt NodeOptions) (*Node, error) {
	var node *Node
	err := l.withState(func(st *State, save func() error) error {
		idx := st.NextIndex
		if idx < 1 {
			idx = 1
		}
		if idx > maxNodeIndex {
			return fmt.Errorf("no node index left (max %d nodes per lab)", maxNodeIndex)
		}
		name := opt.Name
		if name == "" {
			name = fmt.Sprintf("node%d", idx)
		}
		if _, dup := st.Nodes[name]; dup {
			return fmt.Errorf("node %q already exists", name)
		}
		switch {
		case opt.Underlay != UnderlayDefault && opt.Underlay != UnderlayPreferIPv6 && opt.Underlay != UnderlayIPv6Only:
			return fmt.Errorf("underlay %q: want %q, %q or empty", opt.Underlay, UnderlayPreferIPv6, UnderlayIPv6Only)
		case opt.Underlay != UnderlayDefault && !st.IPv6Underlay:
			return fmt.Errorf("underlay %q needs a lab with an IPv6 underlay (up --ipv6-underlay)", opt.Underlay)
		case opt.Underlay != UnderlayDefault && opt.NAT:
			return fmt.Errorf("a NAT'd node's underlay is IPv4 only; underlay %q does not combine with nat", opt.Underlay)
		case opt.Underlay == UnderlayIPv6Only && st.Kubelet:
			// The DaemonSet's agent reaches the apiserver through the
			// IPv4 kubernetes Service, pods the cluster DNS over IPv4.
			return fmt.Errorf("underlay %q: the kubelet mode's nodes need IPv4 too", opt.Underlay)
		}
		n := &Node{
			Name:       name,
			Index:      idx,
			Netns:      fmt.Sprintf("%sn%d", st.NetnsPrefix, idx),
			MountNS:    filepath.Join(st.MountDir, fmt.Sprintf("n%d.mnt", idx)),
			Dir:        filepath.Join(l.cfg.StateDir, "nodes", name),
			Link:       fmt.Sprintf("n%d", idx),
			UnderlayIP: fmt.Sprintf("198.51.100.%d", 10+idx),
			PodCIDR:    fmt.Sprintf("10.244.%d.0/24", idx),
			MTU:        opt.MTU,
			AgentArgs:  opt.AgentArgs,
			Pods:       map[string]*Pod{},
			NextPod:    1,
			Underlay:   opt.Underlay,
		}
		if st.DualStack {
			n.PodCIDRv6 = podCIDRv6(idx)
		}
		if st.IPv6Underlay && !opt.NAT {
			n.UnderlayIPv6 = underlayIPv6(idx)
			if opt.Underlay == UnderlayIPv6Only {
				n.UnderlayIP = n.UnderlayIPv6
			}
		}
		if opt.Location != "" {
			if !validLocation.MatchString(opt.Location) || opt.NAT || st.Kubelet {
				return fmt.Errorf("location %q: want 1-8 of [a-z0-9], and neither NAT nor the kubelet mode", opt.Location)
			}
			n.Location = opt.Location
			n.LocationNetns = st.NetnsPrefix + "loc-" + opt.Location
			n.PrivateIP = fmt.Sprintf("203.0.113.%d", 10+idx)
			n.AgentArgs = append([]string{fmt.Sprintf("--endpoint=%s:%d", n.UnderlayIP, DefaultListenPort)}, n.AgentArgs...)
		}
		if opt.NAT {
			n.NAT = &NAT{
				Netns:    fmt.Sprintf("%snat%d", st.NetnsPrefix, idx),
				Link:     n.Link,
				PublicIP: n.UnderlayIP,
				InsideIP: natInsideNode,
			}
			n.UnderlayIP = natInsideNode
		}
		// Record the intent first: a crash from here on still leaves `down`
		// everything it needs.
		st.NextIndex = idx + 1
		st.Nodes[name] = n
		if err := save(); err != nil {
			return err
		}
		l.cfg.Log.Info("adding node", "node", name, "underlay-ip", n.UnderlayIP, "underlay-ipv6", n.UnderlayIPv6,
			"pod-cidrs", n.PodCIDRs(), "nat", opt.NAT, "underlay", opt.Underlay)
		if err := prepareNodeDirs(n); err != nil {
			return err
		}
		if err := connectNode(ctx, st.Underlay, n); err != nil {
			return err
		}
		if st.Kubelet {
			// The kubelet registers the Node; the DaemonSet's agent
			// (installed by kubectl apply) does the rest.
			if err := l.setupKubeletNode(ctx, st, n, save); err != nil {
				return err
			}
			node = n
			return nil
		}
		if err := createMountNS(ctx, n); err != nil {
			return err
		}
		if err := installCNI(filepath.Join(l.cfg.BinDir, "wgmesh-cni"), filepath.Join(n.NodePath("/opt/cni/bin"), "wgmesh")); err != nil {
			return err
		}
		c, err := l.Admin()
		if err != nil {
			return err
		}
		if err := createNodeObject(ctx, c, n); err != nil {
			return err
		}
		if err := l.writeAgentKubeconfig(ctx, c, n); err != nil {
			return err
		}
		if !opt.NoAgent {
			if err := l.startAgent(n); err != nil {
				return err
			}
		}
		node = n
		return nil
	})
	if err != nil || opt.NoWait || opt.NoAgent {
		return node, err
	}
	if err := l.WaitAgentReady(ctx, node.Name, 2*time.Minute); err != nil {
		return node, err
	}
	if l.st.Kubelet && l.st.ControlPlaneWG != nil {
		// The control plane's tunnel learns the new node (controlpeer.go).
		if err := l.joinControlPlane(ctx); err != nil {
			return node, err
		}
	}
	for i := 0; i < opt.Pods; i++ {
		if _, err := l.AddPod(ctx, node.Name); err != nil {
			return node, err
		}
	}
	return l.st.Nodes[node.Name], nil
}

// installCNI copies the plugin binary into the node's /opt/cni/bin the way
// an installer should: write a temp file, then rename, so a runtime never
// executes a half-written plugin.
func installCNI(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("install cni plugin: %w", err)
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return fmt.Errorf("install cni plugin: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("install cni plugin: %w", err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("install cni plugin: %w", err)
	}
	return os.Rename(tmp, dst)
}

func (l *Lab) agentArgv(n *Node) []string {
	argv := []string{
		"nsenter", "--net=" + netnsPath(n.Netns), "--mount=" + n.MountNS, "--",
		filepath.Join(l.cfg.BinDir, "wgmesh-agent"),
		"--node-name=" + n.Name,
		"--kubeconfig=" + filepath.Join(n.Dir, "kubeconfig"),
	}
	if l.st != nil && l.st.DualStack {
		// Fail-closed and never masqueraded for both families; given
		// first so that Config.AgentArgs and the node's own args win.
		argv = append(argv, "--cluster-cidrs="+ClusterCIDRs+","+ClusterCIDRv6)
	}
	argv = append(argv, l.cfg.AgentArgs...)
	return append(argv, n.AgentArgs...)
}

func (l *Lab) startAgent(n *Node) error {
	p, err := startDetached(l.agentArgv(n), l.logPath("agent-"+n.Name), agentEnv())
	if err != nil {
		return err
	}
	n.Agent = &p
	return nil
}

// agentEnv is the caller's environment without WGMESH_* variables: the
// agent reads its configuration from those, and the lab configures agents
// through flags only (Config.AgentArgs).
func agentEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WGMESH_") {
			env = append(env, kv)
		}
	}
	return env
}

// AgentLog returns the path of the node's agent log.
func (l *Lab) AgentLog(node string) string { return l.logPath("agent-" + node) }

// WaitAgentReady waits until the node's agent has written the CNI config.
func (l *Lab) WaitAgentReady(ctx context.Context, node string, timeout time.Duration) error {
	if err := l.Load(); err != nil {
		return err
	}
	n, ok := l.st.Nodes[node]
	if !ok {
		return fmt.Errorf("node %q: %w", node, ErrNoNode)
	}
	path := filepath.Join(n.NodePath("/etc/cni/net.d"), AgentConflist)
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if l.st.Kubelet {
			if n.Kubelet == nil || !n.Kubelet.Alive() {
				return fmt.Errorf("kubelet on %s is not running; last log lines:\n%s", node, tailFile(l.logPath("kubelet-"+node), 20))
			}
		} else if n.Agent == nil || !n.Agent.Alive() {
			return fmt.Errorf("agent on %s is not running; last log lines:\n%s", node, tailFile(l.AgentLog(node), 20))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent on %s wrote no %s within %s; last log lines:\n%s", node, AgentConflist, timeout, tailFile(l.AgentLog(node), 20))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// KillAgent SIGKILLs the node's agent (a crash, not a shutdown).
func (l *Lab) KillAgent(node string) error {
	return l.withState(func(st *State, save func() error) error {
		n, ok := st.Nodes[node]
		if !ok {
			return fmt.Errorf("node %q: %w", node, ErrNoNode)
		}
		if st.Kubelet {
			return killAgentContainer(n)
		}
		if n.Agent == nil || !n.Agent.Alive() {
			return fmt.Errorf("agent on %s is not running", node)
		}
		if err := n.Agent.stop(syscall.SIGKILL, 5*time.Second); err != nil {
			return err
		}
		n.Agent = nil
		return nil
	})
}

// StartAgent starts the node's agent again (after KillAgent, or with a new
// binary in BinDir).
func (l *Lab) StartAgent(node string) error {
	return l.withState(func(st *State, save func() error) error {
		n, ok := st.Nodes[node]
		if !ok {
			return fmt.Errorf("node %q: %w", node, ErrNoNode)
		}
		if st.Kubelet {
			// The agent is the kubelet's to restart: wait until it has.
			return waitAgentContainer(context.Background(), n, 2*time.Minute)
		}
		if n.Agent != nil && n.Agent.Alive() {
			return fmt.Errorf("agent on %s is already running (pid %d)", node, n.Agent.PID)
		}
		return l.startAgent(n)
	})
}

// RemoveNode deletes the Node object, stops the node's agent and removes its
// namespaces (its pods go with its mount namespace) and files.
func (l *Lab) RemoveNode(ctx context.Context, node string) error {
	return l.withState(func(st *State, save func() error) error {
		n, ok := st.Nodes[node]
		if !ok {
			return fmt.Errorf("node %q: %w", node, ErrNoNode)
		}
		c, err := l.Admin()
		if err != nil {
			return err
		}
		if err := c.CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete node %s: %w", n.Name, err)
		}
		// The pods go with the node (the pod garbage collector's job in
		// a real cluster).
		for _, p := range n.Pods {
			if err := l.unpublishPod(ctx, n, p); err != nil {
				return err
			}
		}
		if err := l.destroyNode(ctx, n); err != nil {
			return err
		}
		delete(st.Nodes, node)
		return nil
	})
}

func (l *Lab) destroyNode(ctx context.Context, n *Node) error {
	if err := stopKubeletNode(n); err != nil {
		return err
	}
	if n.Agent != nil {
		if err := n.Agent.stop(syscall.SIGTERM, 5*time.Second); err != nil {
			return err
		}
		n.Agent = nil
	}
	inodes := map[uint64]bool{}
	for _, p := range []string{n.MountNS, netnsPath(n.Netns)} {
		if ino, ok := nsInode(p); ok {
			inodes[ino] = true
		}
	}
	killInNamespaces(inodes)
	if err := releaseMountNS(n.MountNS); err != nil {
		return err
	}
	for _, ns := range []string{n.Netns, natNetns(n)} {
		if err := delNetns(ctx, ns); err != nil {
			return err
		}
	}
	return os.RemoveAll(n.Dir)
}

func natNetns(n *Node) string {
	if n.NAT == nil {
		return ""
	}
	return n.NAT.Netns
}

// Endpoint returns the address other nodes see the node's traffic come
// from (the router's for a NAT'd node).
func (n *Node) Endpoint() string {
	if n.NAT != nil {
		return n.NAT.PublicIP
	}
	return n.UnderlayIP
}

// String is for messages.
func (n *Node) String() string {
	return strings.Join(append([]string{n.Name, n.UnderlayIP}, n.PodCIDRs()...), " ")
}

// PodCIDRs are the node's podCIDRs, IPv4 first (spec.podCIDRs).
func (n *Node) PodCIDRs() []string {
	if n.PodCIDRv6 == "" {
		return []string{n.PodCIDR}
	}
	return []string{n.PodCIDR, n.PodCIDRv6}
}

// InternalIPs are the node's InternalIP addresses in the order its Node
// lists them: the agent publishes the first as its endpoint.
func (n *Node) InternalIPs() []string {
	switch {
	case n.UnderlayIPv6 == "" || n.Underlay == UnderlayIPv6Only:
		return []string{n.UnderlayIP}
	case n.Underlay == UnderlayPreferIPv6:
		return []string{n.UnderlayIPv6, n.UnderlayIP}
	}
	return []string{n.UnderlayIP, n.UnderlayIPv6}
}

// Lab address plan for IPv6 (design.md): pods fd00:10:244:i::/64 out of
// ClusterCIDRv6, underlay 2001:db8:100::/64 with the bridge at ::1 and
// node i at ::(10+i) (decimal digits, read as hex: node 1 is ::11 as it is
// .11 in IPv4).
const (
	// ClusterCIDRs is the lab's IPv4 cluster pod range.
	ClusterCIDRs = "10.244.0.0/16"
	// ClusterCIDRv6 is the lab's IPv6 cluster pod range.
	ClusterCIDRv6 = "fd00:10:244::/56"
	// UnderlayGatewayIPv6 is the underlay bridge's IPv6 address.
	UnderlayGatewayIPv6 = "2001:db8:100::1"
	underlayPrefixV6    = 64
)

func podCIDRv6(idx int) string    { return fmt.Sprintf("fd00:10:244:%x::/64", idx) }
func underlayIPv6(idx int) string { return fmt.Sprintf("2001:db8:100::%d", 10+idx) }
