package deploy_test

// Offline checks of the shipped manifests: every YAML file parses strictly
// into its Kubernetes type, every kustomization renders (with the kustomize
// library kubectl embeds), and each rendering keeps the invariants the agent
// depends on. No cluster, root or network needed; the lab suite applies the
// same manifests to a real kube-apiserver.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	kusttypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// The kustomizations we ship; each must render to a valid install.
var kustomizations = []string{".", "base", "overlays/example", "overlays/vagrant", "overlays/lab"}

const (
	wantNamespace = "wgmesh-system"
	configKey     = "agent.yaml"
	metricsPort   = 9585 // plan: issue 5's metrics-address default
)

// agentConfigKeys are the agent's config keys (README "Agent configuration").
// TestConfigKeysAreAgentFlags proves each one the ConfigMaps use is a real
// flag of the built agent.
var agentConfigKeys = []string{
	"node-name", "kubeconfig", "interface", "listen-port", "key-file", "mtu", "endpoint",
	"persistent-keepalive", "cluster-cidrs", "state-dir", "run-dir", "cni-conf-dir", "cni-bridge",
	"resync", "log-format", "log-level", "metrics-address",
}

// hostPaths the agent pod may mount, and nothing else: each is a piece of
// the node the agent must own or share with the host.
var allowedHostPaths = map[string]corev1.HostPathType{
	"/dev/net/tun":       corev1.HostPathCharDev,
	"/var/lib/wgmesh":    corev1.HostPathDirectoryOrCreate,
	"/etc/cni/net.d":     corev1.HostPathDirectoryOrCreate,
	"/opt/cni/bin":       corev1.HostPathDirectoryOrCreate,
	"/var/run/wireguard": corev1.HostPathDirectoryOrCreate,
	"/var/run/wgmesh":    corev1.HostPathDirectoryOrCreate,
}

// agentHostPaths must be mounted into the agent container.
var agentHostPaths = []string{"/dev/net/tun", "/var/lib/wgmesh", "/etc/cni/net.d", "/var/run/wireguard", "/var/run/wgmesh"}

// wantRBAC is the least the agent needs, as group/resource/verb triples.
var wantRBAC = []string{
	"/nodes/get", "/nodes/list", "/nodes/watch", "/nodes/patch",
	"/events/create", "/events/patch",
	"events.k8s.io/events/create", "events.k8s.io/events/patch",
	// NetworkPolicy engine.
	"/pods/list", "/pods/watch", "/namespaces/list", "/namespaces/watch",
	"networking.k8s.io/networkpolicies/list", "networking.k8s.io/networkpolicies/watch",
	// External peers (issue 17).
	"wgmesh.io/peers/get", "wgmesh.io/peers/list", "wgmesh.io/peers/watch", "wgmesh.io/peers/status/patch",
}

func scheme(t testing.TB) *runtime.Scheme {
	t.Helper()
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, rbacv1.AddToScheme, admissionregistrationv1.AddToScheme, apiextensionsv1.AddToScheme} {
		if err := add(s); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// decodeStrict decodes a multi-document YAML stream; unknown fields,
// duplicate fields and unknown kinds are errors, so a typo cannot slip
// through as a silently ignored setting.
func decodeStrict(t testing.TB, data []byte) ([]runtime.Object, error) {
	t.Helper()
	s := scheme(t)
	ser := json.NewSerializerWithOptions(json.DefaultMetaFactory, s, s, json.SerializerOptions{Yaml: true, Strict: true})
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []runtime.Object
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(doc)) == 0 || isOnlyComments(doc) {
			continue
		}
		obj, _, err := ser.Decode(doc, nil, nil)
		if err != nil {
			return nil, err
		}
		objs = append(objs, obj)
	}
}

func isOnlyComments(doc []byte) bool {
	for _, l := range strings.Split(string(doc), "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") && l != "---" {
			return false
		}
	}
	return true
}

// render runs kustomize on dir, as `kubectl kustomize dir` does.
func render(t testing.TB, dir string) []byte {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	out, err := m.AsYaml()
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	return out
}

// bundle is one rendered install: exactly one object of each kind.
type bundle struct {
	ns  *corev1.Namespace
	sa  *corev1.ServiceAccount
	cr  *rbacv1.ClusterRole
	crb *rbacv1.ClusterRoleBinding
	cm  *corev1.ConfigMap
	ds  *appsv1.DaemonSet
	// Node-scoped trust (deploy/base/validatingadmissionpolicy*.yaml).
	vap  *admissionregistrationv1.ValidatingAdmissionPolicy
	vapb *admissionregistrationv1.ValidatingAdmissionPolicyBinding
	// External peers (deploy/base/peer-crd.yaml).
	peerCRD *apiextensionsv1.CustomResourceDefinition
}

