package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apiserver/pkg/admission/plugin/policy/validating"
	"k8s.io/apiserver/pkg/cel/openapi/resolver"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"

	"github.com/wgmesh/wgmesh/integration/lab"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

const (
	// trustPolicy names the shipped ValidatingAdmissionPolicy and binding.
	trustPolicy = "wgmesh-agent-own-node"
	// trustDenied is how the apiserver names the policy in a denial.
	trustDenied = "ValidatingAdmissionPolicy '" + trustPolicy + "' with binding '" + trustPolicy + "' denied request"
	// trustPropagation bounds how long a created or deleted policy binding
	// takes to reach the apiserver's admission plugin (an informer in the
	// same process: milliseconds idle, seconds on a loaded 2-core box).
	trustPropagation = 30 * time.Second
)

// TestNodeScopedTrust is issue 14 item 4's lab proof on a real apiserver
// (k8s.io/kubernetes v1.37.2) with the policy from deploy/base and the
// agents' own Node-bound ServiceAccount tokens: node2's agent credentials
// cannot change node1's key, endpoint or rotation request, nor anything but
// wgmesh.io/ annotations on its own Node; the agents' own publishing and key
// rotation keep working, and so does an operator's rotate-key of any node.
// A negative control removes the binding and sees node2's patch of node1
// accepted, so it is the policy that denies.
func TestNodeScopedTrust(t *testing.T) {
	ctl := buildWgmeshctl(t)
	l := newLab(t, 2, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	admin, err := l.Admin()
	if err != nil {
		t.Fatal(err)
	}
	agents := map[string]kubernetes.Interface{}
	for _, node := range []string{"node1", "node2"} {
		agents[node] = agentClient(t, l, node)
	}

	t.Run("AgentTokensAreNodeBound", func(t *testing.T) {
		for node, c := range agents {
			who, err := c.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("%s: self subject review: %v", node, err)
			}
			got := []string(who.Status.UserInfo.Extra["authentication.kubernetes.io/node-name"])
			if len(got) != 1 || got[0] != node {
				t.Errorf("%s: agent token carries node-name %v, want [%s]", node, got, node)
			}
		}
	})

	t.Run("PolicyTypeChecksAgainstLiveSchema", func(t *testing.T) { testTrustTypeCheck(t, ctx, admin) })

	before := map[string]map[string]string{}
	for _, node := range []string{"node1", "node2"} {
		before[node] = rnNode(t, admin, node).Annotations
	}
	// The policy was applied before the agents started; wait until it is in
	// force (a dry run changes nothing, and admission runs for it).
	evilKey := "ZXZpbC1rZXktb2Ytbm9kZTIuLi4uLi4uLi4uLi4uLi4="
	keyPatch := annotationPatch(mesh.AnnotationPublicKey, evilKey)
	waitTrust(t, ctx, agents["node2"], "node1", keyPatch, true)

	// The agents of node1 and node2 may have published before the policy
	// was in force; a node added now publishes its first key and endpoint
	// through it.
	t.Run("NewNodePublishesThroughPolicy", func(t *testing.T) {
		n3, err := l.AddNode(ctx, lab.NodeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		agents[n3.Name] = agentClient(t, l, n3.Name)
		priv, err := wgdev.LoadKey(filepath.Join(n3.NodePath("/var/lib/wgmesh"), "private.key"))
		if err != nil {
			t.Fatal(err)
		}
		var ann map[string]string
		// 30 s: the agent publishes right after its first reconcile, which
		// WaitAgentReady (inside AddNode) has already seen; the bound only
		// covers a loaded box's apiserver round trip.
		took, ok := lab.WaitFor(ctx, 30*time.Second, 100*time.Millisecond, func() bool {
			ann = rnNode(t, admin, n3.Name).Annotations
			return ann[mesh.AnnotationPublicKey] == priv.PublicKey().String() && ann[mesh.AnnotationEndpoint] == fmt.Sprintf("%s:%d", n3.UnderlayIP, listenPort)
		})
		if !ok {
			t.Fatalf("%s did not publish its key %s and endpoint %s:%d: annotations %v", n3.Name, priv.PublicKey(), n3.UnderlayIP, listenPort, ann)
		}
		t.Logf("%s published its key and endpoint through the policy (%s after ready)", n3.Name, took.Round(time.Millisecond))
	})

	t.Run("OtherNodeDenied", func(t *testing.T) {
		// Patches only: the agent's role grants no update (PUT), so RBAC
		// refuses that before admission runs.
		c := agents["node2"]
		nodes := c.CoreV1().Nodes()
		for _, tc := range []struct {
			name string
			do   func() error
		}{
			{"key", func() error { return patchNode(ctx, c, "node1", keyPatch) }},
			{"endpoint", func() error {
				return patchNode(ctx, c, "node1", annotationPatch(mesh.AnnotationEndpoint, "198.51.100.12:51820"))
			}},
			{"endpoint-override", func() error {
				return patchNode(ctx, c, "node1", annotationPatch(mesh.AnnotationEndpointOverride, "198.51.100.12:51820"))
			}},
			{"rotation request", func() error {
				return patchNode(ctx, c, "node1", annotationPatch(mesh.AnnotationRotateKey, "e2e-evil"))
			}},
			{"key removed (JSON patch)", func() error {
				_, err := nodes.Patch(ctx, "node1", types.JSONPatchType,
					[]byte(`[{"op":"remove","path":"/metadata/annotations/wgmesh.io~1public-key"}]`), metav1.PatchOptions{})
				return err
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				requireTrustDenied(t, tc.do(), "the wgmesh agent of node node2 may not change Node node1")
			})
		}
		// The operator's tool, run on node2 with node2's credentials.
		n2 := l.State().Nodes["node2"]
		argv, err := l.NodeCommand("node2", ctl, "rotate-key", "--kubeconfig", filepath.Join(n2.Dir, "kubeconfig"),
			"--node-name", "node1", "--wait", "5s")
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), trustDenied) {
			t.Errorf("wgmeshctl rotate-key --node-name node1 with node2's credentials: err %v, want the policy's denial:\n%s", err, out)
		} else {
			t.Logf("wgmeshctl rotate-key --node-name node1 on node2: %s", strings.TrimSpace(string(out)))
		}
		after := rnNode(t, admin, "node1").Annotations
		for _, k := range []string{mesh.AnnotationPublicKey, mesh.AnnotationEndpoint, mesh.AnnotationEndpointOverride, mesh.AnnotationRotateKey} {
			if after[k] != before["node1"][k] {
				t.Errorf("node1 %s changed from %q to %q", k, before["node1"][k], after[k])
			}
		}
	})

	t.Run("OwnNodeOtherFieldsDenied", func(t *testing.T) {
		c := agents["node2"]
		was := rnNode(t, admin, "node2")
		for _, tc := range []struct {
			name, patch, want string
		}{
			{"label", `{"metadata":{"labels":{"node-role.kubernetes.io/control-plane":""}}}`, "labels"},
			{"other annotation", `{"metadata":{"annotations":{"e2e.example.com/x":"y"}}}`, "only wgmesh.io/ annotations"},
			{"finalizer", `{"metadata":{"finalizers":["e2e.example.com/hold"]}}`, "finalizers"},
			{"unschedulable", `{"spec":{"unschedulable":true}}`, "spec or status"},
			{"taint", `{"spec":{"taints":[{"key":"e2e","effect":"NoExecute"}]}}`, "spec or status"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				requireTrustDenied(t, patchNode(ctx, c, "node2", []byte(tc.patch)), tc.want)
			})
		}
		n := rnNode(t, admin, "node2")
		if d := cmp.Diff(was.Spec, n.Spec); d != "" {
			t.Errorf("node2 spec changed (-before +after):\n%s", d)
		}
		if d := cmp.Diff([]any{was.Labels, was.Finalizers}, []any{n.Labels, n.Finalizers}); d != "" {
			t.Errorf("node2 labels or finalizers changed (-before +after):\n%s", d)
		}
	})

	t.Run("TokenWithoutNodeNameDenied", func(t *testing.T) {
		// The agent's own ServiceAccount, but a token bound to nothing: it
		// carries no node name, so it may change no Node, not even "its own".
		exp := int64(600)
		tok, err := admin.CoreV1().ServiceAccounts(lab.AgentNamespace).CreateToken(ctx, lab.AgentServiceAccount,
			&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := l.AgentRESTConfig("node2")
		if err != nil {
			t.Fatal(err)
		}
		cfg.BearerToken, cfg.BearerTokenFile = tok.Status.Token, ""
		c, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		for _, node := range []string{"node1", "node2"} {
			requireTrustDenied(t, patchNode(ctx, c, node, annotationPatch(mesh.AnnotationEndpoint, "198.51.100.99:51820")),
				"no authentication.kubernetes.io/node-name")
		}
	})

	// Allowed: the agent's own rotation and publish (node2, on the node,
	// with its own credentials) and an operator's rotation of node1.
	t.Run("OwnRotationAndOperatorRotation", func(t *testing.T) {
		n2 := l.State().Nodes["node2"]
		old2, old1 := rnPublishedKey(t, admin, "node2"), rnPublishedKey(t, admin, "node1")
		argv, err := l.NodeCommand("node2", ctl, "rotate-key", "--kubeconfig", filepath.Join(n2.Dir, "kubeconfig"),
			"--run-dir", "/run/wgmesh", "--wait", "30s")
		if err != nil {
			t.Fatal(err)
		}
		if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("wgmeshctl rotate-key on node2 with its own credentials: %v\n%s", err, out)
		} else {
			t.Logf("node2 rotates itself: %s", strings.TrimSpace(string(out)))
		}
		ul, _ := l.Underlay()
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ul, ctl, "rotate-key", "--kubeconfig", l.AdminKubeconfig(),
			"--node-name", "node1", "--wait", "30s").CombinedOutput()
		if err != nil {
			t.Fatalf("operator's wgmeshctl rotate-key --node-name node1: %v\n%s", err, out)
		}
		t.Logf("operator rotates node1: %s", strings.TrimSpace(string(out)))
		// Each agent published its new key itself, through the policy.
		for node, old := range map[string]string{"node1": old1, "node2": old2} {
			pub := rnPublishedKey(t, admin, node)
			priv, err := wgdev.LoadKey(filepath.Join(l.State().Nodes[node].NodePath("/var/lib/wgmesh"), "private.key"))
			if err != nil {
				t.Fatal(err)
			}
			if pub == old || pub != priv.PublicKey().String() {
				t.Errorf("%s publishes %s (was %s), its key file's public key is %s", node, pub, old, priv.PublicKey())
			}
		}
		// 40 s: the suite's bound for a first matrix after keys change
		// (see requireMatrixWithin's callers); the time taken is logged.
		requireMatrixWithin(t, ctx, l, 40*time.Second)
	})

	// Negative control: without the binding, node2's credentials rewrite
	// node1's endpoint; with it back, they are denied again.
	t.Run("WithoutBindingAccepted", func(t *testing.T) {
		binding, err := admin.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Get(ctx, trustPolicy, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := admin.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Delete(ctx, trustPolicy, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		orig := rnNode(t, admin, "node1").Annotations[mesh.AnnotationEndpoint]
		const bogus = "198.51.100.250:51820"
		epPatch := annotationPatch(mesh.AnnotationEndpoint, bogus)
		waitTrust(t, ctx, agents["node2"], "node1", epPatch, false)
		n, err := agents["node2"].CoreV1().Nodes().Patch(ctx, "node1", types.MergePatchType, epPatch, metav1.PatchOptions{})
		if err != nil {
			t.Fatalf("without the binding node2's patch of node1 was refused: %v", err)
		}
		if got := n.Annotations[mesh.AnnotationEndpoint]; got != bogus {
			t.Errorf("node1 endpoint after node2's accepted patch: %q, want %q", got, bogus)
		}
		t.Logf("without the binding node2's credentials set node1's endpoint to %s", bogus)
		if err := patchNode(ctx, admin, "node1", annotationPatch(mesh.AnnotationEndpoint, orig)); err != nil {
			t.Fatal(err)
		}
		binding.ResourceVersion, binding.UID, binding.ManagedFields = "", "", nil
		if _, err := admin.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitTrust(t, ctx, agents["node2"], "node1", epPatch, true)
	})

	// Nothing the agents did on their own ran into the policy.
	for node := range agents {
		raw, err := os.ReadFile(l.AgentLog(node))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(raw), "\n") {
			if strings.Contains(line, trustPolicy) || strings.Contains(line, "forbidden") {
				t.Errorf("agent on %s was refused: %s", node, line)
			}
		}
	}
}

