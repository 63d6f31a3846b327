package kube

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/wgmesh/wgmesh/mesh"
)

// ClientConfig says where a client's credentials come from. The agent and
// wgmeshctl build their clients here so both read a kubeconfig the same way.
type ClientConfig struct {
	// Kubeconfig is the kubeconfig file to use. Empty: the in-cluster
	// service account, or with DefaultRules the usual search.
	Kubeconfig string
	// DefaultRules makes an empty Kubeconfig search $KUBECONFIG and
	// ~/.kube/config before falling back to the service account: what a
	// command-line tool does. The agent leaves it off, so a pod never picks
	// up a stray file.
	DefaultRules bool
	// UserAgent names the client to the API server; DefaultComponent if
	// empty.
	UserAgent string
}

// NewClient builds a clientset. It reads the kubeconfig or the service
// account's files and contacts no server.
func NewClient(cfg ClientConfig) (kubernetes.Interface, error) {
	rc, err := restConfig(cfg)
	if err != nil {
		return nil, err
	}
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return c, nil
}

// NewDynamicClient builds a dynamic client (for the Peer objects, which
// have no generated clientset) from the same credentials as NewClient. It
// contacts no server.
func NewDynamicClient(cfg ClientConfig) (dynamic.Interface, error) {
	rc, err := restConfig(cfg)
	if err != nil {
		return nil, err
	}
	c, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	return c, nil
}

func restConfig(cfg ClientConfig) (*rest.Config, error) {
	var rc *rest.Config
	var err error
	switch {
	case cfg.Kubeconfig != "":
		rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: cfg.Kubeconfig}
		rc, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	case cfg.DefaultRules:
		rules := clientcmd.NewDefaultClientConfigLoadingRules()
		rc, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	default:
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	rc.UserAgent = cmp.Or(cfg.UserAgent, DefaultComponent)
	return rc, nil
}

// patchAnnotations merges annotations into the Node's metadata.annotations
// with a JSON merge patch: other fields and other annotations are never
// written, so there is no conflict with the kubelet or anyone else.
func patchAnnotations(ctx context.Context, c kubernetes.Interface, node, fieldManager string, annotations map[string]string) error {
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"annotations": annotations},
	})
	if err != nil {
		return fmt.Errorf("encode annotation patch: %w", err)
	}
	if _, err := c.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: fieldManager}); err != nil {
		return fmt.Errorf("patch node %q annotations: %w", node, err)
	}
	return nil
}

// ErrRequestUsed: a key rotation request value the Node already carries
// (pending or answered); the agent answers each value once.
var ErrRequestUsed = errors.New("request id already used")

// RequestKeyRotation asks node's agent for a new WireGuard key: it sets
// mesh.AnnotationRotateKey to request with the same merge patch the agent
// publishes its key with. It returns the Node as read just before, whose
// mesh.AnnotationPublicKey is the key being replaced. The agent answers by
// publishing its new key with mesh.AnnotationKeyRotated set to request.
func RequestKeyRotation(ctx context.Context, c kubernetes.Interface, node, request, fieldManager string) (*v1.Node, error) {
	if request == "" {
		return nil, errors.New("empty rotation request id")
	}
	n, err := c.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get node %q: %w", node, err)
	}
	if request == n.Annotations[mesh.AnnotationRotateKey] || request == n.Annotations[mesh.AnnotationKeyRotated] {
		return n, fmt.Errorf("%w: %q on node %q: pick a new one", ErrRequestUsed, request, node)
	}
	if err := patchAnnotations(ctx, c, node, cmp.Or(fieldManager, DefaultComponent), map[string]string{mesh.AnnotationRotateKey: request}); err != nil {
		return n, err
	}
	return n, nil
}