func newBundle(objs []runtime.Object) (*bundle, error) {
	b := &bundle{}
	var errs []error
	once := func(kind string, set bool) {
		if set {
			errs = append(errs, fmt.Errorf("more than one %s", kind))
		}
	}
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.Namespace:
			once("Namespace", b.ns != nil)
			b.ns = o
		case *corev1.ServiceAccount:
			once("ServiceAccount", b.sa != nil)
			b.sa = o
		case *rbacv1.ClusterRole:
			once("ClusterRole", b.cr != nil)
			b.cr = o
		case *rbacv1.ClusterRoleBinding:
			once("ClusterRoleBinding", b.crb != nil)
			b.crb = o
		case *corev1.ConfigMap:
			once("ConfigMap", b.cm != nil)
			b.cm = o
		case *appsv1.DaemonSet:
			once("DaemonSet", b.ds != nil)
			b.ds = o
		case *admissionregistrationv1.ValidatingAdmissionPolicy:
			once("ValidatingAdmissionPolicy", b.vap != nil)
			b.vap = o
		case *admissionregistrationv1.ValidatingAdmissionPolicyBinding:
			once("ValidatingAdmissionPolicyBinding", b.vapb != nil)
			b.vapb = o
		case *apiextensionsv1.CustomResourceDefinition:
			once("CustomResourceDefinition", b.peerCRD != nil)
			b.peerCRD = o
		default:
			errs = append(errs, fmt.Errorf("unexpected object %T", o))
		}
	}
	if b.ns == nil || b.sa == nil || b.cr == nil || b.crb == nil || b.cm == nil || b.ds == nil || b.vap == nil || b.vapb == nil || b.peerCRD == nil {
		errs = append(errs, fmt.Errorf("want one each of Namespace, ServiceAccount, ClusterRole, ClusterRoleBinding, ConfigMap, DaemonSet, "+
			"ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding, CustomResourceDefinition"))
	}
	return b, errors.Join(errs...)
}

// agentConfig parses the ConfigMap's config file.
func (b *bundle) agentConfig() (map[string]any, error) {
	raw, ok := b.cm.Data[configKey]
	if !ok {
		return nil, fmt.Errorf("ConfigMap %s has no key %s", b.cm.Name, configKey)
	}
	var cfg map[string]any
	if err := yaml.UnmarshalStrict([]byte(raw), &cfg); err != nil {
		return nil, fmt.Errorf("ConfigMap %s: %s: %w", b.cm.Name, configKey, err)
	}
	return cfg, nil
}

