package lab

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/wgmesh/wgmesh/deploy"
)

const (
	apiserverPort = 6443
	// ServiceCIDR is the lab's service-cluster-ip-range.
	ServiceCIDR = "10.96.0.0/16"
	// ServiceCIDRv6 is the IPv6 service range of a kubelet-mode dual-stack
	// lab (secondary: the kubernetes Service stays IPv4).
	ServiceCIDRv6 = "fd00:10:96::/112"
	// AgentNamespace and AgentServiceAccount name the identity the shipped
	// RBAC (deploy/base) grants the agent.
	AgentNamespace      = "wgmesh-system"
	AgentServiceAccount = "wgmesh-agent"
	agentTokenTTL       = 30 * 24 * time.Hour
)

// APIServerURL is where every lab component reaches the apiserver.
func APIServerURL() string {
	return fmt.Sprintf("https://%s:%d", UnderlayGateway, apiserverPort)
}

// apiServerURLFor is where node n reaches the apiserver: over IPv6 from a
// node without IPv4.
func apiServerURLFor(n *Node) string {
	if n.Underlay == UnderlayIPv6Only {
		return fmt.Sprintf("https://[%s]:%d", UnderlayGatewayIPv6, apiserverPort)
	}
	return APIServerURL()
}

func (l *Lab) pki() pki { return pki{dir: filepath.Join(l.cfg.StateDir, "pki")} }

func (l *Lab) logPath(name string) string {
	return filepath.Join(l.cfg.StateDir, "logs", name+".log")
}

// startEtcd runs etcd inside the underlay namespace on its loopback.
func (l *Lab) startEtcd(st *State) (Proc, error) {
	argv := []string{
		"nsenter", "--net=" + netnsPath(st.Underlay), "--",
		filepath.Join(l.cfg.BinDir, "etcd"),
		"--name=lab",
		"--data-dir=" + filepath.Join(l.cfg.StateDir, "etcd"),
		"--listen-client-urls=http://127.0.0.1:2379",
		"--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380",
		"--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=lab=http://127.0.0.1:2380",
		// A throw-away lab: durability buys nothing, fsync costs seconds.
		"--unsafe-no-fsync",
		"--log-level=warn",
	}
	return startDetached(argv, l.logPath("etcd"), os.Environ())
}

func (l *Lab) apiserverArgv(st *State) []string {
	p := l.pki()
	bind := "0.0.0.0"
	if st.IPv6Underlay {
		bind = "::" // both families: IPv6-only nodes reach it on UnderlayGatewayIPv6
	}
	return []string{
		"nsenter", "--net=" + netnsPath(st.Underlay), "--",
		filepath.Join(l.cfg.BinDir, "kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=" + bind,
		fmt.Sprintf("--secure-port=%d", apiserverPort),
		"--advertise-address=" + UnderlayGateway,
		"--tls-cert-file=" + p.path("apiserver.crt"),
		"--tls-private-key-file=" + p.path("apiserver.key"),
		"--client-ca-file=" + p.CAFile(),
		"--authorization-mode=Node,RBAC",
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.path("sa.pub"),
		"--service-account-signing-key-file=" + p.path("sa.key"),
		// Nothing here runs pods; the ServiceAccount admission plugin would
		// only wait for token controllers that the lab does not run.
		"--disable-admission-plugins=ServiceAccount",
		"--cert-dir=" + filepath.Join(l.cfg.StateDir, "apiserver-certs"),
		"--profiling=false",
		"--v=1",
	}
}

func (l *Lab) startAPIServer(st *State) (Proc, error) {
	argv := st.APIServerArgv
	if len(argv) == 0 {
		argv = l.apiserverArgv(st)
		st.APIServerArgv = argv
	}
	return startDetached(argv, l.logPath("apiserver"), os.Environ())
}

// waitAPIServer polls /readyz until it answers ok.
func (l *Lab) waitAPIServer(ctx context.Context, st *State, timeout time.Duration) error {
	p := l.pki()
	cert, err := tls.LoadX509KeyPair(p.path("admin.crt"), p.path("admin.key"))
	if err != nil {
		return fmt.Errorf("load admin cert: %w", err)
	}
	caPEM, err := os.ReadFile(p.CAFile())
	if err != nil {
		return fmt.Errorf("read ca: %w", err)
	}
	pool, err := certPool(caPEM)
	if err != nil {
		return err
	}
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext:     netnsDialer(st.Underlay),
			TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool},
		},
	}
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, APIServerURL()+"/readyz", nil)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("status %d: %s", resp.StatusCode, lastLines(string(body), 3))
		} else {
			last = err.Error()
		}
		if st.APIServer != nil && !st.APIServer.Alive() {
			return fmt.Errorf("kube-apiserver exited; see %s:\n%s", l.logPath("apiserver"), tailFile(l.logPath("apiserver"), 15))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready after %s (last: %s); see %s", timeout, last, l.logPath("apiserver"))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// AdminRESTConfig is a cluster-admin (system:masters) client config whose
// connections are made inside the underlay namespace.
func (l *Lab) AdminRESTConfig() *rest.Config {
	p := l.pki()
	return &rest.Config{
		Host: APIServerURL(),
		TLSClientConfig: rest.TLSClientConfig{
			CAFile:   p.CAFile(),
			CertFile: p.path("admin.crt"),
			KeyFile:  p.path("admin.key"),
		},
		Dial:    netnsDialer(l.st.Underlay),
		QPS:     50,
		Burst:   100,
		Timeout: 30 * time.Second,
	}
}

// Admin returns a cluster-admin clientset for the lab apiserver.
func (l *Lab) Admin() (kubernetes.Interface, error) {
	return kubernetes.NewForConfig(l.AdminRESTConfig())
}

// AgentRESTConfig is the client config of the named node's agent: the same
// ServiceAccount token the agent runs with.
func (l *Lab) AgentRESTConfig(node string) (*rest.Config, error) {
	n, ok := l.st.Nodes[node]
	if !ok {
		return nil, fmt.Errorf("node %q: %w", node, ErrNoNode)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(n.Dir, "kubeconfig"))
	if err != nil {
		return nil, fmt.Errorf("load agent kubeconfig: %w", err)
	}
	cfg.Dial = netnsDialer(l.st.Underlay)
	cfg.Timeout = 30 * time.Second
	return cfg, nil
}

// AdminKubeconfig is the path of the admin kubeconfig (usable from inside the
// underlay or a node namespace; `wgmesh-lab kubectl` does that for you).
func (l *Lab) AdminKubeconfig() string { return filepath.Join(l.cfg.StateDir, "admin.kubeconfig") }

func (l *Lab) writeAdminKubeconfig() error {
	p := l.pki()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["lab"] = &clientcmdapi.Cluster{Server: APIServerURL(), CertificateAuthority: p.CAFile()}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificate: p.path("admin.crt"), ClientKey: p.path("admin.key")}
	cfg.Contexts["lab"] = &clientcmdapi.Context{Cluster: "lab", AuthInfo: "admin"}
	cfg.CurrentContext = "lab"
	return clientcmd.WriteToFile(*cfg, l.AdminKubeconfig())
}

