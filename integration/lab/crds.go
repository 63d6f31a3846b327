package lab

import (
	"bytes"
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// Dynamic returns a cluster-admin dynamic client for the lab apiserver
// (for custom resources such as Peers).
func (l *Lab) Dynamic() (dynamic.Interface, error) {
	return dynamic.NewForConfig(l.AdminRESTConfig())
}

// applyCRDs creates the CustomResourceDefinitions of deploy/base (the
// Peer CRD), as `kubectl apply -k deploy/` would, and waits until the
// apiserver serves them, so that agents started afterwards find them.
func (l *Lab) applyCRDs(ctx context.Context) error {
	dyn, err := l.Dynamic()
	if err != nil {
		return err
	}
	var crds []*unstructured.Unstructured
	err = baseDocs(func(path string, doc []byte) error {
		if !bytes.Contains(doc, []byte("kind: CustomResourceDefinition")) {
			return nil
		}
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(js); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		crds = append(crds, u)
		return nil
	})
	if err != nil {
		return fmt.Errorf("read deploy/base: %w", err)
	}
	for _, u := range crds {
		if _, err := dyn.Resource(crdGVR).Create(ctx, u, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create CRD %s: %w", u.GetName(), err)
		}
	}
	for _, u := range crds {
		if !l.waitEstablished(ctx, dyn, u.GetName(), 30*time.Second) {
			return fmt.Errorf("CRD %s not established within 30s", u.GetName())
		}
	}
	return nil
}

func (l *Lab) waitEstablished(ctx context.Context, dyn dynamic.Interface, name string, limit time.Duration) bool {
	_, ok := WaitFor(ctx, limit, 100*time.Millisecond, func() bool {
		u, err := dyn.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			if m, ok := c.(map[string]any); ok && m["type"] == "Established" && m["status"] == "True" {
				return true
			}
		}
		return false
	})
	return ok
}