// violations lists every broken invariant (empty = good), so one run shows
// all problems, and the mutation test can prove each check fires.
func (b *bundle) violations() []string {
	var v []string
	bad := func(format string, args ...any) { v = append(v, fmt.Sprintf(format, args...)) }

	// Namespace and identity.
	if b.ns.Name != wantNamespace {
		bad("namespace is %q, want %q", b.ns.Name, wantNamespace)
	}
	if b.ns.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		bad("namespace lacks pod-security.kubernetes.io/enforce=privileged (hostNetwork/hostPath would be rejected)")
	}
	for _, o := range []struct {
		kind, ns string
	}{{"ServiceAccount", b.sa.Namespace}, {"ConfigMap", b.cm.Namespace}, {"DaemonSet", b.ds.Namespace}} {
		if o.ns != b.ns.Name {
			bad("%s is in namespace %q, want %q", o.kind, o.ns, b.ns.Name)
		}
	}

	// RBAC: exactly the least set, bound to the agent's ServiceAccount only.
	var got []string
	for _, r := range b.cr.Rules {
		if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			bad("ClusterRole rule %v uses resourceNames/nonResourceURLs", r)
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, verb := range r.Verbs {
					got = append(got, g+"/"+res+"/"+verb)
				}
			}
		}
	}
	sort.Strings(got)
	got = slices.Compact(got)
	want := slices.Clone(wantRBAC)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		bad("ClusterRole grants %v, want exactly %v", got, want)
	}
	if b.crb.RoleRef.Kind != "ClusterRole" || b.crb.RoleRef.Name != b.cr.Name || b.crb.RoleRef.APIGroup != rbacv1.GroupName {
		bad("ClusterRoleBinding refers to %+v, want ClusterRole %s", b.crb.RoleRef, b.cr.Name)
	}
	wantSubj := []rbacv1.Subject{{Kind: "ServiceAccount", Name: b.sa.Name, Namespace: b.sa.Namespace}}
	if !slices.Equal(b.crb.Subjects, wantSubj) {
		bad("ClusterRoleBinding subjects %+v, want only %+v", b.crb.Subjects, wantSubj)
	}

	// Node-scoped trust: the policy binds the agent's own identity, is in
	// force (Deny, all requests) and fails closed. What its CEL allows and
	// denies is policy_test.go's subject.
	v = append(v, b.trustViolations()...)

	// The Peer CRD as the agent (mesh/kube) and wgmeshctl address it.
	crd := b.peerCRD
	if crd.Name != "peers.wgmesh.io" || crd.Spec.Group != "wgmesh.io" || crd.Spec.Scope != apiextensionsv1.ClusterScoped ||
		crd.Spec.Names.Kind != "Peer" || crd.Spec.Names.Plural != "peers" {
		bad("Peer CRD is %s (group %s, scope %s, kind %s, plural %s), want peers.wgmesh.io, cluster-scoped kind Peer",
			crd.Name, crd.Spec.Group, crd.Spec.Scope, crd.Spec.Names.Kind, crd.Spec.Names.Plural)
	}
	if len(crd.Spec.Versions) != 1 || crd.Spec.Versions[0].Name != "v1alpha1" || !crd.Spec.Versions[0].Served || !crd.Spec.Versions[0].Storage ||
		crd.Spec.Versions[0].Subresources == nil || crd.Spec.Versions[0].Subresources.Status == nil || crd.Spec.Versions[0].Schema == nil {
		bad("Peer CRD must serve and store exactly v1alpha1 with a schema and the status subresource")
	}

	// Config file.
	cfg, err := b.agentConfig()
	if err != nil {
		bad("%v", err)
		cfg = map[string]any{}
	}
	for k := range cfg {
		if !slices.Contains(agentConfigKeys, k) {
			bad("agent config key %q is not an agent config key", k)
		}
	}
	for _, k := range []string{"node-name", "kubeconfig"} {
		if _, ok := cfg[k]; ok {
			bad("agent config sets %q: it differs per node / must be in-cluster; leave it to the DaemonSet", k)
		}
	}

	// DaemonSet.
	ds := b.ds
	spec := &ds.Spec.Template.Spec
	if ds.Spec.Selector == nil || !labelsMatch(ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels) {
		bad("DaemonSet selector does not match its pod template labels")
	}
	if spec.ServiceAccountName != b.sa.Name {
		bad("pod serviceAccountName %q, want %q", spec.ServiceAccountName, b.sa.Name)
	}
	if !spec.HostNetwork {
		bad("pod is not hostNetwork (the agent configures the node's network before any CNI exists)")
	}
	if spec.PriorityClassName != "system-node-critical" {
		bad("priorityClassName %q, want system-node-critical", spec.PriorityClassName)
	}
	if !slices.ContainsFunc(spec.Tolerations, func(t corev1.Toleration) bool {
		return t.Operator == corev1.TolerationOpExists && t.Key == "" && t.Effect == "" && t.TolerationSeconds == nil
	}) {
		bad("pod does not tolerate every taint ({operator: Exists} with no key/effect)")
	}
	if g := spec.TerminationGracePeriodSeconds; g == nil || *g < 5 || *g > 60 {
		bad("terminationGracePeriodSeconds %v, want 5..60", g)
	}
	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil {
		bad("updateStrategy is not RollingUpdate")
	} else {
		if mu := us.RollingUpdate.MaxUnavailable; mu == nil || *mu != intstr.FromInt32(1) {
			bad("rollingUpdate.maxUnavailable %v, want 1 (one node at a time)", mu)
		}
		if ms := us.RollingUpdate.MaxSurge; ms == nil || *ms != intstr.FromInt32(0) {
			bad("rollingUpdate.maxSurge %v, want 0 (two agents cannot share a node's ports and device)", ms)
		}
	}
	ann := ds.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" {
		bad("pod template lacks prometheus.io/scrape: \"true\"")
	}

	vols := map[string]corev1.Volume{}
	for _, vol := range spec.Volumes {
		vols[vol.Name] = vol
		if hp := vol.HostPath; hp != nil {
			wantType, ok := allowedHostPaths[hp.Path]
			if !ok {
				bad("hostPath %s is not one the agent needs", hp.Path)
			} else if hp.Type == nil || *hp.Type != wantType {
				bad("hostPath %s has type %v, want %s", hp.Path, hp.Type, wantType)
			}
		}
	}

	if len(spec.Containers) != 1 || spec.Containers[0].Name != "agent" {
		bad("want exactly one container named agent")
		return v
	}
	c := &spec.Containers[0]
	if !slices.Equal(c.Command, []string{"/wgmesh-agent"}) {
		bad("agent command %v, want [/wgmesh-agent]", c.Command)
	}
	if e := findEnv(c.Env, "WGMESH_NODE_NAME"); e == nil || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil ||
		e.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		bad("agent env WGMESH_NODE_NAME is not from the downward API (fieldRef spec.nodeName)")
	}
	// The apiserver address an operator can set apart from the
	// kubernetes Service (and so from kube-proxy); optional, so that a
	// cluster without it still starts.
	if !slices.ContainsFunc(c.EnvFrom, func(e corev1.EnvFromSource) bool {
		r := e.ConfigMapRef
		return r != nil && r.Name == "kubernetes-services-endpoint" && r.Optional != nil && *r.Optional
	}) {
		bad("agent envFrom lacks the optional ConfigMap kubernetes-services-endpoint (the apiserver address without kube-proxy)")
	}
	sc := c.SecurityContext
	switch {
	case sc == nil:
		bad("agent has no securityContext")
	default:
		if sc.Privileged == nil || *sc.Privileged {
			bad("agent must set privileged: false")
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			bad("agent must set allowPrivilegeEscalation: false")
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			bad("agent must set readOnlyRootFilesystem: true")
		}
		if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN"}) {
			bad("agent capabilities add %v, want exactly [NET_ADMIN]", caps(sc, true))
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			bad("agent capabilities drop %v, want ALL", caps(sc, false))
		}
	}

	// Mounts: host paths by where they land in the container.
	hostMounts := map[string]string{} // host path -> container path
	writable := map[string]string{}   // container path -> host path, writable hostPath mounts
	var configPath string
	for _, m := range c.VolumeMounts {
		vol, ok := vols[m.Name]
		if !ok {
			bad("agent mounts unknown volume %q", m.Name)
			continue
		}
		if vol.HostPath != nil {
			hostMounts[vol.HostPath.Path] = m.MountPath
			if !m.ReadOnly {
				writable[m.MountPath] = vol.HostPath.Path
			}
			if vol.HostPath.Path == "/opt/cni/bin" {
				bad("agent mounts /opt/cni/bin; only the install-cni init container needs it")
			}
		}
		if vol.ConfigMap != nil && vol.ConfigMap.Name == b.cm.Name {
			configPath = filepath.Join(m.MountPath, configKey)
		}
	}
	for _, p := range agentHostPaths {
		if hostMounts[p] == "" {
			bad("agent does not mount hostPath %s", p)
		} else if hostMounts[p] != p {
			bad("agent mounts hostPath %s at %s; the agent and host tools expect the same path", p, hostMounts[p])
		}
	}
	if configPath == "" {
		bad("agent does not mount ConfigMap %s", b.cm.Name)
	} else if !slices.Contains(c.Args, "--config="+configPath) {
		bad("agent args %v lack --config=%s", c.Args, configPath)
	}
	// Every path the agent writes must be on the host, not in the read-only
	// (and ephemeral) container filesystem: the key must survive restarts.
	for _, k := range []string{"key-file", "state-dir", "cni-conf-dir", "run-dir"} {
		p, ok := cfg[k].(string)
		if !ok {
			continue
		}
		if !underAny(p, writable) {
			bad("agent config %s=%s is not on a writable hostPath mount", k, p)
		}
	}
	if p, _ := cfg["cni-conf-dir"].(string); p != "" && writable[p] != "/etc/cni/net.d" {
		bad("agent config cni-conf-dir=%s is not the host's /etc/cni/net.d", p)
	}

	// Ports: config, declared ports, probes and scrape annotation agree.
	listen := intFrom(cfg["listen-port"], 51820)
	if p := findPort(c.Ports, "wireguard"); p == nil || p.ContainerPort != int32(listen) || p.Protocol != corev1.ProtocolUDP {
		bad("container port wireguard %v, want UDP %d (listen-port)", p, listen)
	}
	mport := metricsPort
	if a, ok := cfg["metrics-address"].(string); ok {
		_, ps, err := net.SplitHostPort(a)
		if n, err2 := strconv.Atoi(ps); err != nil || err2 != nil {
			bad("metrics-address %q is not host:port", a)
		} else {
			mport = n
		}
	}
	if p := findPort(c.Ports, "metrics"); p == nil || p.ContainerPort != int32(mport) || p.Protocol != corev1.ProtocolTCP {
		bad("container port metrics %v, want TCP %d", p, mport)
	}
	if ann["prometheus.io/port"] != strconv.Itoa(mport) {
		bad("prometheus.io/port %q, want %d", ann["prometheus.io/port"], mport)
	}
	checkProbe := func(name string, p *corev1.Probe, path string) {
		if p == nil || p.HTTPGet == nil {
			bad("agent has no HTTP %s probe", name)
			return
		}
		if p.HTTPGet.Path != path || !portIs(p.HTTPGet.Port, c.Ports, mport) {
			bad("%s probe GET %s on %v, want %s on %d", name, p.HTTPGet.Path, p.HTTPGet.Port.String(), path, mport)
		}
	}
	checkProbe("liveness", c.LivenessProbe, "/healthz")
	checkProbe("readiness", c.ReadinessProbe, "/readyz")

	// The CNI install init container.
	if len(spec.InitContainers) != 1 || spec.InitContainers[0].Name != "install-cni" {
		bad("want exactly one init container named install-cni")
		return v
	}
	ic := &spec.InitContainers[0]
	if ic.Image != c.Image {
		bad("install-cni image %q differs from the agent's %q: plugin and agent must come from one build", ic.Image, c.Image)
	}
	binMount := ""
	for _, m := range ic.VolumeMounts {
		if vol, ok := vols[m.Name]; ok && vol.HostPath != nil && vol.HostPath.Path == "/opt/cni/bin" && !m.ReadOnly {
			binMount = m.MountPath
		}
	}
	wantCmd := []string{"/install-cni", "--src=/wgmesh", "--dst=" + binMount + "/wgmesh"}
	if binMount == "" {
		bad("install-cni does not mount the host's /opt/cni/bin writable")
	} else if !slices.Equal(ic.Command, wantCmd) {
		bad("install-cni command %v, want %v (atomic temp file + rename into the host's CNI bin dir)", ic.Command, wantCmd)
	}
	if s := ic.SecurityContext; s == nil || s.Privileged == nil || *s.Privileged ||
		s.Capabilities == nil || len(s.Capabilities.Add) > 0 || !slices.Contains(s.Capabilities.Drop, "ALL") {
		bad("install-cni must be unprivileged with every capability dropped")
	}
	return v
}

