package lab

import (
	"context"
	"fmt"
	"maps"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PodOptions shape the Pod object the lab publishes for an attached pod,
// as a kubelet would: namespace, labels and container ports (named ports
// are what NetworkPolicies resolve).
type PodOptions struct {
	// Namespace defaults to PodNamespace; it is created if missing.
	Namespace string
	Labels    map[string]string
	Ports     []corev1.ContainerPort
}

// KubeName is the pod's Pod object name (also K8S_POD_NAME for CNI).
func (p *Pod) KubeName(node string) string { return node + "-" + p.Name }

// KubeNamespace is the pod's namespace.
func (p *Pod) KubeNamespace() string {
	if p.Namespace == "" {
		return PodNamespace
	}
	return p.Namespace
}

// publishPod creates the Pod object (spec.nodeName, labels, ports) and
// sets its status (Running, podIP/podIPs) like the kubelet does once the
// sandbox has its network.
func (l *Lab) publishPod(ctx context.Context, n *Node, p *Pod, opt PodOptions) error {
	c, err := l.Admin()
	if err != nil {
		return err
	}
	ns := p.KubeNamespace()
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.KubeName(n.Name), Namespace: ns, Labels: maps.Clone(opt.Labels)},
		Spec: corev1.PodSpec{
			NodeName:   n.Name,
			Containers: []corev1.Container{{Name: "main", Image: "wgmesh-lab/none", Ports: opt.Ports}},
		},
	}
	created, err := c.CoreV1().Pods(ns).Create(ctx, obj, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		// A leftover of an earlier pod of the same name: replace it.
		if err := l.unpublishPod(ctx, n, p); err != nil {
			return err
		}
		created, err = c.CoreV1().Pods(ns).Create(ctx, obj, metav1.CreateOptions{})
	}
	if err != nil {
		return fmt.Errorf("create pod %s/%s: %w", ns, obj.Name, err)
	}
	created.Status = corev1.PodStatus{
		Phase:     corev1.PodRunning,
		HostIP:    n.UnderlayIP,
		PodIP:     p.IP,
		PodIPs:    podIPs(p),
		StartTime: &metav1.Time{Time: created.CreationTimestamp.Time},
	}
	if _, err := c.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("set status of pod %s/%s: %w", ns, obj.Name, err)
	}
	return nil
}

// podIPs is status.podIPs as the kubelet reports it: IPv4 first, then IPv6.
func podIPs(p *Pod) []corev1.PodIP {
	out := []corev1.PodIP{{IP: p.IP}}
	if p.IPv6 != "" {
		out = append(out, corev1.PodIP{IP: p.IPv6})
	}
	return out
}

// unpublishPod deletes the Pod object at once (no kubelet will confirm a
// graceful deletion). A missing object is fine.
func (l *Lab) unpublishPod(ctx context.Context, n *Node, p *Pod) error {
	c, err := l.Admin()
	if err != nil {
		return err
	}
	zero := int64(0)
	err = c.CoreV1().Pods(p.KubeNamespace()).Delete(ctx, p.KubeName(n.Name), metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s/%s: %w", p.KubeNamespace(), p.KubeName(n.Name), err)
	}
	return nil
}