// baseDocs calls fn with every non-empty YAML document of the shipped
// manifests (deploy/base), as `kubectl apply -k` reads them.
func baseDocs(fn func(path string, doc []byte) error) error {
	return fs.WalkDir(deploy.Base, "base", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".yaml") {
			return err
		}
		data, err := fs.ReadFile(deploy.Base, path)
		if err != nil {
			return err
		}
		r := utilyaml.NewYAMLReader(bufioReader(data))
		for {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("read %s: %w", path, err)
			}
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			if err := fn(path, doc); err != nil {
				return err
			}
		}
	})
}

// RBACObjects decodes the shipped manifests (deploy/base) and returns the
// objects the lab applies: the Namespace, ServiceAccount, ClusterRole,
// ClusterRoleBinding and the node-scoped trust ValidatingAdmissionPolicy and
// its binding, exactly as users get them.
func RBACObjects() ([]runtime.Object, error) {
	var objs []runtime.Object
	err := baseDocs(func(_ string, doc []byte) error {
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			// kustomization.yaml and CRD-less kinds are not ours to apply.
			return nil
		}
		switch obj.(type) {
		case *corev1.Namespace, *corev1.ServiceAccount, *rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding,
			*admissionregistrationv1.ValidatingAdmissionPolicy, *admissionregistrationv1.ValidatingAdmissionPolicyBinding:
			objs = append(objs, obj)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read deploy/base: %w", err)
	}
	// Namespaces before what lives in them.
	sort.SliceStable(objs, func(i, j int) bool {
		_, a := objs[i].(*corev1.Namespace)
		_, b := objs[j].(*corev1.Namespace)
		return a && !b
	})
	return objs, nil
}

// ShippedClusterRole returns the agent ClusterRole from deploy/base.
func ShippedClusterRole() (*rbacv1.ClusterRole, error) {
	objs, err := RBACObjects()
	if err != nil {
		return nil, err
	}
	for _, o := range objs {
		if cr, ok := o.(*rbacv1.ClusterRole); ok && cr.Name == AgentServiceAccount {
			return cr, nil
		}
	}
	return nil, fmt.Errorf("deploy/base has no ClusterRole %q", AgentServiceAccount)
}

func (l *Lab) applyRBAC(ctx context.Context, c kubernetes.Interface) error {
	objs, err := RBACObjects()
	if err != nil {
		return err
	}
	var haveSA, haveRole, haveBinding, havePolicy, havePolicyBinding bool
	for _, o := range objs {
		var err error
		switch obj := o.(type) {
		case *corev1.Namespace:
			_, err = c.CoreV1().Namespaces().Create(ctx, obj, metav1.CreateOptions{})
		case *corev1.ServiceAccount:
			haveSA = haveSA || (obj.Name == AgentServiceAccount && obj.Namespace == AgentNamespace)
			_, err = c.CoreV1().ServiceAccounts(obj.Namespace).Create(ctx, obj, metav1.CreateOptions{})
		case *rbacv1.ClusterRole:
			haveRole = haveRole || obj.Name == AgentServiceAccount
			_, err = c.RbacV1().ClusterRoles().Create(ctx, obj, metav1.CreateOptions{})
		case *rbacv1.ClusterRoleBinding:
			haveBinding = true
			_, err = c.RbacV1().ClusterRoleBindings().Create(ctx, obj, metav1.CreateOptions{})
		case *admissionregistrationv1.ValidatingAdmissionPolicy:
			havePolicy = true
			_, err = c.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, obj, metav1.CreateOptions{})
		case *admissionregistrationv1.ValidatingAdmissionPolicyBinding:
			havePolicyBinding = true
			_, err = c.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, obj, metav1.CreateOptions{})
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("apply %T: %w", o, err)
		}
	}
	if !haveSA || !haveRole || !haveBinding || !havePolicy || !havePolicyBinding {
		return fmt.Errorf("deploy/base lacks the agent's ServiceAccount %s/%s, ClusterRole, ClusterRoleBinding "+
			"or its ValidatingAdmissionPolicy and binding", AgentNamespace, AgentServiceAccount)
	}
	return nil
}