func labelsMatch(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, val := range sel {
		if labels[k] != val {
			return false
		}
	}
	return true
}

func findEnv(env []corev1.EnvVar, name string) *corev1.EnvVar {
	for i := range env {
		if env[i].Name == name {
			return &env[i]
		}
	}
	return nil
}

func findPort(ports []corev1.ContainerPort, name string) *corev1.ContainerPort {
	for i := range ports {
		if ports[i].Name == name {
			return &ports[i]
		}
	}
	return nil
}

// portIs reports whether a probe port (number or container port name) is n.
func portIs(p intstr.IntOrString, ports []corev1.ContainerPort, n int) bool {
	if p.Type == intstr.Int {
		return p.IntValue() == n
	}
	cp := findPort(ports, p.StrVal)
	return cp != nil && int(cp.ContainerPort) == n
}

func caps(sc *corev1.SecurityContext, add bool) []corev1.Capability {
	if sc.Capabilities == nil {
		return nil
	}
	if add {
		return sc.Capabilities.Add
	}
	return sc.Capabilities.Drop
}

func underAny(p string, mounts map[string]string) bool {
	for m := range mounts {
		if p == m || strings.HasPrefix(p, strings.TrimSuffix(m, "/")+"/") {
			return true
		}
	}
	return false
}

