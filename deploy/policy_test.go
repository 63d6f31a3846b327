package deploy_test

// Offline proof of the node-scoped trust policy: the shipped
// ValidatingAdmissionPolicy and its binding, as every kustomization renders
// them, run in k8s.io/apiserver's own ValidatingAdmissionPolicy admission
// plugin (the code kube-apiserver runs, at the version of our k8s.io
// libraries) against Node updates from the agent and from others. The lab
// suite (integration/e2e TestNodeScopedTrust) proves the same on a real
// apiserver with real tokens.

import (
	"context"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/admission/plugin/policy/validating"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	kubescheme "k8s.io/client-go/kubernetes/scheme"
)

// The policy's user: the agent's ServiceAccount in deploy/base.
const agentUser = "system:serviceaccount:wgmesh-system:wgmesh-agent"

// policyObjects returns the shipped policy and binding of a rendering.
func policyObjects(t *testing.T, dir string) (*admissionregistrationv1.ValidatingAdmissionPolicy, *admissionregistrationv1.ValidatingAdmissionPolicyBinding) {
	t.Helper()
	b := renderBundle(t, dir)
	return b.vap, b.vapb
}

// newPolicyPlugin runs the apiserver's ValidatingAdmissionPolicy plugin over
// a fake API that holds exactly objs, and waits until it has compiled them.
func newPolicyPlugin(t *testing.T, objs ...runtime.Object) *validating.Plugin {
	t.Helper()
	p, err := validating.NewPlugin(nil)
	if err != nil {
		t.Fatal(err)
	}
	client := fake.NewClientset(objs...)
	factory := informers.NewSharedInformerFactory(client, 0)
	mapper := meta.NewDefaultRESTMapper([]schema.GroupVersion{corev1.SchemeGroupVersion})
	mapper.Add(corev1.SchemeGroupVersion.WithKind("Node"), meta.RESTScopeRoot)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	p.SetExternalKubeInformerFactory(factory)
	p.SetExternalKubeClientSet(client)
	p.SetRESTMapper(mapper)
	p.SetDynamicClient(dynamicfake.NewSimpleDynamicClient(runtime.NewScheme()))
	p.SetUnconditionalAuthorizer(authorizerfactory.NewAlwaysAllowAuthorizer())
	p.SetDrainedNotification(stop)
	if err := p.ValidateInitialization(); err != nil {
		t.Fatal(err)
	}
	factory.Start(stop)
	// The plugin itself waits up to 10 s for its informers and compilation
	// on the first request; this makes a slow start a clear failure.
	if !p.WaitForReady() {
		t.Fatal("policy plugin not ready")
	}
	return p
}

func testNode(name string, mutate func(n *corev1.Node)) *corev1.Node {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:            name,
			UID:             types.UID("uid-" + name),
			ResourceVersion: "7",
			Labels:          map[string]string{"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
			Annotations: map[string]string{
				"wgmesh.io/public-key":                                   "b2xkLWtleS0wMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDA=",
				"wgmesh.io/endpoint":                                     "198.51.100.11:51820",
				"node.alpha.kubernetes.io/ttl":                           "0",
				"volumes.kubernetes.io/controller-managed-attach-detach": "true",
			},
		},
		Spec: corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24"}},
		Status: corev1.NodeStatus{
			Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "198.51.100.11"}},
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
		},
	}
	if mutate != nil {
		mutate(n)
	}
	return n
}

// agent is the agent's identity with a token bound to node (a Pod- or
// Node-bound ServiceAccount token); node "" is a token without node name.
func agent(node string) user.Info {
	u := &user.DefaultInfo{
		Name:   agentUser,
		UID:    "sa-uid",
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:wgmesh-system", "system:authenticated"},
		Extra:  map[string][]string{"authentication.kubernetes.io/credential-id": {"JTI=abc"}},
	}
	if node != "" {
		u.Extra[serviceaccount.NodeNameKey] = []string{node}
		u.Extra[serviceaccount.NodeUIDKey] = []string{"uid-" + node}
	}
	return u
}

var operator = &user.DefaultInfo{Name: "kubernetes-admin", Groups: []string{"system:masters", "system:authenticated"}}

func setAnn(k, v string) func(*corev1.Node) { return func(n *corev1.Node) { n.Annotations[k] = v } }

