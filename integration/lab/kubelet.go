package lab

// The kubelet mode (`wgmesh-lab up --kubelet`): every node runs the real node
// stack — containerd 2.x with crun, the kubelet and kube-proxy — inside the
// node's network namespace and its own mount namespace; one
// kube-controller-manager (node IPAM hands out the podCIDRs) and one
// kube-scheduler run beside the apiserver. wgmesh itself is installed as users
// install it (kubectl apply -k deploy/overlays/lab): the DaemonSet's init
// container installs the CNI plugin and the agent writes the conflist, which
// turns the nodes Ready. What this machine needs for that is recorded in
// docs/real-node-lab.md.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/wgmesh/wgmesh/deploy"
)

const (
	// ClusterCIDR is the kube-controller-manager's --cluster-cidr; node IPAM
	// gives every node a /24 of it.
	ClusterCIDR = "10.244.0.0/16"
	// PauseImage and AgnhostImage are named exactly as kubelet/containerd and
	// the upstream e2e suite (k8s.io/kubernetes v1.37.2
	// test/utils/image/manifest.go) reference them.
	PauseImage   = "registry.k8s.io/pause:3.10.2"
	AgnhostImage = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
	// WgmeshImage is what deploy/overlays/lab points the DaemonSet at. The
	// .invalid domain can never resolve: a pull attempt fails at once.
	WgmeshImage = "wgmesh.invalid/wgmesh:lab"
	// pinnedLabel keeps containerd's and the kubelet's image GC off an image.
	pinnedLabel = "io.cri-containerd.pinned=pinned"
	// containerdSock is the socket inside the node's mount namespace.
	containerdSock = "/run/containerd/containerd.sock"
)

// kubeletDirs are the node-private directories the kubelet mode adds to
// privateDirs: the runtime's and the kubelet's state and the pod logs.
var kubeletDirs = []struct{ target, sub string }{
	{"/var/lib/containerd", "var-lib-containerd"},
	{"/run/containerd", "run-containerd"},
	{"/var/lib/kubelet", "var-lib-kubelet"},
	{"/var/log/pods", "var-log-pods"},
	{"/var/log/containers", "var-log-containers"},
}