func intFrom(v any, def int) int {
	switch v := v.(type) {
	case float64: // sigs.k8s.io/yaml decodes numbers as JSON does
		return int(v)
	case string:
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
	}
	return def
}

func renderBundle(t *testing.T, dir string) *bundle {
	t.Helper()
	objs, err := decodeStrict(t, render(t, dir))
	if err != nil {
		t.Fatalf("%s renders YAML that does not decode strictly: %v", dir, err)
	}
	b, err := newBundle(objs)
	if err != nil {
		t.Fatalf("%s: %v", dir, err)
	}
	return b
}

func TestKustomizationsRenderValidInstalls(t *testing.T) {
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			b := renderBundle(t, dir)
			for _, msg := range b.violations() {
				t.Error(msg)
			}
		})
	}
}

// `kubectl apply -k deploy/` must install exactly the base.
func TestTopLevelIsBase(t *testing.T) {
	if top, base := render(t, "."), render(t, "base"); !bytes.Equal(top, base) {
		t.Errorf("deploy/ renders differently from deploy/base")
	}
}

func TestOverlaysApplyTheirKnobs(t *testing.T) {
	ex := renderBundle(t, "overlays/example")
	cfg, err := ex.agentConfig()
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"listen-port": float64(51821), "mtu": float64(1380), "persistent-keepalive": "25s"} {
		if cfg[k] != want {
			t.Errorf("example overlay %s = %v, want %v", k, cfg[k], want)
		}
	}
	for _, c := range append(ex.ds.Spec.Template.Spec.InitContainers, ex.ds.Spec.Template.Spec.Containers...) {
		if c.Image != "registry.example.com/wgmesh:v0.1.0" {
			t.Errorf("example overlay %s image %q, want the overlay's registry image", c.Name, c.Image)
		}
	}

	vg := renderBundle(t, "overlays/vagrant")
	for _, c := range append(vg.ds.Spec.Template.Spec.InitContainers, vg.ds.Spec.Template.Spec.Containers...) {
		if c.ImagePullPolicy != corev1.PullNever || c.Image != "wgmesh:dev" {
			t.Errorf("vagrant overlay %s: image %q pull %q, want wgmesh:dev, Never (imported, no registry)", c.Name, c.Image, c.ImagePullPolicy)
		}
	}
	if cfg, err := vg.agentConfig(); err != nil || cfg["persistent-keepalive"] != "25s" {
		t.Errorf("vagrant overlay persistent-keepalive = %v (%v), want 25s for the NAT'd VM", cfg["persistent-keepalive"], err)
	}

	lab := renderBundle(t, "overlays/lab")
	for _, c := range append(lab.ds.Spec.Template.Spec.InitContainers, lab.ds.Spec.Template.Spec.Containers...) {
		if c.Image != "wgmesh.invalid/wgmesh:lab" {
			t.Errorf("lab overlay %s image %q, want wgmesh.invalid/wgmesh:lab (imported by integration/lab)", c.Name, c.Image)
		}
	}
}

// Every YAML file under deploy/ is either a kustomization, a JSON patch or
// Kubernetes objects that decode strictly; and every manifest in base/ is
// listed by base/kustomization.yaml (no file silently left out of installs).
func TestEveryYAMLFileIsValid(t *testing.T) {
	var files []string
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			files = append(files, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 10 {
		t.Fatalf("found only %d YAML files under deploy/: %v", len(files), files)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case filepath.Base(f) == "kustomization.yaml":
			var k kusttypes.Kustomization
			if err := yaml.UnmarshalStrict(data, &k); err != nil {
				t.Errorf("%s: %v", f, err)
			}
		case isJSONPatch(data):
			var ops []struct {
				Op    string `json:"op"`
				Path  string `json:"path"`
				Value any    `json:"value"`
			}
			if err := yaml.UnmarshalStrict(data, &ops); err != nil {
				t.Errorf("%s: %v", f, err)
			}
			for _, op := range ops {
				if !slices.Contains([]string{"add", "remove", "replace", "test"}, op.Op) || !strings.HasPrefix(op.Path, "/") {
					t.Errorf("%s: bad JSON patch op %+v", f, op)
				}
			}
		default:
			objs, err := decodeStrict(t, data)
			if err != nil {
				t.Errorf("%s: %v", f, err)
			} else if len(objs) == 0 {
				t.Errorf("%s: no objects", f)
			}
		}
	}

	var k kusttypes.Kustomization
	data, err := os.ReadFile("base/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		t.Fatal(err)
	}
	manifests, _ := filepath.Glob("base/*.yaml")
	for _, m := range manifests {
		if b := filepath.Base(m); b != "kustomization.yaml" && !slices.Contains(k.Resources, b) {
			t.Errorf("%s is not listed in base/kustomization.yaml resources", m)
		}
	}
}

func isJSONPatch(data []byte) bool {
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		return strings.HasPrefix(l, "- op:")
	}
	return false
}