// update runs one Node update through the plugin.
func update(p *validating.Plugin, who user.Info, old, new *corev1.Node, subresource string) error {
	attrs := admission.NewAttributesRecord(new, old, corev1.SchemeGroupVersion.WithKind("Node"), "", new.Name,
		corev1.SchemeGroupVersion.WithResource("nodes"), subresource, admission.Update, &metav1.UpdateOptions{}, false, who)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return p.Validate(ctx, attrs, admission.NewObjectInterfacesFromScheme(kubescheme.Scheme))
}

func TestNodeScopedTrustPolicy(t *testing.T) {
	const deny = "ValidatingAdmissionPolicy 'wgmesh-agent-own-node' with binding 'wgmesh-agent-own-node' denied request"
	tests := []struct {
		name        string
		who         user.Info
		node        string // the Node being updated
		subresource string
		mutate      func(*corev1.Node)
		want        string // "" = allowed; else a substring of the denial
	}{
		{"own node publishes key", agent("node1"), "node1", "", setAnn("wgmesh.io/public-key", "bmV3LWtleS0wMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDA="), ""},
		{"own node publishes endpoint", agent("node1"), "node1", "", setAnn("wgmesh.io/endpoint", "198.51.100.99:51820"), ""},
		{"own node answers rotation", agent("node1"), "node1", "", func(n *corev1.Node) {
			n.Annotations["wgmesh.io/key-rotated"] = "r1"
			n.Annotations["wgmesh.io/public-key"] = "bmV3LWtleS0wMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDA="
		}, ""},
		{"own node removes a wgmesh annotation", agent("node1"), "node1", "", func(n *corev1.Node) { delete(n.Annotations, "wgmesh.io/endpoint") }, ""},
		{"own node, nothing changed", agent("node1"), "node1", "", nil, ""},

		{"other node's key", agent("node2"), "node1", "", setAnn("wgmesh.io/public-key", "ZXZpbC1rZXktMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDA="),
			"the wgmesh agent of node node2 may not change Node node1"},
		{"other node's endpoint", agent("node2"), "node1", "", setAnn("wgmesh.io/endpoint", "198.51.100.12:51820"),
			"the wgmesh agent of node node2 may not change Node node1"},
		{"other node's rotation request", agent("node2"), "node1", "", setAnn("wgmesh.io/rotate-key", "r9"), "may not change Node node1"},
		{"other node, no change at all", agent("node2"), "node1", "", nil, "may not change Node node1"},
		{"token without node name", agent(""), "node1", "", setAnn("wgmesh.io/endpoint", "198.51.100.99:51820"),
			"no authentication.kubernetes.io/node-name"},
		{"token with two node names", &user.DefaultInfo{Name: agentUser, Extra: map[string][]string{
			serviceaccount.NodeNameKey: {"node1", "node2"}}}, "node1", "", setAnn("wgmesh.io/endpoint", "198.51.100.99:51820"),
			"no authentication.kubernetes.io/node-name"},
		{"own node, other annotation added", agent("node1"), "node1", "", setAnn("example.com/x", "y"), "only wgmesh.io/ annotations"},
		{"own node, other annotation changed", agent("node1"), "node1", "", setAnn("node.alpha.kubernetes.io/ttl", "30"), "only wgmesh.io/ annotations"},
		{"own node, other annotation removed", agent("node1"), "node1", "", func(n *corev1.Node) { delete(n.Annotations, "node.alpha.kubernetes.io/ttl") },
			"only wgmesh.io/ annotations"},
		{"own node, annotation named like ours", agent("node1"), "node1", "", setAnn("evil.wgmesh.io/public-key", "x"), "only wgmesh.io/ annotations"},
		{"own node, label", agent("node1"), "node1", "", func(n *corev1.Node) { n.Labels["node-role.kubernetes.io/control-plane"] = "" }, "labels"},
		{"own node, labels removed", agent("node1"), "node1", "", func(n *corev1.Node) { n.Labels = nil }, "labels"},
		{"own node, finalizer", agent("node1"), "node1", "", func(n *corev1.Node) { n.Finalizers = []string{"example.com/hold"} }, "finalizers"},
		{"own node, owner reference", agent("node1"), "node1", "", func(n *corev1.Node) {
			n.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "ConfigMap", Name: "gone", UID: "u"}}
		}, "owner references"},
		{"own node, taint added", agent("node1"), "node1", "", func(n *corev1.Node) { n.Spec.Taints = []corev1.Taint{{Key: "k", Effect: corev1.TaintEffectNoExecute}} },
			"spec or status"},
		{"own node, unschedulable", agent("node1"), "node1", "", func(n *corev1.Node) { n.Spec.Unschedulable = true }, "spec or status"},
		{"own node, podCIDR", agent("node1"), "node1", "", func(n *corev1.Node) { n.Spec.PodCIDRs = []string{"10.244.2.0/24"} }, "spec or status"},
		{"own node status", agent("node1"), "node1", "status", func(n *corev1.Node) {
			n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "198.51.100.12"}}
		}, "spec or status"},
		{"other node status", agent("node2"), "node1", "status", func(n *corev1.Node) { n.Status.Conditions = nil }, "may not change Node node1"},
		{"operator rotates another node", operator, "node1", "", setAnn("wgmesh.io/rotate-key", "r2"), ""},
		{"operator sets any node's endpoint", operator, "node1", "", setAnn("wgmesh.io/endpoint-override", "node1.example:51820"), ""},
		{"operator labels and taints", operator, "node1", "", func(n *corev1.Node) {
			n.Labels["a"] = "b"
			n.Spec.Taints = []corev1.Taint{{Key: "k", Effect: corev1.TaintEffectNoSchedule}}
		}, ""},
		{"kubelet updates its status", &user.DefaultInfo{Name: "system:node:node1", Groups: []string{"system:nodes"}}, "node1", "status",
			func(n *corev1.Node) { n.Status.Conditions = nil }, ""},
		{"other ServiceAccount", &user.DefaultInfo{Name: "system:serviceaccount:kube-system:node-controller"}, "node1", "",
			setAnn("wgmesh.io/public-key", "x"), ""},
	}
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			vap, vapb := policyObjects(t, dir)
			p := newPolicyPlugin(t, vap, vapb)
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					old := testNode(tt.node, nil)
					err := update(p, tt.who, old, testNode(tt.node, tt.mutate), tt.subresource)
					switch {
					case tt.want == "" && err != nil:
						t.Errorf("denied: %v", err)
					case tt.want != "" && err == nil:
						t.Errorf("allowed, want a denial mentioning %q", tt.want)
					case tt.want != "":
						if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), deny) || !strings.Contains(err.Error(), tt.want) {
							t.Errorf("denial %v (forbidden %v), want 403 from the policy mentioning %q", err, apierrors.IsForbidden(err), tt.want)
						} else {
							t.Logf("denied: %v", err)
						}
					}
				})
			}
		})
	}
}