// testTrustTypeCheck type-checks the live policy against the apiserver's
// Node schema with the checker kube-controller-manager uses for a policy's
// status.typeChecking (the lab runs no controller manager).
func testTrustTypeCheck(t *testing.T, ctx context.Context, admin kubernetes.Interface) {
	p, err := admin.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, trustPolicy, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	disc := memory.NewMemCacheClient(admin.Discovery())
	checker := &validating.TypeChecker{
		SchemaResolver: &resolver.ClientDiscoveryResolver{Discovery: disc},
		RestMapper:     restmapper.NewDeferredDiscoveryRESTMapper(disc),
	}
	if w := checker.Check(p); len(w) > 0 {
		t.Errorf("the shipped policy has type-checking warnings against the live Node schema: %+v", w)
	}
	// The checker sees the schema: a misspelt field is reported.
	broken := p.DeepCopy()
	broken.Spec.Validations = append(broken.Spec.Validations, admissionregistrationv1.Validation{Expression: "object.spec.podCIDRz == oldObject.spec.podCIDRz"})
	if w := checker.Check(broken); len(w) == 0 || !strings.Contains(w[0].Warning, "podCIDRz") {
		t.Errorf("type checker did not report a misspelt field: %+v", w)
	}
}

// agentClient is a client with the node's agent credentials.
func agentClient(t *testing.T, l *lab.Lab, node string) kubernetes.Interface {
	t.Helper()
	cfg, err := l.AgentRESTConfig(node)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func annotationPatch(key, value string) []byte {
	p, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{key: value}}})
	return p
}

