package kube

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"

	"github.com/wgmesh/wgmesh/mesh"
)

// apiServer answers every request with 404 and records the user agents.
type apiServer struct {
	*httptest.Server
	mu     sync.Mutex
	agents []string
}

func newAPIServer(t *testing.T) *apiServer {
	s := &apiServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.agents = append(s.agents, r.UserAgent())
		s.mu.Unlock()
		http.NotFound(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func writeKubeconfig(t *testing.T, server string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	conf := `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "` + server + `"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestNewClient(t *testing.T) {
	inEnv := newAPIServer(t)
	t.Setenv("KUBECONFIG", writeKubeconfig(t, inEnv.URL))
	t.Setenv("KUBERNETES_SERVICE_HOST", "") // not in a pod
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	explicit := newAPIServer(t)
	explicitPath := writeKubeconfig(t, explicit.URL)

	tests := []struct {
		name      string
		cfg       ClientConfig
		server    *apiServer // nil: NewClient fails
		userAgent string
	}{
		{"explicit file", ClientConfig{Kubeconfig: explicitPath}, explicit, DefaultComponent},
		{"explicit file wins over $KUBECONFIG", ClientConfig{Kubeconfig: explicitPath, DefaultRules: true, UserAgent: "wgmeshctl"}, explicit, "wgmeshctl"},
		{"default rules find $KUBECONFIG", ClientConfig{DefaultRules: true, UserAgent: "wgmeshctl"}, inEnv, "wgmeshctl"},
		// The agent's way: no file means the service account, never a
		// file that happens to be around.
		{"service account only", ClientConfig{}, nil, ""},
		{"missing file", ClientConfig{Kubeconfig: filepath.Join(t.TempDir(), "none")}, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewClient(tt.cfg)
			if tt.server == nil {
				if err == nil || !strings.HasPrefix(err.Error(), "kubernetes client config: ") {
					t.Fatalf("NewClient = %v, want a client config error", err)
				}
				if tt.cfg.Kubeconfig == "" && !errors.Is(err, rest.ErrNotInCluster) {
					t.Errorf("error %v, want rest.ErrNotInCluster", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.server.mu.Lock()
			before := len(tt.server.agents)
			tt.server.mu.Unlock()
			if _, err := c.CoreV1().Nodes().Get(context.Background(), "n0", metav1.GetOptions{}); err == nil {
				t.Fatal("Get answered by a server that only says 404")
			}
			tt.server.mu.Lock()
			defer tt.server.mu.Unlock()
			if diff := cmp.Diff([]string{tt.userAgent}, tt.server.agents[before:]); diff != "" {
				t.Errorf("requests' user agents at the expected server (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRequestKeyRotation(t *testing.T) {
	node := func(annotations map[string]string) *v1.Node {
		return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n0", Annotations: annotations}}
	}
	tests := []struct {
		name    string
		node    *v1.Node
		request string
		wantErr error // nil: success
		want    map[string]string
	}{
		{name: "first request", node: node(map[string]string{mesh.AnnotationPublicKey: "old", "other": "kept"}), request: "r1",
			want: map[string]string{mesh.AnnotationPublicKey: "old", "other": "kept", mesh.AnnotationRotateKey: "r1"}},
		{name: "after an answered one", node: node(map[string]string{mesh.AnnotationPublicKey: "old", mesh.AnnotationRotateKey: "r1", mesh.AnnotationKeyRotated: "r1"}), request: "r2",
			want: map[string]string{mesh.AnnotationPublicKey: "old", mesh.AnnotationRotateKey: "r2", mesh.AnnotationKeyRotated: "r1"}},
		{name: "pending value reused", node: node(map[string]string{mesh.AnnotationPublicKey: "old", mesh.AnnotationRotateKey: "r1"}), request: "r1", wantErr: ErrRequestUsed,
			want: map[string]string{mesh.AnnotationPublicKey: "old", mesh.AnnotationRotateKey: "r1"}},
		{name: "answered value reused", node: node(map[string]string{mesh.AnnotationPublicKey: "old", mesh.AnnotationRotateKey: "r2", mesh.AnnotationKeyRotated: "r1"}), request: "r1", wantErr: ErrRequestUsed,
			want: map[string]string{mesh.AnnotationPublicKey: "old", mesh.AnnotationRotateKey: "r2", mesh.AnnotationKeyRotated: "r1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fake.NewClientset(tt.node)
			before, err := RequestKeyRotation(context.Background(), c, "n0", tt.request, "wgmeshctl")
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("RequestKeyRotation error = %v, want %v", err, tt.wantErr)
			}
			if before == nil || before.Annotations[mesh.AnnotationPublicKey] != "old" {
				t.Errorf("returned node %v, want the node before the request", before)
			}
			n, err := c.CoreV1().Nodes().Get(context.Background(), "n0", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, n.Annotations); diff != "" {
				t.Errorf("annotations (-want +got):\n%s", diff)
			}
			var patches []k8stesting.PatchAction
			for _, a := range c.Actions() {
				if p, ok := a.(k8stesting.PatchAction); ok {
					patches = append(patches, p)
				}
			}
			if tt.wantErr != nil {
				if len(patches) != 0 {
					t.Errorf("a refused request patched the node: %v", patches)
				}
				return
			}
			if len(patches) != 1 || string(patches[0].GetPatch()) != `{"metadata":{"annotations":{"`+mesh.AnnotationRotateKey+`":"`+tt.request+`"}}}` {
				t.Errorf("patches %v, want one merge patch of the request annotation alone", patches)
			}
		})
	}

	c := fake.NewClientset()
	if _, err := RequestKeyRotation(context.Background(), c, "n9", "r1", ""); err == nil || !strings.Contains(err.Error(), `get node "n9"`) {
		t.Errorf("missing node: %v", err)
	}
	if _, err := RequestKeyRotation(context.Background(), fake.NewClientset(node(nil)), "n0", "", ""); err == nil {
		t.Error("an empty request id was accepted")
	}
}