// A Node the kubelet registered without any annotation: the agent's first
// publish adds them (the "no annotations" side of the policy's variables).
func TestNodeScopedTrustFirstPublish(t *testing.T) {
	vap, vapb := policyObjects(t, "base")
	p := newPolicyPlugin(t, vap, vapb)
	bare := func(n *corev1.Node) { n.Annotations = nil }
	published := testNode("node1", func(n *corev1.Node) {
		n.Annotations = map[string]string{"wgmesh.io/public-key": "a2V5", "wgmesh.io/endpoint": "198.51.100.11:51820"}
	})
	if err := update(p, agent("node1"), testNode("node1", bare), published, ""); err != nil {
		t.Errorf("first publish on a Node without annotations: %v", err)
	}
	if err := update(p, agent("node2"), testNode("node1", bare), published, ""); err == nil {
		t.Error("node2 published on node1 without annotations")
	}
	other := testNode("node1", func(n *corev1.Node) { n.Annotations = map[string]string{"example.com/x": "y"} })
	if err := update(p, agent("node1"), testNode("node1", bare), other, ""); err == nil {
		t.Error("a non-wgmesh annotation on a Node without annotations was allowed")
	}
}

// The denials above come from the policy and its binding, not from the
// plugin: without the binding the same requests pass, and with an
// audit-only binding too.
func TestNodeScopedTrustNeedsBinding(t *testing.T) {
	vap, vapb := policyObjects(t, "base")
	evil := testNode("node1", setAnn("wgmesh.io/public-key", "ZXZpbC1rZXktMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDA="))
	if err := update(newPolicyPlugin(t, vap, vapb), agent("node2"), testNode("node1", nil), evil, ""); err == nil {
		t.Fatal("the shipped policy and binding allowed node2 to rewrite node1's key")
	}
	if err := update(newPolicyPlugin(t, vap), agent("node2"), testNode("node1", nil), evil, ""); err != nil {
		t.Errorf("without a binding: %v", err)
	}
	audit := vapb.DeepCopy()
	audit.Spec.ValidationActions = []admissionregistrationv1.ValidationAction{admissionregistrationv1.Audit}
	if err := update(newPolicyPlugin(t, vap, audit), agent("node2"), testNode("node1", nil), evil, ""); err != nil {
		t.Errorf("with an audit-only binding: %v", err)
	}
}