func patchNode(ctx context.Context, c kubernetes.Interface, node string, patch []byte) error {
	_, err := c.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}

// requireTrustDenied fails t unless err is the shipped policy's denial
// (403, the policy and binding named) mentioning want.
func requireTrustDenied(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("allowed; want the policy's denial mentioning %q", want)
	case !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), trustDenied) || !strings.Contains(err.Error(), want):
		t.Errorf("error %v; want 403 %q mentioning %q", err, trustDenied, want)
	default:
		t.Logf("denied: %v", err)
	}
}

// waitTrust waits until a dry-run patch of node by c is denied by the
// policy (denied) or accepted (!denied).
func waitTrust(t *testing.T, ctx context.Context, c kubernetes.Interface, node string, patch []byte, denied bool) {
	t.Helper()
	var last error
	took, ok := lab.WaitFor(ctx, trustPropagation, 100*time.Millisecond, func() bool {
		_, last = c.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}})
		if denied {
			return last != nil && strings.Contains(last.Error(), trustDenied)
		}
		return last == nil
	})
	if !ok {
		t.Fatalf("dry-run patch of %s: want denied=%v within %s, last error: %v", node, denied, trustPropagation, last)
	}
	t.Logf("policy denied=%v for a dry-run patch of %s after %s", denied, node, took.Round(time.Millisecond))
}
