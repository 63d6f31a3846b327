package lab

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// LabPodLabel marks the lab's own pods (kubelet mode) with their node.
const LabPodLabel = "wgmesh-lab/node"

// addKubeletPod is AddPod in the kubelet mode: a real Pod (agnhost netexec,
// HTTP 8080 and UDP 8081) bound to the node, started by its kubelet through
// containerd and attached by wgmesh as the runtime calls it. The lab records
// its IP and the sandbox's network namespace (containerd's /run/netns/cni-*
// inside the node), so pod-exec, status and ping-matrix work as before.
func (l *Lab) addKubeletPod(ctx context.Context, n *Node, opt PodOptions, save func() error) (*Pod, error) {
	name := fmt.Sprintf("p%d", n.NextPod)
	n.NextPod++
	p := &Pod{Name: name, Namespace: opt.Namespace}
	c, err := l.Admin()
	if err != nil {
		return nil, err
	}
	ns := p.KubeNamespace()
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create namespace %s: %w", ns, err)
	}
	labels := maps.Clone(opt.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[LabPodLabel] = n.Name
	grace := int64(1)
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.KubeName(n.Name), Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:                      n.Name,
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name:            "agnhost",
				Image:           AgnhostImage,
				ImagePullPolicy: corev1.PullNever,
				Args:            []string{"netexec", "--http-port=8080", "--udp-port=8081"},
				Ports:           opt.Ports,
			}},
		},
	}
	if _, err := c.CoreV1().Pods(ns).Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create pod %s/%s: %w", ns, obj.Name, err)
	}
	n.Pods[name] = p
	if err := save(); err != nil {
		return nil, err
	}
	ips, err := l.waitPodRunning(ctx, ns, obj.Name, 2*time.Minute)
	if err != nil {
		return nil, err
	}
	// status.podIPs lists the node's primary family first, IPv6 on a node
	// whose first node IP is IPv6: pick by family.
	for _, s := range ips {
		a, err := netip.ParseAddr(s)
		switch {
		case err != nil:
		case a.Is4() && p.IP == "":
			p.IP = s
		case a.Is6() && p.IPv6 == "":
			p.IPv6 = s
		}
	}
	if p.IP == "" || (l.st.DualStack && p.IPv6 == "") {
		return nil, fmt.Errorf("pod %s/%s: status.podIPs %v, want an address of each of the lab's families", ns, obj.Name, ips)
	}
	netns, err := l.findPodNetns(ctx, n, p.IP)
	if err != nil {
		return nil, err
	}
	p.Netns = netns
	l.cfg.Log.Info("pod running", "node", n.Name, "pod", name, "ip", p.IP, "ipv6", p.IPv6, "netns", netns)
	return p, nil
}

// waitPodRunning waits for phase Running with a pod IP and returns
// status.podIPs.
func (l *Lab) waitPodRunning(ctx context.Context, ns, name string, timeout time.Duration) ([]string, error) {
	c, err := l.Admin()
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		pod, err := c.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			if pod.Status.Phase == corev1.PodRunning && pod.Status.PodIP != "" {
				var ips []string
				for _, ip := range pod.Status.PodIPs {
					ips = append(ips, ip.IP)
				}
				return ips, nil
			}
			last = string(pod.Status.Phase)
			for _, cs := range pod.Status.ContainerStatuses {
				if w := cs.State.Waiting; w != nil {
					last += " " + w.Reason + ": " + w.Message
				}
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			ev, _ := c.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
			var msgs []string
			if ev != nil {
				for _, e := range ev.Items {
					msgs = append(msgs, e.Reason+": "+e.Message)
				}
			}
			return nil, fmt.Errorf("pod %s/%s not running after %s (last: %s; events: %s)", ns, name, timeout, last, strings.Join(msgs, " | "))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// findPodNetns returns the name (under the node's /run/netns) of the
// network namespace holding ip: containerd's sandbox namespace.
func (l *Lab) findPodNetns(ctx context.Context, n *Node, ip string) (string, error) {
	// One shell in the node's mount namespace walks containerd's netns files.
	script := `for f in /run/netns/*; do if nsenter --net="$f" ip -o -4 addr show 2>/dev/null | grep -qw "` + ip + `"; then echo "$f"; fi; done`
	out, err := output(ctx, "nsenter", "--mount="+n.MountNS, "--", "/bin/sh", "-c", script)
	if err != nil {
		return "", err
	}
	f := strings.TrimSpace(string(out))
	if f == "" || strings.Contains(f, "\n") {
		return "", fmt.Errorf("node %s: no single network namespace holds %s (found %q)", n.Name, ip, f)
	}
	return filepath.Base(f), nil
}

// removeKubeletPod deletes the Pod and waits until it is gone (the kubelet
// stops it and the runtime calls CNI DEL).
func (l *Lab) removeKubeletPod(ctx context.Context, n *Node, p *Pod) error {
	c, err := l.Admin()
	if err != nil {
		return err
	}
	ns, name := p.KubeNamespace(), p.KubeName(n.Name)
	if err := c.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s/%s: %w", ns, name, err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := c.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pod %s/%s still there a minute after delete", ns, name)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}
