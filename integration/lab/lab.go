// Package lab runs a multi-node wgmesh cluster on one machine: a real etcd
// and kube-apiserver in an underlay network namespace (a bridge on
// 198.51.100.0/24), and per node a network namespace plus a persistent mount
// namespace in which the real wgmesh-agent runs and pods are attached by the
// real wgmesh CNI plugin through libcni. Traffic never leaves namespaces the
// lab made: the underlay namespace has no route out.
//
// All state lives under one directory (Config.StateDir) so that Down removes
// everything (processes by pid, namespaces by name, mounts by path) also
// after a crash, and labs with different names never collide.
package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// Config configures a lab. The zero value of every field but BinDir has a
// usable default (see Defaults).
type Config struct {
	// Name distinguishes parallel labs; namespaces are named wgl-<Name>-*.
	Name string
	// StateDir holds the lab's state, logs, certificates and node dirs.
	// Default /run/wgmesh-lab/<Name>.
	StateDir string
	// BinDir holds wgmesh-agent, wgmesh-cni, etcd, kube-apiserver and
	// kubectl.
	BinDir string
	// LabBinary is an executable with the hidden `cni` subcommand
	// (wgmesh-lab); pods are attached by re-executing it inside the node.
	// Default: BinDir/wgmesh-lab.
	LabBinary string
	// AgentArgs are extra flags for every agent.
	AgentArgs []string
	// Log receives progress; default discards.
	Log *slog.Logger
}

