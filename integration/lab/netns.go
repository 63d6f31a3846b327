package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
)

const (
	netnsDir       = "/run/netns"
	underlayBridge = "br0"
	// UnderlayGateway is the underlay bridge's own address; the apiserver
	// listens on it.
	UnderlayGateway = "198.51.100.1"
	underlayPrefix  = 24
	natInsideRouter = "203.0.113.1"
	natInsideNode   = "203.0.113.2"
	maxNodeIndex    = 239 // 198.51.100.(10+i) must stay a host address
	// DefaultListenPort is the agents' WireGuard port (the agent's
	// default; the lab does not change it).
	DefaultListenPort = 51820
	// LabelLocation is the label the lab gives a node of a location
	// (mesh.LabelLocation; the lab does not import the core).
	LabelLocation = "wgmesh.io/location"
)

// run executes argv and returns a wrapped error carrying its output.
func run(ctx context.Context, argv ...string) error {
	_, err := output(ctx, argv...)
	return err
}

func output(ctx context.Context, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

func netnsPath(name string) string { return filepath.Join(netnsDir, name) }

func netnsExists(name string) bool {
	_, err := os.Stat(netnsPath(name))
	return err == nil
}

// addNetns creates a named network namespace with lo up. It fails if the
// name is taken: names carry the lab prefix, so a collision is a leftover
// that `up` should have removed.
func addNetns(ctx context.Context, name string) error {
	if err := run(ctx, "ip", "netns", "add", name); err != nil {
		return err
	}
	return run(ctx, "ip", "-n", name, "link", "set", "lo", "up")
}

// delNetns removes a named network namespace; a missing one is not an error.
func delNetns(ctx context.Context, name string) error {
	if name == "" || !netnsExists(name) {
		return nil
	}
	return run(ctx, "ip", "netns", "del", name)
}

// setupUnderlay creates the underlay namespace with its bridge. It has no
// route anywhere but the bridge's subnet: nothing the lab sends can leave.
func setupUnderlay(ctx context.Context, name string, ipv6 bool) error {
	if err := addNetns(ctx, name); err != nil {
		return err
	}
	var v6 [][]string
	if ipv6 {
		// No duplicate address detection: the lab owns the subnet, and a
		// tentative address cannot be bound (the apiserver listens on it).
		v6 = [][]string{{"ip", "-n", name, "addr", "add", fmt.Sprintf("%s/%d", UnderlayGatewayIPv6, underlayPrefixV6), "dev", underlayBridge, "nodad"}}
	}
	for _, argv := range append([][]string{
		{"ip", "-n", name, "link", "add", underlayBridge, "type", "bridge"},
		{"ip", "-n", name, "addr", "add", fmt.Sprintf("%s/%d", UnderlayGateway, underlayPrefix), "dev", underlayBridge},
		// Promiscuous, so a capture on the bridge sees the frames it
		// forwards between nodes, not only those addressed to itself.
		{"ip", "-n", name, "link", "set", underlayBridge, "promisc", "on", "up"},
	}, v6...) {
		if err := run(ctx, argv...); err != nil {
			return err
		}
	}
	return nil
}

// connectNode creates the node's namespace and its veth to the underlay
// bridge. The veth is created inside the underlay namespace, so no link ever
// appears in the host namespace and parallel labs cannot collide.
func connectNode(ctx context.Context, underlay string, n *Node) error {
	if n.NAT != nil {
		return connectNATNode(ctx, underlay, n)
	}
	if err := addNetns(ctx, n.Netns); err != nil {
		return err
	}
	mtu := n.MTU
	if mtu == 0 {
		mtu = 1500
	}
	m := strconv.Itoa(mtu)
	if n.Location != "" {
		if err := connectLocation(ctx, n, m); err != nil {
			return err
		}
	}
	argvs := [][]string{
		{"ip", "-n", underlay, "link", "add", n.Link, "mtu", m, "type", "veth", "peer", "name", "eth0", "mtu", m, "netns", n.Netns},
		{"ip", "-n", underlay, "link", "set", n.Link, "master", underlayBridge, "up"},
	}
	if n.Underlay != UnderlayIPv6Only {
		argvs = append(argvs, []string{"ip", "-n", n.Netns, "addr", "add", fmt.Sprintf("%s/%d", n.UnderlayIP, underlayPrefix), "dev", "eth0"})
	}
	if n.UnderlayIPv6 != "" {
		argvs = append(argvs, []string{"ip", "-n", n.Netns, "addr", "add", fmt.Sprintf("%s/%d", n.UnderlayIPv6, underlayPrefixV6), "dev", "eth0", "nodad"})
	}
	argvs = append(argvs, []string{"ip", "-n", n.Netns, "link", "set", "eth0", "up"})
	// A default route like a real node's, per family it has; the
	// underlay namespace routes nowhere, so this cannot leak traffic out
	// of the lab.
	if n.Underlay != UnderlayIPv6Only {
		argvs = append(argvs, []string{"ip", "-n", n.Netns, "route", "add", "default", "via", UnderlayGateway})
	}
	if n.UnderlayIPv6 != "" {
		argvs = append(argvs, []string{"ip", "-n", n.Netns, "-6", "route", "add", "default", "via", UnderlayGatewayIPv6})
	}
	for _, argv := range argvs {
		if err := run(ctx, argv...); err != nil {
			return err
		}
	}
	return nil
}

// connectLocation attaches the node (eth1, PrivateIP/24) to its location's
// network: a namespace with a bridge and no address of its own, made by
// the location's first node. Like the underlay it routes nowhere.
func connectLocation(ctx context.Context, n *Node, mtu string) error {
	if !netnsExists(n.LocationNetns) {
		if err := addNetns(ctx, n.LocationNetns); err != nil {
			return err
		}
		for _, argv := range [][]string{
			{"ip", "-n", n.LocationNetns, "link", "add", underlayBridge, "type", "bridge"},
			// Promiscuous, so a capture sees the frames it forwards.
			{"ip", "-n", n.LocationNetns, "link", "set", underlayBridge, "promisc", "on", "up"},
		} {
			if err := run(ctx, argv...); err != nil {
				return err
			}
		}
	}
	for _, argv := range [][]string{
		{"ip", "-n", n.LocationNetns, "link", "add", n.Link, "mtu", mtu, "type", "veth", "peer", "name", "eth1", "mtu", mtu, "netns", n.Netns},
		{"ip", "-n", n.LocationNetns, "link", "set", n.Link, "master", underlayBridge, "up"},
		{"ip", "-n", n.Netns, "addr", "add", n.PrivateIP + "/24", "dev", "eth1"},
		{"ip", "-n", n.Netns, "link", "set", "eth1", "up"},
	} {
		if err := run(ctx, argv...); err != nil {
			return err
		}
	}
	return nil
}

// Location returns the network namespace and bridge of a location's
// network, for captures.
func (l *Lab) Location(location string) (netnsName, bridge string) {
	return l.st.NetnsPrefix + "loc-" + location, underlayBridge
}

// connectNATNode puts the node behind a router namespace that masquerades
// 203.0.113.0/24 onto the underlay address of the node.
func connectNATNode(ctx context.Context, underlay string, n *Node) error {
	nat := n.NAT
	if err := addNetns(ctx, nat.Netns); err != nil {
		return err
	}
	if err := addNetns(ctx, n.Netns); err != nil {
		return err
	}
	mtu := n.MTU
	if mtu == 0 {
		mtu = 1500
	}
	m := strconv.Itoa(mtu)
	for _, argv := range [][]string{
		{"ip", "-n", underlay, "link", "add", nat.Link, "type", "veth", "peer", "name", "eth0", "netns", nat.Netns},
		{"ip", "-n", underlay, "link", "set", nat.Link, "master", underlayBridge, "up"},
		{"ip", "-n", nat.Netns, "addr", "add", fmt.Sprintf("%s/%d", nat.PublicIP, underlayPrefix), "dev", "eth0"},
		{"ip", "-n", nat.Netns, "link", "set", "eth0", "up"},
		{"ip", "-n", nat.Netns, "link", "add", "in0", "mtu", m, "type", "veth", "peer", "name", "eth0", "mtu", m, "netns", n.Netns},
		{"ip", "-n", nat.Netns, "addr", "add", natInsideRouter + "/24", "dev", "in0"},
		{"ip", "-n", nat.Netns, "link", "set", "in0", "up"},
		{"ip", "netns", "exec", nat.Netns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"},
		{"ip", "-n", n.Netns, "addr", "add", n.UnderlayIP + "/24", "dev", "eth0"},
		{"ip", "-n", n.Netns, "link", "set", "eth0", "up"},
		{"ip", "-n", n.Netns, "route", "add", "default", "via", natInsideRouter},
	} {
		if err := run(ctx, argv...); err != nil {
			return err
		}
	}
	// Masquerade what leaves towards the underlay, as a home router would.
	rules := "table ip wgmesh-lab-nat {\n" +
		" chain post { type nat hook postrouting priority srcnat; oifname \"eth0\" masquerade; }\n" +
		"}\n"
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", nat.Netns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nat rules in %s: %w: %s", nat.Netns, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// privateDirs are the host paths each node gets its own copy of, and the
// node-directory subdirectories that back them.
var privateDirs = []struct{ target, sub string }{
	{"/run/wireguard", "run-wireguard"},
	{"/run/wgmesh", "run-wgmesh"},
	{"/etc/cni/net.d", "cni-conf"},
	{"/opt/cni/bin", "cni-bin"},
	{"/var/lib/wgmesh", "var-lib-wgmesh"},
	{"/var/lib/cni", "var-lib-cni"},
}

// NodePath returns the host path that backs path inside the node's mount
// namespace, for the node-private directories (e.g. /etc/cni/net.d), or ""
// when path is not node-private.
func (n *Node) NodePath(path string) string {
	path = strings.Replace(filepath.Clean(path), "/var/run/", "/run/", 1)
	for _, d := range privateDirs {
		if path == d.target || strings.HasPrefix(path, d.target+"/") {
			return filepath.Join(n.Dir, d.sub, strings.TrimPrefix(path, d.target))
		}
	}
	return ""
}

// makeMountDir bind-mounts dir onto itself with private propagation: a mount
// namespace can only be pinned by a bind mount on a private mount (else the
// bind would propagate into the namespace it pins).
func makeMountDir(ctx context.Context, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := run(ctx, "mount", "--bind", dir, dir); err != nil {
		return err
	}
	return run(ctx, "mount", "--make-private", dir)
}

// createMountNS creates the node's persistent mount namespace: entered
// together with the node's network namespace it looks like a host of its
// own: private /run/wireguard, /etc/cni/net.d, /opt/cni/bin, /var/lib/wgmesh,
// /var/lib/cni, its own /run/netns for pod namespaces and a /sys showing the
// node's network devices.
func createMountNS(ctx context.Context, n *Node) error {
	var script strings.Builder
	script.WriteString("set -e\n")
	// Drop the copies of every host netns bind mount (other labs' included)
	// so this namespace pins none of them, then give the node its own.
	script.WriteString("umount --recursive --lazy /run/netns 2>/dev/null || true\n")
	script.WriteString("mount -t tmpfs -o mode=0755,size=1m wgmesh-lab-netns /run/netns\n")
	script.WriteString("umount --lazy /sys\nmount -t sysfs sysfs /sys\n")
	for _, d := range privateDirs {
		src := filepath.Join(n.Dir, d.sub)
		fmt.Fprintf(&script, "mount --bind %q %q\n", src, d.target)
	}
	if f, err := os.Create(n.MountNS); err != nil {
		return fmt.Errorf("create mount namespace file: %w", err)
	} else {
		f.Close()
	}
	return run(ctx, "nsenter", "--net="+netnsPath(n.Netns), "--",
		"unshare", "--mount="+n.MountNS, "--propagation", "private", "--",
		"/bin/sh", "-c", script.String())
}

// prepareNodeDirs creates the node's backing directories and the host mount
// points they cover. The mount points stay after `down`: other labs' nodes
// may have mounts on them, and an empty directory is harmless.
func prepareNodeDirs(n *Node) error {
	for _, d := range privateDirs {
		if err := os.MkdirAll(filepath.Join(n.Dir, d.sub), 0o755); err != nil {
			return fmt.Errorf("create node dir: %w", err)
		}
		if err := os.MkdirAll(d.target, 0o755); err != nil {
			return fmt.Errorf("create mount point %s: %w", d.target, err)
		}
	}
	return os.MkdirAll(netnsDir, 0o755)
}

// releaseMountNS unmounts the file pinning the node's mount namespace; the
// namespace (with the pod namespaces mounted in it) goes away once no
// process uses it.
func releaseMountNS(path string) error {
	if path == "" {
		return nil
	}
	err := syscall.Unmount(path, syscall.MNT_DETACH)
	if err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// nsInode returns the namespace inode behind a pinned namespace file.
func nsInode(path string) (uint64, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, false
	}
	// A file that is not (or no longer) a mounted nsfs file lives on the
	// state directory's filesystem; only nsfs inodes identify a namespace.
	var fs syscall.Statfs_t
	if err := syscall.Statfs(path, &fs); err != nil || fs.Type != nsfsMagic {
		return 0, false
	}
	return st.Ino, true
}

const nsfsMagic = 0x6e736673

// killInNamespaces SIGKILLs every process whose network or mount namespace
// is one of the given inodes (the lab's own namespaces) and waits for them
// to go. This catches what ran through `exec`/`pod-exec` and was left behind.
func killInNamespaces(inodes map[uint64]bool) {
	if len(inodes) == 0 {
		return
	}
	self := os.Getpid()
	var victims []Proc
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		for _, kind := range []string{"net", "mnt"} {
			link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, kind))
			if err != nil {
				continue
			}
			// "net:[4026532281]"
			i := strings.IndexByte(link, '[')
			ino, err := strconv.ParseUint(strings.TrimSuffix(link[i+1:], "]"), 10, 64)
			if i < 0 || err != nil || !inodes[ino] {
				continue
			}
			st, err := procStartTime(pid)
			if err != nil {
				break
			}
			victims = append(victims, Proc{PID: pid, StartTime: st})
			break
		}
	}
	for _, p := range victims {
		_ = syscall.Kill(p.PID, syscall.SIGKILL)
	}
	for _, p := range victims {
		waitGone(p, 5*time.Second)
	}
}

// netnsDialer returns a dial function whose sockets live in the named
// network namespace: the host reaches the apiserver, which only listens
// inside the underlay namespace, without any link into the host namespace.
// A socket belongs to the namespace it was created in, so only socket
// creation needs the namespace switch; the thread is locked meanwhile.
func netnsDialer(name string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			return nil, fmt.Errorf("get current netns: %w", err)
		}
		defer orig.Close()
		target, err := netns.GetFromPath(netnsPath(name))
		if err != nil {
			runtime.UnlockOSThread()
			return nil, fmt.Errorf("open netns %s: %w", name, err)
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			return nil, fmt.Errorf("enter netns %s: %w", name, err)
		}
		conn, dialErr := (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, network, addr)
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: the runtime then discards it when
			// this goroutine exits instead of reusing a thread stuck in
			// the wrong namespace.
			if conn != nil {
				conn.Close()
			}
			return nil, fmt.Errorf("return from netns %s: %w", name, err)
		}
		runtime.UnlockOSThread()
		return conn, dialErr
	}
}
