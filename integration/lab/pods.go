package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// PodNamespace is the Kubernetes namespace the lab's pods pretend to live in
// (passed to the plugin as K8S_POD_NAMESPACE like a runtime would).
const PodNamespace = "default"

// AddPod creates a pod on the node: a network namespace (inside the node's
// mount namespace, like a runtime's /run/netns/cni-*) attached by the node's
// CNI configuration through libcni, run inside the node's namespaces. Its
// Pod object (namespace "default", no labels) is published as a kubelet
// would.
func (l *Lab) AddPod(ctx context.Context, node string) (*Pod, error) {
	return l.AddPodWith(ctx, node, PodOptions{})
}

// AddPodWith is AddPod with the Pod object's namespace, labels and ports.
func (l *Lab) AddPodWith(ctx context.Context, node string, opt PodOptions) (*Pod, error) {
	var pod *Pod
	err := l.withState(func(st *State, save func() error) error {
		n, ok := st.Nodes[node]
		if !ok {
			return fmt.Errorf("node %q: %w", node, ErrNoNode)
		}
		if st.Kubelet {
			p, err := l.addKubeletPod(ctx, n, opt, save)
			pod = p
			return err
		}
		name := fmt.Sprintf("p%d", n.NextPod)
		n.NextPod++
		p := &Pod{
			Name:        name,
			Netns:       "pod-" + name,
			ContainerID: fmt.Sprintf("wgmeshlab-%s-%s-%s", st.Name, n.Name, name),
			Namespace:   opt.Namespace,
		}
		n.Pods[name] = p
		if err := save(); err != nil {
			return err
		}
		// A pod that fails to attach is removed again, like a runtime
		// tears down a sandbox whose network setup failed.
		attached := false
		defer func() {
			if attached {
				return
			}
			_, _ = l.cniCall(ctx, n, p, "del")
			_ = l.nodeRun(ctx, n, "ip", "netns", "del", p.Netns)
			delete(n.Pods, name)
		}()
		if err := l.nodeRun(ctx, n, "ip", "netns", "add", p.Netns); err != nil {
			return err
		}
		if err := l.nodeRun(ctx, n, "ip", "-n", p.Netns, "link", "set", "lo", "up"); err != nil {
			return err
		}
		res, err := l.cniCall(ctx, n, p, "add")
		if err != nil {
			return fmt.Errorf("attach pod %s/%s: %w", n.Name, name, err)
		}
		p.IP, p.IPv6 = res.IP, res.IPv6
		if st.DualStack && p.IPv6 == "" {
			return fmt.Errorf("attach pod %s/%s in a dual-stack lab: cni result has no IPv6 address: %s", n.Name, name, res.Result)
		}
		if err := l.publishPod(ctx, n, p, opt); err != nil {
			return fmt.Errorf("publish pod %s/%s: %w", n.Name, name, err)
		}
		attached = true
		pod = p
		l.cfg.Log.Info("pod attached", "node", n.Name, "pod", name, "ip", p.IP, "ipv6", p.IPv6)
		return nil
	})
	return pod, err
}

// RemovePod detaches the pod through CNI DEL and removes its namespace.
func (l *Lab) RemovePod(ctx context.Context, node, pod string) error {
	return l.withState(func(st *State, save func() error) error {
		n, ok := st.Nodes[node]
		if !ok {
			return fmt.Errorf("node %q: %w", node, ErrNoNode)
		}
		p, ok := n.Pods[pod]
		if !ok {
			return fmt.Errorf("pod %s/%s: %w", node, pod, ErrNoPod)
		}
		if st.Kubelet {
			if err := l.removeKubeletPod(ctx, n, p); err != nil {
				return err
			}
			delete(n.Pods, pod)
			return nil
		}
		if err := l.unpublishPod(ctx, n, p); err != nil {
			return err
		}
		if _, err := l.cniCall(ctx, n, p, "del"); err != nil {
			return fmt.Errorf("detach pod %s/%s: %w", node, pod, err)
		}
		if err := l.nodeRun(ctx, n, "ip", "netns", "del", p.Netns); err != nil {
			return err
		}
		delete(n.Pods, pod)
		return nil
	})
}

func (l *Lab) nodeRun(ctx context.Context, n *Node, cmd ...string) error {
	argv := append([]string{"nsenter", "--net=" + netnsPath(n.Netns), "--mount=" + n.MountNS, "--"}, cmd...)
	return run(ctx, argv...)
}

// cniCall re-executes the lab binary's hidden `cni` command inside the
// node's namespaces, so the plugin sees exactly what it would see when a
// container runtime on that node called it.
func (l *Lab) cniCall(ctx context.Context, n *Node, p *Pod, action string) (*CNIResponse, error) {
	req := CNIRequest{
		Action:      action,
		ContainerID: p.ContainerID,
		Netns:       netnsPath(p.Netns),
		IfName:      "eth0",
		PodName:     p.KubeName(n.Name),
		PodNS:       p.KubeNamespace(),
	}
	argv := []string{"nsenter", "--net=" + netnsPath(n.Netns), "--mount=" + n.MountNS, "--",
		l.cfg.LabBinary, "cni", "--request", req.encode()}
	out, err := output(ctx, argv...)
	if err != nil {
		return nil, err
	}
	var resp CNIResponse
	// The last line is the JSON response; anything before is the plugin's
	// stderr-free chatter (there should be none).
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &resp); err != nil {
		return nil, fmt.Errorf("parse cni response %q: %w", out, err)
	}
	return &resp, nil
}