// writeAgentKubeconfig requests a ServiceAccount token for the agent (the
// TokenRequest API, as the kubelet does for a DaemonSet pod) and writes the
// node's kubeconfig with it. The token is bound to the node's Node object:
// like a DaemonSet pod's token it carries the node name
// (authentication.kubernetes.io/node-name), which the shipped admission
// policy compares with the Node being changed. It dies with that Node object
// (the apiserver checks the bound object's UID on every request).
func (l *Lab) writeAgentKubeconfig(ctx context.Context, c kubernetes.Interface, n *Node) error {
	node, err := c.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get node %s for its agent token: %w", n.Name, err)
	}
	exp := int64(agentTokenTTL / time.Second)
	tr, err := c.CoreV1().ServiceAccounts(AgentNamespace).CreateToken(ctx, AgentServiceAccount,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: &exp,
			BoundObjectRef:    &authenticationv1.BoundObjectReference{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID},
		}},
		metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("request agent token: %w", err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["lab"] = &clientcmdapi.Cluster{Server: apiServerURLFor(n), CertificateAuthority: l.pki().CAFile()}
	cfg.AuthInfos["wgmesh-agent"] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	cfg.Contexts["lab"] = &clientcmdapi.Context{Cluster: "lab", AuthInfo: "wgmesh-agent"}
	cfg.CurrentContext = "lab"
	return clientcmd.WriteToFile(*cfg, filepath.Join(n.Dir, "kubeconfig"))
}

// createNodeObject creates the Node as kube-controller-manager (podCIDRs)
// and the kubelet (addresses, Ready) would.
func createNodeObject(ctx context.Context, c kubernetes.Interface, n *Node) error {
	obj := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:   n.Name,
			Labels: map[string]string{"kubernetes.io/hostname": n.Name, "kubernetes.io/os": "linux"},
		},
		Spec: corev1.NodeSpec{PodCIDR: n.PodCIDR, PodCIDRs: n.PodCIDRs()},
	}
	if n.Location != "" {
		obj.Labels[LabelLocation] = n.Location
	}
	created, err := c.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		// A leftover of a crashed add-node: start from a clean object.
		if err := c.CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{}); err != nil {
			return fmt.Errorf("replace stale node %s: %w", n.Name, err)
		}
		created, err = c.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{})
	}
	if err != nil {
		return fmt.Errorf("create node %s: %w", n.Name, err)
	}
	now := metav1.Now()
	created.Status.Addresses = nil
	for _, ip := range n.InternalIPs() {
		created.Status.Addresses = append(created.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	created.Status.Addresses = append(created.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: n.Name})
	if n.Location != "" {
		// A cloud node: its InternalIP is on the location's network.
		created.Status.Addresses = []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: n.PrivateIP},
			{Type: corev1.NodeExternalIP, Address: n.UnderlayIP},
			{Type: corev1.NodeHostName, Address: n.Name},
		}
	}
	created.Status.Conditions = []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "WgmeshLab",
		Message: "lab node", LastHeartbeatTime: now, LastTransitionTime: now,
	}}
	if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("set status of node %s: %w", n.Name, err)
	}
	return nil
}

// StopAPIServer stops the apiserver (SIGTERM); etcd keeps running.
func (l *Lab) StopAPIServer() error {
	return l.withState(func(st *State, save func() error) error {
		if st.APIServer == nil {
			return nil
		}
		if err := st.APIServer.stop(syscall.SIGTERM, 20*time.Second); err != nil {
			return fmt.Errorf("stop kube-apiserver: %w", err)
		}
		st.APIServer = nil
		return save()
	})
}

// StartAPIServer starts the apiserver again with its original flags and
// waits until it is ready.
func (l *Lab) StartAPIServer(ctx context.Context) error {
	return l.withState(func(st *State, save func() error) error {
		if st.APIServer != nil && st.APIServer.Alive() {
			return nil
		}
		p, err := l.startAPIServer(st)
		if err != nil {
			return err
		}
		st.APIServer = &p
		if err := save(); err != nil {
			return err
		}
		return l.waitAPIServer(ctx, st, 2*time.Minute)
	})
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