// Defaults fills in unset fields.
func (c Config) Defaults() Config {
	if c.Name == "" {
		c.Name = "lab"
	}
	if c.StateDir == "" {
		c.StateDir = filepath.Join("/run/wgmesh-lab", c.Name)
	}
	// Absolute paths: they end up in argv of processes started in other
	// working directories (nsenter --mount changes the view of cwd).
	if abs, err := filepath.Abs(c.BinDir); err == nil {
		c.BinDir = abs
	}
	if abs, err := filepath.Abs(c.StateDir); err == nil {
		c.StateDir = abs
	}
	if c.LabBinary == "" {
		c.LabBinary = filepath.Join(c.BinDir, "wgmesh-lab")
	}
	if c.Log == nil {
		c.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return c
}

var validName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?$`)

// Lab is a handle on a lab's state directory. Methods that change the lab
// take an flock on the state directory and re-read the state, so several
// processes (CLI invocations, a test) may drive the same lab one at a time.
type Lab struct {
	cfg Config
	st  *State
}

// Sentinel errors.
var (
	ErrNoNode = errors.New("no such node")
	ErrNoPod  = errors.New("no such pod")
)

// New returns a handle; it does no I/O.
func New(cfg Config) *Lab {
	return &Lab{cfg: cfg.Defaults()}
}

// Config returns the effective configuration.
func (l *Lab) Config() Config { return l.cfg }

// Load reads the lab state from disk.
func (l *Lab) Load() error {
	st, err := loadState(l.cfg.StateDir)
	if err != nil {
		return err
	}
	l.st = st
	return nil
}

// State returns the state as last loaded or changed.
func (l *Lab) State() *State { return l.st }

// withState runs fn with the state locked and freshly loaded; save persists
// intermediate progress (record intent before acting).
func (l *Lab) withState(fn func(st *State, save func() error) error) error {
	unlock, err := lockDir(l.cfg.StateDir)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := loadState(l.cfg.StateDir)
	if err != nil {
		return err
	}
	l.st = st
	save := func() error { return saveState(l.cfg.StateDir, st) }
	ferr := fn(st, save)
	if err := save(); err != nil && ferr == nil {
		ferr = err
	}
	return ferr
}

func (l *Lab) prefix() string { return "wgl-" + l.cfg.Name + "-" }

// UpOptions shapes a new lab.
type UpOptions struct {
	Nodes int
	Pods  int // per node
	// Kubelet runs the real node stack on every node (kubelet.go) and
	// installs wgmesh from deploy/overlays/lab instead of starting agents.
	Kubelet bool
	// DualStack gives nodes an IPv6 podCIDR too and pods an address of
	// each family; the agents get both families as cluster-cidrs.
	DualStack bool
	// IPv6Underlay adds 2001:db8:100::/64 to the underlay and makes a
	// mixed cluster: node i (1-based) publishes an IPv4 endpoint when
	// i%3 == 1, an IPv6 one when i%3 == 2, and has no IPv4 underlay at
	// all when i%3 == 0 (see UnderlayKind). In the kubelet mode (with
	// DualStack only) every node lists its IPv6 node IP first instead
	// (kubeletUnderlayFor); DualStack alone already gives the kubelet
	// mode's nodes IPv6 underlay addresses.
	IPv6Underlay bool
}

// underlayFor is the UpOptions.IPv6Underlay pattern for the i-th node.
func underlayFor(i int) UnderlayKind {
	switch i % 3 {
	case 2:
		return UnderlayPreferIPv6
	case 0:
		return UnderlayIPv6Only
	}
	return UnderlayDefault
}

// kubeletUnderlayFor is the IPv6Underlay pattern of the kubelet mode: every
// node lists its IPv6 node IP first, so the agents publish IPv6 endpoints
// and WireGuard runs over IPv6 only. A mix of IPv4 and IPv6 endpoints among
// dual-homed nodes does not hold: a node that publishes IPv6 but reaches
// IPv4 peers from its IPv4 address is roamed to that address by them (run
// of 2026-12-03: 0 WireGuard frames over IPv6 with node2 of 3 publishing
// IPv6). No IPv6-only nodes either: the DaemonSet's agent reaches the
// apiserver through the IPv4 kubernetes Service, pods the cluster DNS on an
// IPv4 address.
func kubeletUnderlayFor(int) UnderlayKind { return UnderlayPreferIPv6 }

// Up removes leftovers of an earlier lab with the same state directory and
// name, then starts the control plane, the nodes with their agents, and the
// pods.
func (l *Lab) Up(ctx context.Context, opt UpOptions) error {
	if !validName.MatchString(l.cfg.Name) {
		return fmt.Errorf("lab name %q: want 1-16 of [a-z0-9-]", l.cfg.Name)
	}
	if opt.Nodes < 1 || opt.Nodes > maxNodeIndex {
		return fmt.Errorf("nodes: want 1..%d, got %d", maxNodeIndex, opt.Nodes)
	}
	if err := l.checkBinaries(); err != nil {
		return err
	}
	if opt.Kubelet {
		if opt.IPv6Underlay && !opt.DualStack {
			return errors.New("the kubelet mode takes --ipv6-underlay only with --dual-stack (its IPv6 node addresses serve IPv6 NodePorts and Services)")
		}
		if err := l.checkKubeletBinaries(); err != nil {
			return err
		}
	}
	if err := l.Down(ctx); err != nil {
		return fmt.Errorf("clean up earlier lab: %w", err)
	}
	start := time.Now()
	log := l.cfg.Log
	if err := os.MkdirAll(filepath.Join(l.cfg.StateDir, "logs"), 0o755); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	st := &State{
		Name:         l.cfg.Name,
		NetnsPrefix:  l.prefix(),
		Underlay:     l.prefix() + "ul",
		MountDir:     filepath.Join(l.cfg.StateDir, "ns"),
		Nodes:        map[string]*Node{},
		NextIndex:    1,
		Kubelet:      opt.Kubelet,
		DualStack:    opt.DualStack,
		IPv6Underlay: opt.IPv6Underlay,
	}
	if opt.Kubelet && opt.DualStack {
		// A dual-stack node has node IPs of both families (kubelet
		// --node-ip): kube-proxy serves IPv6 NodePorts on the IPv6 one.
		// So the underlay carries IPv6 too; --ipv6-underlay only adds
		// nodes that publish their IPv6 endpoint (kubeletUnderlayFor).
		st.IPv6Underlay = true
	}
	if err := saveState(l.cfg.StateDir, st); err != nil {
		return err
	}
	err := l.withState(func(st *State, save func() error) error {
		if err := makeMountDir(ctx, st.MountDir); err != nil {
			return err
		}
		log.Info("generating certificates")
		if err := l.pki().generate([]net.IP{net.ParseIP(UnderlayGateway), net.ParseIP(UnderlayGatewayIPv6), net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1")}); err != nil {
			return err
		}
		if err := l.writeAdminKubeconfig(); err != nil {
			return err
		}
		log.Info("creating underlay", "netns", st.Underlay, "bridge", underlayBridge, "subnet", "198.51.100.0/24")
		if err := setupUnderlay(ctx, st.Underlay, st.IPv6Underlay); err != nil {
			return err
		}
		log.Info("starting etcd")
		p, err := l.startEtcd(st)
		if err != nil {
			return err
		}
		st.Etcd = &p
		if err := save(); err != nil {
			return err
		}
		log.Info("starting kube-apiserver", "url", APIServerURL())
		if st.Kubelet {
			st.APIServerArgv = l.kubeletAPIServerArgv(st)
		}
		p, err = l.startAPIServer(st)
		if err != nil {
			return err
		}
		st.APIServer = &p
		if err := save(); err != nil {
			return err
		}
		if err := l.waitAPIServer(ctx, st, 2*time.Minute); err != nil {
			return err
		}
		log.Info("kube-apiserver ready", "after", time.Since(start).Round(time.Millisecond))
		if st.Kubelet {
			// The agent's RBAC comes with `kubectl apply -k` (upKubelet).
			log.Info("starting kube-controller-manager and kube-scheduler")
			return l.startControllers(st)
		}
		c, err := l.Admin()
		if err != nil {
			return err
		}
		if err := l.applyRBAC(ctx, c); err != nil {
			return err
		}
		return l.applyCRDs(ctx)
	})
	if err != nil {
		return err
	}
	if opt.Kubelet {
		return l.upKubelet(ctx, opt, start)
	}
	// Start every node's agent first, then wait for them together: the
	// agents come up in parallel.
	names, err := l.addNodesNoWait(ctx, opt.Nodes, underlayFor, opt.IPv6Underlay)
	if err != nil {
		return err
	}
	for _, name := range names {
		if err := l.WaitAgentReady(ctx, name, 2*time.Minute); err != nil {
			return err
		}
		for j := 0; j < opt.Pods; j++ {
			if _, err := l.AddPod(ctx, name); err != nil {
				return err
			}
		}
	}
	log.Info("lab up", "nodes", opt.Nodes, "pods-per-node", opt.Pods, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

func (l *Lab) checkBinaries() error {
	var missing []string
	for _, b := range []string{"etcd", "kube-apiserver", "wgmesh-agent", "wgmesh-cni"} {
		if fi, err := os.Stat(filepath.Join(l.cfg.BinDir, b)); err != nil || fi.Mode()&0o111 == 0 {
			missing = append(missing, filepath.Join(l.cfg.BinDir, b))
		}
	}
	if fi, err := os.Stat(l.cfg.LabBinary); err != nil || fi.Mode()&0o111 == 0 {
		missing = append(missing, l.cfg.LabBinary)
	}
	for _, t := range []string{"ip", "nsenter", "unshare", "mount", "nft"} {
		if _, err := lookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing executables: %s (build with `make build` and integration/tools/build.sh)", strings.Join(missing, ", "))
	}
	return nil
}

// Down removes everything the lab made. It works from the state file and
// additionally sweeps network namespaces carrying the lab's prefix, so it
// also cleans up after a crash in the middle of `up`. A lab that does not
// exist is not an error.
func (l *Lab) Down(ctx context.Context) error {
	if err := os.MkdirAll(l.cfg.StateDir, 0o755); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	unlock, err := lockDir(l.cfg.StateDir)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := loadState(l.cfg.StateDir)
	if errors.Is(err, ErrNoLab) {
		st = &State{Name: l.cfg.Name, NetnsPrefix: l.prefix(), Nodes: map[string]*Node{}}
	} else if err != nil {
		return err
	}
	var errs []error
	// The kubelet mode's node stacks first: kubelets would restart what
	// goes away, and pod containers live in namespaces of their own.
	for _, n := range st.Nodes {
		if err := stopKubeletNode(n); err != nil {
			errs = append(errs, err)
		}
	}
	// Agents first (they would otherwise react to the rest going away).
	for _, n := range st.Nodes {
		if n.Agent != nil {
			if err := n.Agent.stop(syscall.SIGTERM, 5*time.Second); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// Whatever else runs inside the lab's namespaces (exec/pod-exec leftovers).
	inodes := map[uint64]bool{}
	for _, n := range st.Nodes {
		for _, p := range []string{n.MountNS, netnsPath(n.Netns)} {
			if ino, ok := nsInode(p); ok {
				inodes[ino] = true
			}
		}
	}
	for _, name := range l.sweepNetns(st) {
		if ino, ok := nsInode(netnsPath(name)); ok && name != st.Underlay {
			inodes[ino] = true
		}
	}
	killInNamespaces(inodes)
	// Again, now that no shim or runtime of the node is left to recreate
	// a cgroup (a run left node2/kubepods behind without this).
	for _, n := range st.Nodes {
		if err := removeCgroupRoot(n.CgroupRoot); err != nil {
			errs = append(errs, err)
		}
	}
	for _, n := range st.Nodes {
		if err := releaseMountNS(n.MountNS); err != nil {
			errs = append(errs, err)
		}
	}
	if st.Kubelet {
		if err := stopControlPlaneWG(st); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range []*Proc{st.ClusterDNS, st.Scheduler, st.ControllerManager, st.APIServer, st.Etcd} {
		if p != nil {
			if err := p.stop(syscall.SIGTERM, 10*time.Second); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if ino, ok := nsInode(netnsPath(st.Underlay)); ok && st.Underlay != "" {
		killInNamespaces(map[uint64]bool{ino: true})
	}
	for _, name := range l.sweepNetns(st) {
		if err := delNetns(ctx, name); err != nil {
			errs = append(errs, err)
		}
	}
	// Mount-namespace files not recorded in the state (crash between
	// creating and recording) live in the mount dir too.
	mountDir := st.MountDir
	if mountDir == "" {
		mountDir = filepath.Join(l.cfg.StateDir, "ns")
	}
	if entries, err := os.ReadDir(mountDir); err == nil {
		for _, e := range entries {
			if err := releaseMountNS(filepath.Join(mountDir, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := syscall.Unmount(mountDir, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
		errs = append(errs, fmt.Errorf("unmount %s: %w", mountDir, err))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	// Everything but the lock file (held right now) goes.
	entries, err := os.ReadDir(l.cfg.StateDir)
	if err != nil {
		return fmt.Errorf("read state dir: %w", err)
	}
	for _, e := range entries {
		if e.Name() == "lock" {
			continue
		}
		if err := os.RemoveAll(filepath.Join(l.cfg.StateDir, e.Name())); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", e.Name(), err))
		}
	}
	_ = os.Remove(filepath.Join(l.cfg.StateDir, "lock"))
	_ = os.Remove(l.cfg.StateDir)
	l.st = nil
	return errors.Join(errs...)
}

// sweepNetns lists the lab's network namespaces: those recorded plus any in
// /run/netns with the lab's prefix.
func (l *Lab) sweepNetns(st *State) []string {
	seen := map[string]bool{}
	var names []string
	add := func(n string) {
		if n != "" && !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	for _, n := range st.Nodes {
		add(n.Netns)
		if n.NAT != nil {
			add(n.NAT.Netns)
		}
	}
	prefix := st.NetnsPrefix
	if prefix == "" {
		prefix = l.prefix()
	}
	if entries, err := os.ReadDir(netnsDir); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), prefix) && e.Name() != st.Underlay && e.Name() != prefix+"ul" {
				add(e.Name())
			}
		}
	}
	// The underlay last: nodes' veths hang off its bridge.
	add(st.Underlay)
	add(prefix + "ul")
	return names
}

// Underlay returns the underlay network namespace and bridge names.
func (l *Lab) Underlay() (netnsName, bridge string) {
	return l.st.Underlay, underlayBridge
}

// NodeCommand returns argv that runs cmd inside the node's network and mount
// namespaces.
func (l *Lab) NodeCommand(node string, cmd ...string) ([]string, error) {
	n, ok := l.st.Nodes[node]
	if !ok {
		return nil, fmt.Errorf("node %q: %w", node, ErrNoNode)
	}
	return append([]string{"nsenter", "--net=" + netnsPath(n.Netns), "--mount=" + n.MountNS, "--"}, cmd...), nil
}

// PodCommand returns argv that runs cmd in the pod's network namespace (and
// the node's mount namespace, where the pod's netns file lives).
func (l *Lab) PodCommand(node, pod string, cmd ...string) ([]string, error) {
	n, ok := l.st.Nodes[node]
	if !ok {
		return nil, fmt.Errorf("node %q: %w", node, ErrNoNode)
	}
	p, ok := n.Pods[pod]
	if !ok {
		return nil, fmt.Errorf("pod %s/%s: %w", node, pod, ErrNoPod)
	}
	return append([]string{"nsenter", "--mount=" + n.MountNS, "--",
		"nsenter", "--net=" + netnsPath(p.Netns), "--"}, cmd...), nil
}

// Exec runs cmd in the node and returns its combined output.
func (l *Lab) Exec(ctx context.Context, node string, cmd ...string) ([]byte, error) {
	argv, err := l.NodeCommand(node, cmd...)
	if err != nil {
		return nil, err
	}
	return output(ctx, argv...)
}

// PodExec runs cmd in the pod and returns its combined output.
func (l *Lab) PodExec(ctx context.Context, node, pod string, cmd ...string) ([]byte, error) {
	argv, err := l.PodCommand(node, pod, cmd...)
	if err != nil {
		return nil, err
	}
	return output(ctx, argv...)
}

// KubectlCommand returns argv running the lab's kubectl as admin inside the
// underlay namespace (the only place the apiserver is reachable).
func (l *Lab) KubectlCommand(args ...string) []string {
	return append([]string{"nsenter", "--net=" + netnsPath(l.st.Underlay), "--",
		filepath.Join(l.cfg.BinDir, "kubectl"), "--kubeconfig=" + l.AdminKubeconfig()}, args...)
}

func lookPath(name string) (string, error) {
	for _, dir := range filepath.SplitList(os.Getenv("PATH") + ":/usr/sbin:/sbin:/usr/bin:/bin") {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", name, os.ErrNotExist)
}

// addNodesNoWait adds n nodes without waiting for any of them, so their
// agents (or kubelets) start in parallel, and returns their names.
func (l *Lab) addNodesNoWait(ctx context.Context, n int, pattern func(int) UnderlayKind, mixedUnderlay bool) ([]string, error) {
	var names []string
	for i := 0; i < n; i++ {
		opt := NodeOptions{NoWait: true}
		if mixedUnderlay {
			opt.Underlay = pattern(i + 1)
		}
		node, err := l.AddNode(ctx, opt)
		if err != nil {
			return names, err
		}
		names = append(names, node.Name)
	}
	return names, nil
}