// Each check above must be able to fail: break the base one way at a time and
// expect the matching violation (and no violation for the unbroken base).
func TestViolationsCatchBreakage(t *testing.T) {
	if v := renderBundle(t, "base").violations(); len(v) != 0 {
		t.Fatalf("base has violations: %v", v)
	}
	agent := func(b *bundle) *corev1.Container { return &b.ds.Spec.Template.Spec.Containers[0] }
	initc := func(b *bundle) *corev1.Container { return &b.ds.Spec.Template.Spec.InitContainers[0] }
	setCfg := func(b *bundle, old, new string) {
		if !strings.Contains(b.cm.Data[configKey], old) {
			t.Fatalf("config has no %q", old)
		}
		b.cm.Data[configKey] = strings.Replace(b.cm.Data[configKey], old, new, 1)
	}
	tests := []struct {
		name   string
		mutate func(b *bundle)
		want   string
	}{
		{"no hostNetwork", func(b *bundle) { b.ds.Spec.Template.Spec.HostNetwork = false }, "not hostNetwork"},
		{"peer CRD namespaced", func(b *bundle) { b.peerCRD.Spec.Scope = apiextensionsv1.NamespaceScoped }, "Peer CRD is"},
		{"peer CRD without status", func(b *bundle) { b.peerCRD.Spec.Versions[0].Subresources = nil }, "status subresource"},
		{"no PSA label", func(b *bundle) { delete(b.ns.Labels, "pod-security.kubernetes.io/enforce") }, "pod-security"},
		{"other priority", func(b *bundle) { b.ds.Spec.Template.Spec.PriorityClassName = "" }, "priorityClassName"},
		{"keyed toleration only", func(b *bundle) {
			b.ds.Spec.Template.Spec.Tolerations = []corev1.Toleration{{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists}}
		}, "tolerate every taint"},
		{"surge", func(b *bundle) { s := intstr.FromInt32(1); b.ds.Spec.UpdateStrategy.RollingUpdate.MaxSurge = &s }, "maxSurge"},
		{"unavailable 2", func(b *bundle) { s := intstr.FromInt32(2); b.ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable = &s }, "maxUnavailable"},
		{"OnDelete", func(b *bundle) {
			b.ds.Spec.UpdateStrategy = appsv1.DaemonSetUpdateStrategy{Type: appsv1.OnDeleteDaemonSetStrategyType}
		}, "not RollingUpdate"},
		{"long grace", func(b *bundle) { g := int64(600); b.ds.Spec.Template.Spec.TerminationGracePeriodSeconds = &g }, "terminationGracePeriodSeconds"},
		{"privileged", func(b *bundle) { p := true; agent(b).SecurityContext.Privileged = &p }, "privileged: false"},
		{"NET_RAW too", func(b *bundle) {
			agent(b).SecurityContext.Capabilities.Add = append(agent(b).SecurityContext.Capabilities.Add, "NET_RAW")
		}, "exactly [NET_ADMIN]"},
		{"keeps default caps", func(b *bundle) { agent(b).SecurityContext.Capabilities.Drop = nil }, "drop"},
		{"writable root", func(b *bundle) { f := false; agent(b).SecurityContext.ReadOnlyRootFilesystem = &f }, "readOnlyRootFilesystem"},
		{"apiserver endpoint required", func(b *bundle) { f := false; agent(b).EnvFrom[0].ConfigMapRef.Optional = &f }, "kubernetes-services-endpoint"},
		{"no apiserver endpoint", func(b *bundle) { agent(b).EnvFrom = nil }, "kubernetes-services-endpoint"},
		{"node name literal", func(b *bundle) { agent(b).Env = []corev1.EnvVar{{Name: "WGMESH_NODE_NAME", Value: "node1"}} }, "downward API"},
		{"no tun", func(b *bundle) {
			agent(b).VolumeMounts = slices.DeleteFunc(agent(b).VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/dev/net/tun" })
		}, "hostPath /dev/net/tun"},
		{"tun not a char device", func(b *bundle) {
			for i := range b.ds.Spec.Template.Spec.Volumes {
				if hp := b.ds.Spec.Template.Spec.Volumes[i].HostPath; hp != nil && hp.Path == "/dev/net/tun" {
					tp := corev1.HostPathUnset
					hp.Type = &tp
				}
			}
		}, "has type"},
		{"extra hostPath", func(b *bundle) {
			tp := corev1.HostPathDirectory
			b.ds.Spec.Template.Spec.Volumes = append(b.ds.Spec.Template.Spec.Volumes, corev1.Volume{Name: "root",
				VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/", Type: &tp}}})
		}, "not one the agent needs"},
		{"key on container fs", func(b *bundle) {
			setCfg(b, "key-file: /var/lib/wgmesh/private.key", "key-file: /etc/wgmesh-key/private.key")
		}, "key-file"},
		{"unknown config key", func(b *bundle) { setCfg(b, "interface: wgmesh0", "interface: wgmesh0\nlisten_port: 1") }, "not an agent config key"},
		{"node-name in config", func(b *bundle) { setCfg(b, "interface: wgmesh0", "interface: wgmesh0\nnode-name: a") }, "differs per node"},
		{"listen port mismatch", func(b *bundle) { setCfg(b, "listen-port: 51820", "listen-port: 51999") }, "listen-port"},
		{"metrics port mismatch", func(b *bundle) { setCfg(b, `metrics-address: ":9585"`, `metrics-address: ":9999"`) }, "prometheus.io/port"},
		{"no scrape", func(b *bundle) { delete(b.ds.Spec.Template.Annotations, "prometheus.io/scrape") }, "prometheus.io/scrape"},
		{"liveness path", func(b *bundle) { agent(b).LivenessProbe.HTTPGet.Path = "/" }, "liveness probe"},
		{"readiness port", func(b *bundle) { agent(b).ReadinessProbe.HTTPGet.Port = intstr.FromInt32(8080) }, "readiness probe"},
		{"no readiness", func(b *bundle) { agent(b).ReadinessProbe = nil }, "readiness"},
		{"config not passed", func(b *bundle) { agent(b).Args = nil }, "--config"},
		{"cni cp in place", func(b *bundle) {
			initc(b).Command = []string{"cp", "/wgmesh", "/host/opt/cni/bin/wgmesh"}
		}, "install-cni command"},
		{"cni from another image", func(b *bundle) { initc(b).Image = "other:1" }, "differs from the agent"},
		{"agent mounts cni bin", func(b *bundle) {
			agent(b).VolumeMounts = append(agent(b).VolumeMounts, corev1.VolumeMount{Name: "cni-bin-dir", MountPath: "/opt/cni/bin"})
		}, "only the install-cni"},
		{"extra verb", func(b *bundle) { b.cr.Rules[0].Verbs = append(b.cr.Rules[0].Verbs, "update") }, "ClusterRole grants"},
		{"missing verb", func(b *bundle) { b.cr.Rules[0].Verbs = b.cr.Rules[0].Verbs[:1] }, "ClusterRole grants"},
		{"wildcard", func(b *bundle) {
			b.cr.Rules = append(b.cr.Rules, rbacv1.PolicyRule{APIGroups: []string{"*"}, Resources: []string{"*"}, Verbs: []string{"*"}})
		}, "ClusterRole grants"},
		{"binding to default SA", func(b *bundle) { b.crb.Subjects[0].Name = "default" }, "subjects"},
		{"wrong SA in pod", func(b *bundle) { b.ds.Spec.Template.Spec.ServiceAccountName = "default" }, "serviceAccountName"},
		{"configmap elsewhere", func(b *bundle) { b.cm.Namespace = "default" }, "ConfigMap is in namespace"},
		{"policy fails open", func(b *bundle) { f := admissionregistrationv1.Ignore; b.vap.Spec.FailurePolicy = &f }, "want Fail"},
		{"policy for another SA", func(b *bundle) { b.sa.Name = "other"; b.ds.Spec.Template.Spec.ServiceAccountName = "other" }, "matchConditions"},
		{"policy for another namespace", func(b *bundle) { b.sa.Namespace = "kube-system" }, "matchConditions"},
		{"policy matches more", func(b *bundle) {
			b.vap.Spec.MatchConditions = append(b.vap.Spec.MatchConditions, admissionregistrationv1.MatchCondition{Name: "x", Expression: "false"})
		}, "matchConditions"},
		{"policy misses status", func(b *bundle) { b.vap.Spec.MatchConstraints.ResourceRules[0].Resources = []string{"nodes"} }, "nodes/status"},
		{"policy one node only", func(b *bundle) { b.vap.Spec.MatchConstraints.ResourceRules[0].ResourceNames = []string{"node1"} }, "nodes/status"},
		{"policy by label", func(b *bundle) {
			b.vap.Spec.MatchConstraints.ObjectSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"a": "b"}}
		}, "selector"},
		{"binding audit only", func(b *bundle) {
			b.vapb.Spec.ValidationActions = []admissionregistrationv1.ValidationAction{admissionregistrationv1.Audit}
		}, "want exactly [Deny]"},
		{"binding to other policy", func(b *bundle) { b.vapb.Spec.PolicyName = "other" }, "binds policy"},
		{"binding narrowed", func(b *bundle) {
			b.vapb.Spec.MatchResources = &admissionregistrationv1.MatchResources{ObjectSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"a": "b"}}}
		}, "narrows the policy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := renderBundle(t, "base")
			tt.mutate(b)
			v := b.violations()
			if !slices.ContainsFunc(v, func(s string) bool { return strings.Contains(s, tt.want) }) {
				t.Errorf("violations %q lack one mentioning %q", v, tt.want)
			}
		})
	}
}