// CNIRequest is what the hidden `cni` command executes.
type CNIRequest struct {
	Action      string `json:"action"` // add, del, check
	ContainerID string `json:"containerID"`
	Netns       string `json:"netns"`
	IfName      string `json:"ifName"`
	PodName     string `json:"podName"`
	PodNS       string `json:"podNamespace"`
	// ConfDir, BinDir, CacheDir default to the standard runtime paths.
	ConfDir  string `json:"confDir,omitempty"`
	BinDir   string `json:"binDir,omitempty"`
	CacheDir string `json:"cacheDir,omitempty"`
}

func (r CNIRequest) encode() string {
	b, _ := json.Marshal(r)
	return string(b)
}

// CNIResponse is the hidden command's answer.
type CNIResponse struct {
	Network string          `json:"network"`
	IP      string          `json:"ip,omitempty"`   // first IPv4 address, no prefix length
	IPv6    string          `json:"ipv6,omitempty"` // first IPv6 address, if any
	Result  json.RawMessage `json:"result,omitempty"`
}

// errNoConfig is returned when the node has no CNI network configured.
var errNoConfig = errors.New("no cni network configuration")

// RunCNI performs a CNI request the way a container runtime does (libcni,
// first configuration file in lexical order from the conf dir, plugins from
// the bin dir, results cached in the cache dir) and writes a CNIResponse as
// one JSON line to w. It runs inside the node's namespaces.
func RunCNI(ctx context.Context, reqJSON string, w io.Writer) error {
	var req CNIRequest
	if err := json.Unmarshal([]byte(reqJSON), &req); err != nil {
		return fmt.Errorf("parse cni request: %w", err)
	}
	if req.ConfDir == "" {
		req.ConfDir = "/etc/cni/net.d"
	}
	if req.BinDir == "" {
		req.BinDir = "/opt/cni/bin"
	}
	if req.CacheDir == "" {
		req.CacheDir = "/var/lib/cni"
	}
	files, err := libcni.ConfFiles(req.ConfDir, []string{".conflist"})
	if err != nil {
		return fmt.Errorf("list %s: %w", req.ConfDir, err)
	}
	sort.Strings(files)
	if len(files) == 0 {
		return fmt.Errorf("%s: %w", req.ConfDir, errNoConfig)
	}
	list, err := libcni.ConfListFromFile(files[0])
	if err != nil {
		return fmt.Errorf("load %s: %w", files[0], err)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{req.BinDir}, req.CacheDir, nil)
	rt := &libcni.RuntimeConf{
		ContainerID: req.ContainerID,
		NetNS:       req.Netns,
		IfName:      req.IfName,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", req.PodNS},
			{"K8S_POD_NAME", req.PodName},
			{"K8S_POD_INFRA_CONTAINER_ID", req.ContainerID},
		},
	}
	resp := CNIResponse{Network: list.Name}
	switch req.Action {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return fmt.Errorf("cni add: %w", err)
		}
		cur, err := current.NewResultFromResult(res)
		if err != nil {
			return fmt.Errorf("convert cni result: %w", err)
		}
		for _, ip := range cur.IPs {
			a, ok := netip.AddrFromSlice(ip.Address.IP)
			switch {
			case !ok:
			case a.Unmap().Is4() && resp.IP == "":
				resp.IP = a.Unmap().String()
			case !a.Unmap().Is4() && resp.IPv6 == "":
				resp.IPv6 = a.String()
			}
		}
		if resp.IP == "" {
			return fmt.Errorf("cni add returned no IPv4 address: %v", cur)
		}
		resp.Result, _ = json.Marshal(cur)
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			return fmt.Errorf("cni del: %w", err)
		}
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			return fmt.Errorf("cni check: %w", err)
		}
	default:
		return fmt.Errorf("unknown cni action %q", req.Action)
	}
	return json.NewEncoder(w).Encode(resp)
}

// PodIP returns the pod's IP.
func (l *Lab) PodIP(node, pod string) (string, error) {
	n, ok := l.st.Nodes[node]
	if !ok {
		return "", fmt.Errorf("node %q: %w", node, ErrNoNode)
	}
	p, ok := n.Pods[pod]
	if !ok {
		return "", fmt.Errorf("pod %s/%s: %w", node, pod, ErrNoPod)
	}
	return p.IP, nil
}

// PodRef names one pod.
type PodRef struct {
	Node, Pod, IP string
	// IPv6 is the pod's IPv6 address in a dual-stack lab.
	IPv6 string
}

// Pods lists every pod, nodes in index order, pods in creation order.
func (l *Lab) Pods() []PodRef {
	var out []PodRef
	for _, nn := range l.st.NodeNames() {
		n := l.st.Nodes[nn]
		for _, pn := range n.PodNames() {
			out = append(out, PodRef{Node: nn, Pod: pn, IP: n.Pods[pn].IP, IPv6: n.Pods[pn].IPv6})
		}
	}
	return out
}