// kernelTunables are the kernel-wide sysctls the kubelet insists on (it
// writes them when they differ: pkg/kubelet/cm setupKernelTunables). They are
// not the lab's to change on a shared machine, so each node's mount namespace
// shows the kubelet these values over the real /proc/sys files; the host's
// settings stay as they are.
var kernelTunables = map[string]string{
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

// kubeletBinaries are what the kubelet mode needs in BinDir beyond the
// default mode's.
var kubeletBinaries = []string{
	"kubelet", "kube-proxy", "kube-controller-manager", "kube-scheduler", "kubectl",
	"containerd", "containerd-shim-runc-v2", "ctr", "loopback", "portmap", "ocibuild", "agnhost",
	"install-cni", "wgmesh-lab",
}

func (l *Lab) checkKubeletBinaries() error {
	var missing []string
	for _, b := range kubeletBinaries {
		if fi, err := os.Stat(filepath.Join(l.cfg.BinDir, b)); err != nil || fi.Mode()&0o111 == 0 {
			missing = append(missing, filepath.Join(l.cfg.BinDir, b))
		}
	}
	// wireguard-go and wg: the control plane joins the mesh as a Peer
	// (controlpeer.go).
	for _, t := range []string{"busybox", "curl", "nc.openbsd", "wget", "ldd", "wireguard-go", "wg"} {
		if _, err := lookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if fi, err := os.Stat(ociRuntime()); err != nil || fi.Mode()&0o111 == 0 {
		missing = append(missing, ociRuntime())
	}
	if len(missing) > 0 {
		return fmt.Errorf("kubelet mode: missing executables: %s (integration/tools/build.sh, `go build -o BIN ./deploy/install-cni`, integration/scripts/deps.sh)", strings.Join(missing, ", "))
	}
	return nil
}

// kubeletAPIServerArgv is the apiserver of the kubelet mode: pods get
// ServiceAccount tokens (admission on, kube-controller-manager runs the token
// controllers) and the apiserver reaches kubelets for logs and exec.
func (l *Lab) kubeletAPIServerArgv(st *State) []string {
	var argv []string
	for _, a := range l.apiserverArgv(st) {
		switch {
		case a == "--disable-admission-plugins=ServiceAccount":
			continue
		case strings.HasPrefix(a, "--service-cluster-ip-range="):
			a = "--service-cluster-ip-range=" + serviceCIDRs(st)
		}
		argv = append(argv, a)
	}
	p := l.pki()
	return append(argv,
		"--kubelet-client-certificate="+p.path("admin.crt"),
		"--kubelet-client-key="+p.path("admin.key"),
		"--allow-privileged=true",
		// Node names do not resolve; the InternalIP (the kubelet's
		// --node-ip) always answers.
		"--kubelet-preferred-address-types=InternalIP",
	)
}

// serviceCIDRs is the apiserver's and kube-controller-manager's
// --service-cluster-ip-range: IPv4 first (the kubernetes Service's family).
func serviceCIDRs(st *State) string {
	if st.DualStack {
		return ServiceCIDR + "," + ServiceCIDRv6
	}
	return ServiceCIDR
}

// clusterCIDRs is kube-controller-manager's --cluster-cidr and
// kube-proxy's clusterCIDR: IPv4 first, so spec.podCIDRs[0] is IPv4.
func clusterCIDRs(st *State) string {
	if st.DualStack {
		return ClusterCIDR + "," + ClusterCIDRv6
	}
	return ClusterCIDR
}

// writeKubeconfig writes a kubeconfig for a client certificate issued by the
// lab CA (name.crt/.key in the pki dir).
func (l *Lab) writeKubeconfig(path, certName string) error {
	p := l.pki()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["lab"] = &clientcmdapi.Cluster{Server: APIServerURL(), CertificateAuthority: p.CAFile()}
	cfg.AuthInfos["user"] = &clientcmdapi.AuthInfo{ClientCertificate: p.path(certName + ".crt"), ClientKey: p.path(certName + ".key")}
	cfg.Contexts["lab"] = &clientcmdapi.Context{Cluster: "lab", AuthInfo: "user"}
	cfg.CurrentContext = "lab"
	return clientcmd.WriteToFile(*cfg, path)
}

// startControllers starts kube-controller-manager and kube-scheduler in the
// underlay namespace (next to the apiserver), both as admin.
func (l *Lab) startControllers(st *State) error {
	p := l.pki()
	kcm := []string{
		"nsenter", "--net=" + netnsPath(st.Underlay), "--",
		filepath.Join(l.cfg.BinDir, "kube-controller-manager"),
		"--kubeconfig=" + l.AdminKubeconfig(),
		"--leader-elect=false",
		"--allocate-node-cidrs=true",
		"--cluster-cidr=" + clusterCIDRs(st),
		"--service-cluster-ip-range=" + serviceCIDRs(st),
		"--service-account-private-key-file=" + p.path("sa.key"),
		"--root-ca-file=" + p.CAFile(),
		"--use-service-account-credentials=false",
		"--bind-address=127.0.0.1",
		"--cert-dir=" + filepath.Join(l.cfg.StateDir, "kcm-certs"),
		"--profiling=false",
		"--v=1",
	}
	if st.DualStack {
		// A /64 per node out of the /56 (design.md's address plan); the
		// single-family flag is refused with a dual-stack cluster-cidr.
		kcm = append(kcm, "--node-cidr-mask-size-ipv4=24", "--node-cidr-mask-size-ipv6=64")
	} else {
		kcm = append(kcm, "--node-cidr-mask-size=24")
	}
	proc, err := startDetached(kcm, l.logPath("kube-controller-manager"), os.Environ())
	if err != nil {
		return err
	}
	st.ControllerManager = &proc
	sched := []string{
		"nsenter", "--net=" + netnsPath(st.Underlay), "--",
		filepath.Join(l.cfg.BinDir, "kube-scheduler"),
		"--kubeconfig=" + l.AdminKubeconfig(),
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--profiling=false",
		"--v=1",
	}
	proc, err = startDetached(sched, l.logPath("kube-scheduler"), os.Environ())
	if err != nil {
		return err
	}
	st.Scheduler = &proc
	// The cluster DNS the kubelets hand to pods (clusterDNS); see
	// clusterdns.go for why the lab needs one.
	dns := []string{
		"nsenter", "--net=" + netnsPath(st.Underlay), "--",
		filepath.Join(l.cfg.BinDir, "wgmesh-lab"), "cluster-dns",
		"--kubeconfig=" + l.AdminKubeconfig(),
		"--listen=" + net.JoinHostPort(UnderlayGateway, strconv.Itoa(ClusterDNSPort)),
	}
	proc, err = startDetached(dns, l.logPath("cluster-dns"), os.Environ())
	if err != nil {
		return err
	}
	st.ClusterDNS = &proc
	return nil
}

// createKubeletMountNS is createMountNS for a node that runs containers: its
// /sys is the node's own (network devices) but keeps the host's cgroup v1
// hierarchies; the hybrid cgroup2 mount (/sys/fs/cgroup/unified) is dropped
// because crun refuses the hybrid layout; the kubelet's kernel tunables are
// shown over /proc/sys (kernelTunables).
func createKubeletMountNS(ctx context.Context, n *Node, dualStack bool) error {
	stash := filepath.Join(n.Dir, "cgroup-stash")
	tun := filepath.Join(n.Dir, "sysctl")
	if err := os.MkdirAll(stash, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", stash, err)
	}
	if err := os.MkdirAll(tun, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", tun, err)
	}
	var script strings.Builder
	script.WriteString("set -e\n")
	script.WriteString("umount --recursive --lazy /run/netns 2>/dev/null || true\n")
	script.WriteString("mount -t tmpfs -o mode=0755,size=1m wgmesh-lab-netns /run/netns\n")
	// A Kubernetes node forwards IPv4 (kubeadm's preflight insists): the
	// node provisioner's job, not the agent's, whose container sees /proc/sys
	// read-only (deploy/base/daemonset.yaml). This is the node's own netns.
	script.WriteString("echo 1 > /proc/sys/net/ipv4/ip_forward\n")
	if dualStack {
		// The same for IPv6 pods. New interfaces (the agent's bridge)
		// start without router advertisements: the agent's sysctlsFor
		// wants accept_ra=0 there and cannot write it itself.
		script.WriteString("echo 1 > /proc/sys/net/ipv6/conf/all/forwarding\n")
		script.WriteString("echo 0 > /proc/sys/net/ipv6/conf/default/accept_ra\n")
	}
	// A fresh sysfs shows the node's network devices (the kubelet and
	// cAdvisor read /sys/class/net); the cgroup mounts move over to it.
	fmt.Fprintf(&script, "mount --rbind /sys/fs/cgroup %q\n", stash)
	script.WriteString("umount --lazy /sys\nmount -t sysfs sysfs /sys\n")
	fmt.Fprintf(&script, "mount --move %q /sys/fs/cgroup\n", stash)
	script.WriteString("if mountpoint -q /sys/fs/cgroup/unified; then umount --lazy /sys/fs/cgroup/unified; fi\n")
	for _, d := range append(privateDirs[:len(privateDirs):len(privateDirs)], kubeletDirs...) {
		fmt.Fprintf(&script, "mount --bind %q %q\n", filepath.Join(n.Dir, d.sub), d.target)
	}
	for key, val := range kernelTunables {
		f := filepath.Join(tun, strings.ReplaceAll(key, "/", "."))
		if err := os.WriteFile(f, []byte(val+"\n"), 0o444); err != nil {
			return fmt.Errorf("write %s: %w", f, err)
		}
		fmt.Fprintf(&script, "mount --bind -o ro %q %q\n", f, "/proc/sys/"+key)
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

// cgroupV1Root is where the v1 hierarchies are mounted on the host.
const cgroupV1Root = "/sys/fs/cgroup"

// cgroupHierarchies lists the host's cgroup v1 hierarchy directories (not
// the hybrid cgroup2 mount).
func cgroupHierarchies() []string {
	entries, err := os.ReadDir(cgroupV1Root)
	if err != nil {
		return nil
	}
	var dirs []string
	for _, e := range entries {
		if !e.IsDir() || e.Name() == "unified" {
			continue
		}
		dir := filepath.Join(cgroupV1Root, e.Name())
		var fs syscall.Statfs_t
		// 0x27e0eb: CGROUP_SUPER_MAGIC (v1).
		if err := syscall.Statfs(dir, &fs); err != nil || fs.Type != 0x27e0eb {
			continue
		}
		dirs = append(dirs, dir)
	}
	return dirs
}

// makeCgroupRoot creates the node's kubelet cgroupRoot in every v1
// hierarchy (the kubelet refuses a root that does not exist). cpuset needs
// its cpus/mems filled in before anything can join it.
func makeCgroupRoot(root string) error {
	for _, h := range cgroupHierarchies() {
		parent := h
		for _, part := range strings.Split(strings.Trim(root, "/"), "/") {
			dir := filepath.Join(parent, part)
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return fmt.Errorf("create cgroup %s: %w", dir, err)
			}
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				if cur, err := os.ReadFile(filepath.Join(dir, f)); err == nil && strings.TrimSpace(string(cur)) == "" {
					val, err := os.ReadFile(filepath.Join(parent, f))
					if err != nil {
						return fmt.Errorf("read %s: %w", filepath.Join(parent, f), err)
					}
					if err := os.WriteFile(filepath.Join(dir, f), val, 0o644); err != nil {
						return fmt.Errorf("write %s: %w", filepath.Join(dir, f), err)
					}
				}
			}
			parent = dir
		}
	}
	return nil
}

// removeCgroupRoot SIGKILLs every process left under the node's cgroupRoot
// (pod containers live in their own namespaces, so killInNamespaces misses
// them) and removes the cgroups, deepest first. Kill and rmdir repeat until
// nothing is left: a v1 rmdir answers EBUSY for a while after the last task
// was killed (seen once in CI, in one hierarchy only), and a runtime dying
// beside us can still create a child cgroup after a walk.
func removeCgroupRoot(root string) error {
	if root == "" {
		return nil
	}
	hs := cgroupHierarchies()
	// 20 s: well past the few hundred ms a killed task takes to leave its
	// cgroup on a loaded box; a cgroup still busy by then is a real leak.
	deadline := time.Now().Add(20 * time.Second)
	for {
		var busy []error
		for _, h := range hs {
			top := filepath.Join(h, root)
			dirs := cgroupDirs(top)
			for _, d := range dirs {
				for _, pid := range cgroupTasks(d) {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
			for i := len(dirs) - 1; i >= 0; i-- {
				if err := syscall.Rmdir(dirs[i]); err != nil && !errors.Is(err, syscall.ENOENT) {
					busy = append(busy, fmt.Errorf("remove cgroup %s (tasks %v): %w", dirs[i], cgroupTasks(dirs[i]), err))
				}
			}
			// The per-lab parent, once its last node is gone.
			_ = syscall.Rmdir(filepath.Dir(top))
		}
		if len(busy) == 0 || time.Now().After(deadline) {
			return errors.Join(busy...)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cgroupDirs lists top and every cgroup below it, parents before children.
func cgroupDirs(top string) []string {
	var dirs []string
	_ = filepath.WalkDir(top, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	return dirs
}

// cgroupTasks reads the thread ids in a v1 cgroup ("tasks" also lists the
// threads of a group whose leader already exited, which cgroup.procs hides).
func cgroupTasks(dir string) []int {
	data, _ := os.ReadFile(filepath.Join(dir, "tasks"))
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			pids = append(pids, pid)
		}
	}
	return pids
}

// containerdConfig is the node's containerd 2.x config (version 3): crun as
// the runtime with its state inside the node's private /run/containerd, the
// CRI's oom_score_adj restricted (lowering it is denied on this machine), the
// pause image as the pinned sandbox image and the node-private CNI dirs.
func containerdConfig() string {
	return `version = 3
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "` + containerdSock + `"

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "oci"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.oci]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.oci.options]
        BinaryName = "` + ociRuntime() + `"
        Root = "/run/containerd/oci-runtime"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/opt/cni/bin"]
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1

[plugins.'io.containerd.cri.v1.images']
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "` + PauseImage + `"
`
}

// kubeletConfig is the node's KubeletConfiguration.
func (l *Lab) kubeletConfig(n *Node) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: %s
# This machine is on cgroup v1; kubelet >= 1.35 refuses v1 unless told.
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%s
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %s}
authorization: {mode: AlwaysAllow}
clusterDomain: cluster.local
clusterDNS: [%s]
resolvConf: /etc/resolv.conf
# Imported images exist nowhere else: never garbage-collect them, and never
# evict for a host disk that other labs share.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 50Mi
  nodefs.available: "1%%"
  imagefs.available: "1%%"
  nodefs.inodesFree: "1%%"
serializeImagePulls: false
maxPods: 110
registerNode: true
nodeStatusUpdateFrequency: 5s
`, n.CgroupRoot, containerdSock, kubeletAddress(n), l.pki().CAFile(), UnderlayGateway)
}

// kubeletAddress is where the kubelet serves: both families on a node with
// an IPv6 underlay address (the apiserver dials the first InternalIP, IPv6
// on a node that lists it first).
func kubeletAddress(n *Node) string {
	if n.UnderlayIPv6 != "" {
		return "'::'"
	}
	return n.UnderlayIP
}

func (l *Lab) kubeProxyConfig(n *Node, mode, clusterCIDR string) string {
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: %s
hostnameOverride: %s
clusterCIDR: %s
clientConnection:
  kubeconfig: %s
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 0.0.0.0:10256
# conntrack limits are kernel-wide (or the host's); leave them alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, mode, n.Name, clusterCIDR, filepath.Join(n.Dir, "kube-proxy.kubeconfig"))
}

// nodeArgv runs argv inside the node's network and mount namespaces.
func nodeArgv(n *Node, argv ...string) []string {
	return append([]string{"nsenter", "--net=" + netnsPath(n.Netns), "--mount=" + n.MountNS, "--"}, argv...)
}

// nodeEnv: the node's daemons find containerd-shim-runc-v2 and ctr in BinDir.
func (l *Lab) nodeEnv() []string {
	env := agentEnv()
	for i, kv := range env {
		if strings.HasPrefix(kv, "PATH=") {
			env[i] = "PATH=" + l.cfg.BinDir + ":" + strings.TrimPrefix(kv, "PATH=")
			return env
		}
	}
	return append(env, "PATH="+l.cfg.BinDir+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
}

// ociRuntime is the OCI runtime binary containerd's runc shim drives:
// Debian's runc by default, WGMESH_LAB_OCI_RUNTIME overrides it (e.g.
// /usr/bin/crun). See docs/real-node-lab.md for why.
func ociRuntime() string {
	if r := os.Getenv("WGMESH_LAB_OCI_RUNTIME"); r != "" {
		return r
	}
	return "/usr/sbin/runc"
}

// kubeProxyMode is nftables (the lab's kernel and nft support it); the
// WGMESH_LAB_PROXY_MODE environment variable overrides it (iptables).
func kubeProxyMode() string {
	if m := os.Getenv("WGMESH_LAB_PROXY_MODE"); m != "" {
		return m
	}
	return "nftables"
}

// setupKubeletNode brings up the node stack of an added node: mount
// namespace, CNI helper plugins, containerd (with the lab's images imported
// and pinned), kubelet and kube-proxy. The Node object is the kubelet's.
func (l *Lab) setupKubeletNode(ctx context.Context, st *State, n *Node, save func() error) error {
	for _, d := range kubeletDirs {
		if err := os.MkdirAll(filepath.Join(n.Dir, d.sub), 0o755); err != nil {
			return fmt.Errorf("create node dir: %w", err)
		}
		if err := os.MkdirAll(d.target, 0o755); err != nil {
			return fmt.Errorf("create mount point %s: %w", d.target, err)
		}
	}
	if err := createKubeletMountNS(ctx, n, st.DualStack); err != nil {
		return err
	}
	// containerd's CRI calls loopback for every sandbox; portmap serves
	// hostPorts when the agent's conflist chains it.
	for _, b := range []string{"loopback", "portmap"} {
		if err := installCNI(filepath.Join(l.cfg.BinDir, b), filepath.Join(n.NodePath("/opt/cni/bin"), b)); err != nil {
			return err
		}
	}
	n.CgroupRoot = "/wgmesh-lab-" + st.Name + "/" + n.Name
	if err := save(); err != nil {
		return err
	}
	if err := makeCgroupRoot(n.CgroupRoot); err != nil {
		return err
	}
	files := map[string]string{
		"containerd.toml": containerdConfig(),
		"kubelet.yaml":    l.kubeletConfig(n),
		"kube-proxy.yaml": l.kubeProxyConfig(n, kubeProxyMode(), clusterCIDRs(st)),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(n.Dir, name), []byte(data), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	p := l.pki()
	if err := p.issueClient("kubelet-"+n.Name, "system:node:"+n.Name, []string{"system:nodes"}); err != nil {
		return err
	}
	if err := l.writeKubeconfig(filepath.Join(n.Dir, "kubelet.kubeconfig"), "kubelet-"+n.Name); err != nil {
		return err
	}
	if err := p.issueClient("kube-proxy-"+n.Name, "system:kube-proxy", nil); err != nil {
		return err
	}
	if err := l.writeKubeconfig(filepath.Join(n.Dir, "kube-proxy.kubeconfig"), "kube-proxy-"+n.Name); err != nil {
		return err
	}
	proc, err := startDetached(nodeArgv(n, filepath.Join(l.cfg.BinDir, "containerd"), "--config="+filepath.Join(n.Dir, "containerd.toml")),
		l.logPath("containerd-"+n.Name), l.nodeEnv())
	if err != nil {
		return err
	}
	n.Containerd = &proc
	if err := save(); err != nil {
		return err
	}
	if err := l.waitContainerd(ctx, n, time.Minute); err != nil {
		return err
	}
	if err := l.importImages(ctx, n); err != nil {
		return err
	}
	proc, err = startDetached(nodeArgv(n, filepath.Join(l.cfg.BinDir, "kubelet"),
		"--config="+filepath.Join(n.Dir, "kubelet.yaml"),
		"--kubeconfig="+filepath.Join(n.Dir, "kubelet.kubeconfig"),
		"--hostname-override="+n.Name,
		// Both families on a dual-homed node, in the order its Node lists
		// them (the first is the endpoint the agent publishes).
		"--node-ip="+strings.Join(n.InternalIPs(), ","),
		"--v=1",
	), l.logPath("kubelet-"+n.Name), l.nodeEnv())
	if err != nil {
		return err
	}
	n.Kubelet = &proc
	if err := save(); err != nil {
		return err
	}
	proc, err = startDetached(nodeArgv(n, filepath.Join(l.cfg.BinDir, "kube-proxy"),
		"--config="+filepath.Join(n.Dir, "kube-proxy.yaml"),
		"--v=1",
	), l.logPath("kube-proxy-"+n.Name), l.nodeEnv())
	if err != nil {
		return err
	}
	n.KubeProxy = &proc
	return save()
}

// waitContainerd waits until ctr can talk to the node's containerd.
func (l *Lab) waitContainerd(ctx context.Context, n *Node, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := output(ctx, l.ctrArgv(n, "version")...)
		if err == nil {
			return nil
		}
		if n.Containerd == nil || !n.Containerd.Alive() {
			return fmt.Errorf("containerd on %s exited; last log lines:\n%s", n.Name, tailFile(l.logPath("containerd-"+n.Name), 20))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd on %s not answering after %s: %w", n.Name, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (l *Lab) ctrArgv(n *Node, args ...string) []string {
	return nodeArgv(n, append([]string{filepath.Join(l.cfg.BinDir, "ctr"), "--address=" + containerdSock, "--namespace=k8s.io"}, args...)...)
}

// buildImages writes the lab's image archives (once per lab) with ocibuild:
// pause (agnhost's pause subcommand, a Go pause), agnhost (with busybox as
// /bin/sh, which the e2e suite execs into) and wgmesh (deploy/Dockerfile's
// contents: the binaries deploy/image-binaries.txt lists, on an empty base).
func (l *Lab) buildImages(ctx context.Context) (map[string]string, error) {
	return BuildImages(ctx, l.cfg.BinDir, filepath.Join(l.cfg.StateDir, "images"))
}

// BuildImages writes the lab's image archives into dir (those already there
// are kept) from the binaries in binDir and returns each reference's
// archive: the lab's images, for tests that check what is in them.
func BuildImages(ctx context.Context, binDir, dir string) (map[string]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	busybox, err := lookPath("busybox")
	if err != nil {
		return nil, err
	}
	bin := func(b string) string { return filepath.Join(binDir, b) }
	tools, err := shellTools(ctx, busybox)
	if err != nil {
		return nil, err
	}
	wgetrc := filepath.Join(dir, "wgetrc")
	if err := os.WriteFile(wgetrc, []byte(imageWgetrc), 0o644); err != nil {
		return nil, fmt.Errorf("write %s: %w", wgetrc, err)
	}
	tools = append(tools, "/etc/wgetrc="+wgetrc)
	images := map[string][]string{
		PauseImage:   {"-entrypoint=/agnhost,pause", "-user=65535:65535", "/agnhost=" + bin("agnhost")},
		AgnhostImage: append([]string{"-entrypoint=/agnhost", "/agnhost=" + bin("agnhost")}, tools...),
		WgmeshImage: {"-entrypoint=/wgmesh-agent", "-user=0:0",
			"/wgmesh-agent=" + bin("wgmesh-agent"), "/wgmesh=" + bin("wgmesh-cni"), "/install-cni=" + bin("install-cni")},
	}
	if _, err := os.Stat(bin("wgmeshctl")); err == nil {
		images[WgmeshImage] = append(images[WgmeshImage], "/wgmeshctl="+bin("wgmeshctl"))
	}
	out := map[string]string{}
	for ref, args := range images {
		file := filepath.Join(dir, strings.NewReplacer("/", "_", ":", "_").Replace(ref)+".tar")
		if _, err := os.Stat(file); err != nil {
			argv := append([]string{bin("ocibuild"), "-o", file, "-ref", ref}, args...)
			if err := run(ctx, argv...); err != nil {
				return nil, err
			}
		}
		out[ref] = file
	}
	return out, nil
}

// busyboxApplets are linked in the agnhost image as the real image's base
// provides them: the e2e suite runs `/bin/sh -c '... curl ...'` in agnhost
// containers, and tests and people use the usual tools there.
var busyboxApplets = []string{"cat", "ls", "sleep", "ip", "hostname", "ps", "grep",
	"ping", "timeout", "test", "echo", "env", "mkdir", "rm", "cp", "mv", "touch", "date", "sed", "awk", "head", "tail", "wc", "tr", "cut",
	// Services specs loop with `for i in $(seq 1 150); do wget ...` and check
	// ExternalName Services with nslookup.
	"seq", "nslookup", "sort", "uniq", "xargs", "true", "false", "printf", "expr", "tee", "id", "pwd",
	"basename", "dirname", "stat", "uname", "kill", "netstat", "which",
	// "should be rejected for evicted pods" fills its 5Mi ephemeral-storage
	// limit with dd; without dd the pod is never evicted.
	"dd"}

// imageHostTools are host binaries the agnhost image carries, as the real
// image's base does: curl (the upstream e2e suite execs it for every HTTP
// probe), a netcat with UDP (its UDP probes; busybox's nc has no -u), dash
// as /bin/sh (Debian's static busybox sh runs its own applets before
// anything on PATH, so `nc` under it would be busybox's nc again) and GNU
// wget: the Services specs run `wget -q -O - -T 1 URL`, and Debian 12's
// busybox 1.35 is built without FEATURE_WGET_TIMEOUT, so its getopt writes
// -T's value through a NULL pointer: every such wget segfaults (gdb: SIGSEGV
// at address 0 while parsing options; `--timeout=1` or no -T do not crash).
var imageHostTools = map[string]string{"/usr/bin/curl": "curl", "/usr/bin/nc": "nc.openbsd", "/bin/sh": "dash", "/usr/bin/wget": "wget"}

// imageWgetrc is the agnhost image's /etc/wgetrc (GNU wget's system file):
// one try per call, as busybox's wget (the real image's) behaves. GNU wget
// retries a timed-out request up to 20 times with growing waits, which would
// turn the specs' 1-second probes into minutes.
const imageWgetrc = "tries = 1\n"

// shellTools returns ocibuild arguments adding busybox (static) with its
// applets under /bin, and imageHostTools with the shared libraries ldd names.
func shellTools(ctx context.Context, busybox string) ([]string, error) {
	args := []string{"/bin/busybox=" + busybox}
	for _, a := range busyboxApplets {
		args = append(args, "/bin/"+a+"->busybox")
	}
	libs := map[string]bool{}
	for dst, name := range imageHostTools {
		src, err := lookPath(name)
		if err != nil {
			return nil, fmt.Errorf("agnhost image: %w (integration/scripts/deps.sh installs it)", err)
		}
		out, err := output(ctx, "ldd", src)
		if err != nil {
			return nil, err
		}
		args = append(args, dst+"="+src)
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			// "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or
			// "/lib64/ld-linux-x86-64.so.2 (0x...)"
			switch {
			case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
				libs[f[2]] = true
			case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
				libs[f[0]] = true
			}
		}
	}
	for lib := range libs {
		args = append(args, lib+"="+lib)
	}
	return args, nil
}

// importImages imports the lab's images into the node's containerd (k8s.io
// namespace, where the CRI looks) and pins them.
func (l *Lab) importImages(ctx context.Context, n *Node) error {
	images, err := l.buildImages(ctx)
	if err != nil {
		return err
	}
	for ref, file := range images {
		if err := run(ctx, l.ctrArgv(n, "images", "import", file)...); err != nil {
			return err
		}
		if err := run(ctx, l.ctrArgv(n, "images", "label", normalizeRef(ref), pinnedLabel)...); err != nil {
			return err
		}
	}
	return nil
}

// normalizeRef spells a reference as containerd stores it
// (docker.io/library/ for bare names).
func normalizeRef(ref string) string {
	first, _, _ := strings.Cut(ref, "/")
	if !strings.Contains(ref, "/") {
		return "docker.io/library/" + ref
	}
	if !strings.ContainsAny(first, ".:") && first != "localhost" {
		return "docker.io/" + ref
	}
	return ref
}

// stopKubeletNode stops the node stack (kube-proxy, kubelet, containerd)
// and everything under the node's cgroupRoot.
func stopKubeletNode(n *Node) error {
	var errs []error
	for _, p := range []**Proc{&n.KubeProxy, &n.Kubelet, &n.Containerd} {
		if *p == nil {
			continue
		}
		if err := (*p).stop(syscall.SIGTERM, 10*time.Second); err != nil {
			errs = append(errs, err)
			continue
		}
		*p = nil
	}
	if err := removeCgroupRoot(n.CgroupRoot); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// upKubelet is Up's second half in the kubelet mode: nodes (each kubelet
// registers its Node; node IPAM gives it a podCIDR), then wgmesh installed
// with `kubectl apply -k deploy/overlays/lab`, then the nodes turn Ready once
// their agent wrote the conflist; then the pods.
func (l *Lab) upKubelet(ctx context.Context, opt UpOptions, start time.Time) error {
	log := l.cfg.Log
	names, err := l.addNodesNoWait(ctx, opt.Nodes, kubeletUnderlayFor, opt.DualStack && opt.IPv6Underlay)
	if err != nil {
		return err
	}
	for _, name := range names {
		if err := l.waitNodeRegistered(ctx, name, 2*time.Minute); err != nil {
			return err
		}
	}
	log.Info("nodes registered by their kubelets", "nodes", len(names), "after", time.Since(start).Round(time.Millisecond))
	if err := l.ApplyLabOverlay(ctx); err != nil {
		return err
	}
	for _, name := range names {
		if err := l.WaitAgentReady(ctx, name, 3*time.Minute); err != nil {
			return err
		}
		if err := l.WaitNodeReady(ctx, name, 2*time.Minute); err != nil {
			return err
		}
	}
	log.Info("nodes ready", "after", time.Since(start).Round(time.Millisecond))
	if err := l.joinControlPlane(ctx); err != nil {
		return err
	}
	if err := l.waitControlPlaneAccepted(ctx, time.Minute); err != nil {
		return err
	}
	log.Info("control plane on the pod network", "peer", ControlPlanePeer, "address", ControlPlaneTunnelIP, "after", time.Since(start).Round(time.Millisecond))
	for _, name := range names {
		for j := 0; j < opt.Pods; j++ {
			if _, err := l.AddPod(ctx, name); err != nil {
				return err
			}
		}
	}
	log.Info("lab up", "mode", "kubelet", "nodes", opt.Nodes, "pods-per-node", opt.Pods, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// dualStackOverlay is deploy/overlays/lab for a dual-stack cluster: the
// agents' cluster-cidrs get the IPv6 range too (fail-closed and never
// masqueraded for both families). The environment variable overrides the
// shared config file (flag > env > file).
const dualStackOverlay = `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../lab
patches:
  - target: {kind: DaemonSet, name: wgmesh-agent}
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {name: WGMESH_CLUSTER_CIDRS, value: "` + ClusterCIDRs + "," + ClusterCIDRv6 + `"}
`

// ApplyLabOverlay runs `kubectl apply -k deploy/overlays/lab` on the files
// embedded in package deploy (written out under the state dir).
func (l *Lab) ApplyLabOverlay(ctx context.Context) error {
	if err := l.Load(); err != nil {
		return err
	}
	overlay, err := writeDeployFiles(filepath.Join(l.cfg.StateDir, "deploy"), l.st.DualStack)
	if err != nil {
		return err
	}
	if err := l.putServicesEndpoint(ctx); err != nil {
		return err
	}
	l.cfg.Log.Info("kubectl apply -k", "overlay", overlay)
	out, err := output(ctx, l.KubectlCommand("apply", "-k", overlay)...)
	if err != nil {
		return err
	}
	l.cfg.Log.Info("applied", "output", strings.TrimSpace(string(out)))
	return nil
}

// putServicesEndpoint creates the ConfigMap the DaemonSet reads its
// apiserver address from (deploy/base/daemonset.yaml, envFrom), as an
// operator does before installing: the agents then reach the apiserver
// directly, not through the kubernetes Service and kube-proxy, which after
// an apiserver restart kept the ClusterIP rejected for 45 s (the soak's
// node removal then went unseen past its bound).
func (l *Lab) putServicesEndpoint(ctx context.Context) error {
	c, err := l.Admin()
	if err != nil {
		return err
	}
	const ns = "wgmesh-system"
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "kubernetes-services-endpoint", Namespace: ns},
		Data: map[string]string{
			"KUBERNETES_SERVICE_HOST": UnderlayGateway,
			"KUBERNETES_SERVICE_PORT": fmt.Sprint(apiserverPort),
		},
	}
	if _, err := c.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create configmap %s/%s: %w", ns, cm.Name, err)
	}
	return nil
}

// writeDeployFiles writes deploy/base and deploy/overlays/lab under dir and
// returns the overlay to apply: overlays/lab, or in a dual-stack lab
// overlays/lab-dual-stack (dualStackOverlay) on top of it.
func writeDeployFiles(dir string, dualStack bool) (string, error) {
	err := fs.WalkDir(deploy.LabOverlay, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(deploy.LabOverlay, path)
		if err != nil {
			return err
		}
		dst := filepath.Join(dir, path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		return os.WriteFile(dst, data, 0o644)
	})
	if err != nil {
		return "", fmt.Errorf("write deploy files: %w", err)
	}
	overlay := filepath.Join(dir, "overlays", "lab")
	if !dualStack {
		return overlay, nil
	}
	// As a user turns a cluster dual-stack: one more overlay on top.
	overlay = filepath.Join(dir, "overlays", "lab-dual-stack")
	if err := os.MkdirAll(overlay, 0o755); err != nil {
		return "", fmt.Errorf("write deploy files: %w", err)
	}
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(dualStackOverlay), 0o644); err != nil {
		return "", fmt.Errorf("write deploy files: %w", err)
	}
	return overlay, nil
}

// waitNodeRegistered waits for the kubelet's Node object and its podCIDR
// (kube-controller-manager's node IPAM), and records the podCIDR.
func (l *Lab) waitNodeRegistered(ctx context.Context, name string, timeout time.Duration) error {
	if err := l.Load(); err != nil {
		return err
	}
	c, err := l.Admin()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	var last string
	for {
		node, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		switch {
		case err != nil:
			last = err.Error()
		case len(node.Spec.PodCIDRs) == 0:
			last = "registered, no podCIDR yet"
		case l.st.DualStack && len(node.Spec.PodCIDRs) < 2:
			last = fmt.Sprintf("registered with podCIDRs %v, want one of each family", node.Spec.PodCIDRs)
		default:
			return l.withState(func(st *State, save func() error) error {
				if n, ok := st.Nodes[name]; ok {
					// kube-controller-manager allocates in --cluster-cidr
					// order: IPv4, then IPv6.
					n.PodCIDR = node.Spec.PodCIDRs[0]
					if len(node.Spec.PodCIDRs) > 1 {
						n.PodCIDRv6 = node.Spec.PodCIDRs[1]
					}
				}
				return nil
			})
		}
		n := l.st.Nodes[name]
		if n == nil || n.Kubelet == nil || !n.Kubelet.Alive() {
			return fmt.Errorf("kubelet on %s exited; last log lines:\n%s", name, tailFile(l.logPath("kubelet-"+name), 20))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s: not registered with a podCIDR after %s (last: %s); see %s", name, timeout, last, l.logPath("kubelet-"+name))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// WaitNodeReady waits until the Node's Ready condition is True.
func (l *Lab) WaitNodeReady(ctx context.Context, name string, timeout time.Duration) error {
	c, err := l.Admin()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	var last string
	for {
		node, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			for _, cond := range node.Status.Conditions {
				if cond.Type == corev1.NodeReady {
					if cond.Status == corev1.ConditionTrue {
						return nil
					}
					last = cond.Reason + ": " + cond.Message
				}
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s not Ready after %s (last: %s)", name, timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// agentContainerPIDs returns the pids of the DaemonSet agent on the node:
// processes in the node's network namespace (the agent is hostNetwork)
// whose argv[0] is the image's /wgmesh-agent.
func agentContainerPIDs(n *Node) []Proc {
	ino, ok := nsInode(netnsPath(n.Netns))
	if !ok {
		return nil
	}
	want := fmt.Sprintf("net:[%d]", ino)
	var out []Proc
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); err != nil || link != want {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		argv0, _, _ := strings.Cut(string(cmdline), "\x00")
		if argv0 != "/wgmesh-agent" {
			continue
		}
		st, err := procStartTime(pid)
		if err != nil {
			continue
		}
		out = append(out, Proc{PID: pid, StartTime: st})
	}
	return out
}

// killAgentContainer SIGKILLs the node's DaemonSet agent (a crash); its
// kubelet restarts the container.
func killAgentContainer(n *Node) error {
	procs := agentContainerPIDs(n)
	if len(procs) == 0 {
		return fmt.Errorf("agent on %s is not running", n.Name)
	}
	for _, p := range procs {
		if err := p.stop(syscall.SIGKILL, 5*time.Second); err != nil {
			return err
		}
	}
	return nil
}

// waitAgentContainer waits until the kubelet has the agent running again
// (after kill-agent the restart back-off starts at 10 s).
func waitAgentContainer(ctx context.Context, n *Node, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for len(agentContainerPIDs(n)) == 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("agent on %s not restarted by its kubelet within %s", n.Name, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}