// buildAgent builds cmd/wgmesh-agent into a temp dir.
func buildAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "wgmesh-agent")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/wgmesh-agent")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the agent: %v\n%s", err, out)
	}
	return bin
}

// The shipped config files must mean to the real agent what they say: every
// key is one of its flags (the agent ignores unknown keys in a config file,
// so a typo would silently fall back to a default), and the agent's own
// validation accepts every value. Run without a node name, the agent stops
// at validation and lists every problem it found, before any I/O; the node
// name (the DaemonSet's downward API env) must be the only one.
func TestAgentAcceptsShippedConfig(t *testing.T) {
	bin := buildAgent(t)
	help, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("wgmesh-agent --help: %v\n%s", err, help)
	}
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+(?:-\w, )?--([a-z][a-z-]*)\s`).FindAllStringSubmatch(string(help), -1) {
		flags[m[1]] = true
	}
	for _, k := range agentConfigKeys {
		if !flags[k] {
			t.Errorf("README/test key %q is not a flag of wgmesh-agent (flags: %v)", k, flags)
		}
	}

	// Without WGMESH_* from the caller's environment.
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "WGMESH_") {
			env = append(env, e)
		}
	}
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			b := renderBundle(t, dir)
			cfg, err := b.agentConfig()
			if err != nil {
				t.Fatal(err)
			}
			for k := range cfg {
				if !flags[k] {
					t.Errorf("config key %q is not a flag of wgmesh-agent", k)
				}
			}
			path := filepath.Join(t.TempDir(), configKey)
			if err := os.WriteFile(path, []byte(b.cm.Data[configKey]), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin, "--config="+path)
			cmd.Env = env
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("agent without a node name exited 0:\n%s", out)
			}
			_, problems, ok := strings.Cut(string(out), "invalid configuration:\n")
			if !ok {
				t.Fatalf("agent did not reach config validation:\n%s", out)
			}
			lines := strings.Split(strings.TrimSpace(problems), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "node-name is required") {
				t.Errorf("agent rejects the shipped config; problems besides the missing node name:\n%s", problems)
			}
		})
	}
}

// The DaemonSet runs binaries by absolute path: each must be one the image
// build (deploy/image-binaries.txt, read by the Dockerfile) puts there for
// certain, not an optional one.
func TestDaemonSetUsesImageBinaries(t *testing.T) {
	data, err := os.ReadFile("image-binaries.txt")
	if err != nil {
		t.Fatal(err)
	}
	inImage := map[string]bool{}
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && !strings.HasPrefix(f[0], "#") && (len(f) == 2 || f[2] != "optional") {
			inImage["/"+f[0]] = true
		}
	}
	ds := renderBundle(t, "base").ds
	used := []string{ds.Spec.Template.Spec.Containers[0].Command[0]}
	for _, c := range ds.Spec.Template.Spec.InitContainers {
		used = append(used, c.Command[0])
		for _, a := range c.Command {
			if src, ok := strings.CutPrefix(a, "--src="); ok {
				used = append(used, src)
			}
		}
	}
	if len(used) < 3 {
		t.Fatalf("found only %v in the DaemonSet", used)
	}
	for _, p := range used {
		if !inImage[p] {
			t.Errorf("DaemonSet uses %s, which image-binaries.txt does not always build (has %v)", p, inImage)
		}
	}
	dockerfile, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(dockerfile, []byte("< deploy/image-binaries.txt")) {
		t.Error("Dockerfile does not build from deploy/image-binaries.txt")
	}
}

// trustViolations checks the node-scoped trust policy and its binding.
func (b *bundle) trustViolations() []string {
	var v []string
	bad := func(format string, args ...any) { v = append(v, fmt.Sprintf(format, args...)) }
	p, pb := b.vap, b.vapb
	if fp := p.Spec.FailurePolicy; fp == nil || *fp != admissionregistrationv1.Fail {
		bad("ValidatingAdmissionPolicy %s failurePolicy %v, want Fail (trust must fail closed)", p.Name, fp)
	}
	wantUser := fmt.Sprintf("request.userInfo.username == 'system:serviceaccount:%s:%s'", b.sa.Namespace, b.sa.Name)
	if mc := p.Spec.MatchConditions; len(mc) != 1 || mc[0].Expression != wantUser {
		bad("ValidatingAdmissionPolicy %s matchConditions %+v, want exactly [%s] (the agent's ServiceAccount)", p.Name, mc, wantUser)
	}
	coversNodeUpdates := false
	if mc := p.Spec.MatchConstraints; mc != nil {
		for _, r := range mc.ResourceRules {
			if slices.Contains(r.APIGroups, "") && (slices.Contains(r.APIVersions, "v1") || slices.Contains(r.APIVersions, "*")) &&
				slices.Contains(r.Operations, admissionregistrationv1.Update) && slices.Contains(r.Resources, "nodes") &&
				slices.Contains(r.Resources, "nodes/status") && len(r.ResourceNames) == 0 {
				coversNodeUpdates = true
			}
		}
		if mc.NamespaceSelector != nil && len(mc.NamespaceSelector.MatchLabels)+len(mc.NamespaceSelector.MatchExpressions) > 0 ||
			mc.ObjectSelector != nil && len(mc.ObjectSelector.MatchLabels)+len(mc.ObjectSelector.MatchExpressions) > 0 {
			bad("ValidatingAdmissionPolicy %s narrows its match with a selector", p.Name)
		}
	}
	if !coversNodeUpdates {
		bad("ValidatingAdmissionPolicy %s does not match UPDATE of every core/v1 nodes and nodes/status", p.Name)
	}
	if p.Spec.ParamKind != nil {
		bad("ValidatingAdmissionPolicy %s has a paramKind: a missing parameter would change what it enforces", p.Name)
	}
	if pb.Spec.PolicyName != p.Name {
		bad("ValidatingAdmissionPolicyBinding %s binds policy %q, want %q", pb.Name, pb.Spec.PolicyName, p.Name)
	}
	if !slices.Equal(pb.Spec.ValidationActions, []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny}) {
		bad("ValidatingAdmissionPolicyBinding %s validationActions %v, want exactly [Deny]", pb.Name, pb.Spec.ValidationActions)
	}
	if pb.Spec.ParamRef != nil || pb.Spec.MatchResources != nil {
		bad("ValidatingAdmissionPolicyBinding %s narrows the policy (paramRef/matchResources)", pb.Name)
	}
	return v
}
