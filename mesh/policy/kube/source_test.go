package kube

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/wgmesh/wgmesh/mesh/policy"
)

func testPod(name, node, ip string, labels map[string]string) *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: name, Labels: labels, Annotations: map[string]string{"big": "x"}},
		Spec: v1.PodSpec{NodeName: node, Containers: []v1.Container{{Name: "c", Image: "img",
			Env:   []v1.EnvVar{{Name: "A", Value: "b"}},
			Ports: []v1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
		Status: v1.PodStatus{Phase: v1.PodRunning, PodIPs: []v1.PodIP{{IP: ip}}},
	}
}

func startSource(t *testing.T, objs ...any) (*Source, *fake.Clientset) {
	t.Helper()
	client := fake.NewClientset()
	ctx := context.Background()
	for _, o := range objs {
		var err error
		switch o := o.(type) {
		case *v1.Namespace:
			_, err = client.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{})
		case *v1.Pod:
			_, err = client.CoreV1().Pods(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *networkingv1.NetworkPolicy:
			_, err = client.NetworkingV1().NetworkPolicies(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	s, err := New(Config{Client: client, NodeName: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { s.Run(runCtx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(5 * time.Second)
	for !s.HasSynced() {
		if time.Now().After(deadline) {
			t.Fatal("informers did not sync")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s, client
}

func waitSignal(t *testing.T, s *Source, what string) {
	t.Helper()
	select {
	case <-s.Changed():
	case <-time.After(5 * time.Second):
		t.Fatalf("no change signal after %s", what)
	}
}

func drain(s *Source) {
	for {
		select {
		case <-s.Changed():
		case <-time.After(100 * time.Millisecond):
			return
		}
	}
}

func TestSourceSnapshotAndSignals(t *testing.T) {
	ns := &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "prod", Labels: map[string]string{"team": "a"}}}
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "deny"}}
	s, client := startSource(t, ns, np,
		testPod("local", "n1", "10.244.1.5", map[string]string{"app": "a"}),
		testPod("remote", "n2", "10.244.2.5", map[string]string{"app": "b"}))

	in, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if len(in.Pods) != 2 || len(in.Namespaces) != 1 || len(in.Policies) != 1 || in.Namespaces[0].Labels["team"] != "a" {
		t.Fatalf("snapshot: %+v", in)
	}
	rs := policy.Compile(policy.Input{Node: "n1", Pods: in.Pods, Namespaces: in.Namespaces, Policies: in.Policies})
	if len(rs.Targets) != 1 || rs.Targets[0].Pod.Name != "local" || rs.Targets[0].IPs[0] != netip.MustParseAddr("10.244.1.5") {
		t.Errorf("compiled from the snapshot: %+v", rs.Targets)
	}
	// The cache holds slim pods.
	cached, err := s.pods.Pods("prod").Get("local")
	if err != nil {
		t.Fatal(err)
	}
	if len(cached.Annotations) != 0 || len(cached.Spec.Containers) != 1 || len(cached.Spec.Containers[0].Env) != 0 ||
		cached.Spec.Containers[0].Ports[0].Name != "http" || cached.Status.PodIPs[0].IP != "10.244.1.5" {
		t.Errorf("cached pod not slimmed as expected: %+v", cached)
	}

	ctx := context.Background()
	drain(s)
	p := testPod("new", "n1", "10.244.1.6", nil)
	if _, err := client.CoreV1().Pods("prod").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitSignal(t, s, "pod create")
	ns.Labels["team"] = "b"
	if _, err := client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitSignal(t, s, "namespace update")
	if err := client.NetworkingV1().NetworkPolicies("prod").Delete(ctx, "deny", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitSignal(t, s, "policy delete")
	in, _ = s.Snapshot()
	if len(in.Policies) != 0 || len(in.Pods) != 3 || in.Namespaces[0].Labels["team"] != "b" {
		t.Errorf("snapshot after changes: %d policies, %d pods, ns labels %v", len(in.Policies), len(in.Pods), in.Namespaces[0].Labels)
	}

	// A delete the watch missed arrives as a tombstone, possibly without
	// the object.
	drain(s)
	handler{kind: "pod", s: s}.delete(cache.DeletedFinalStateUnknown{Key: "prod/gone", Obj: p})
	waitSignal(t, s, "tombstone")
	handler{kind: "pod", s: s}.delete(cache.DeletedFinalStateUnknown{Key: "prod/gone"})
	waitSignal(t, s, "tombstone without object")
}

func TestSourceWarnRecordsEventOnPolicy(t *testing.T) {
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "bad", UID: "u1"}}
	s, client := startSource(t, np)
	s.Warn("prod/bad", policy.ReasonNotEnforceable, "cannot be enforced")
	waitEvent(t, client, "prod", "bad", policy.ReasonNotEnforceable)
}

func waitEvent(t *testing.T, client *fake.Clientset, ns, name, reason string) v1.Event {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		evs, err := client.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs.Items {
			if e.InvolvedObject.Kind == "NetworkPolicy" && e.InvolvedObject.Name == name && e.Reason == reason && e.Type == v1.EventTypeWarning {
				return e
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s event on NetworkPolicy %s/%s; events: %+v", reason, ns, name, evs.Items)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// recordingDataplane keeps the last ruleset.
type recordingDataplane struct {
	mu   sync.Mutex
	last *policy.Ruleset
}

func (d *recordingDataplane) Apply(_ context.Context, rs policy.Ruleset) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.last = &rs
	return nil
}

func (d *recordingDataplane) get() *policy.Ruleset {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.last
}

// A policy the API server would reject today but that sits in etcd (an
// old object, or one written past validation) fails closed for the pods
// it selects and is reported as an event on the policy.
func TestControllerFailsClosedAndReports(t *testing.T) {
	bad := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "legacy"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{IPBlock: &networkingv1.IPBlock{CIDR: "010.000.0.0/8"}}}}},
		},
	}
	s, client := startSource(t, bad,
		testPod("a", "n1", "10.244.1.5", map[string]string{"app": "a"}),
		testPod("b", "n1", "10.244.1.6", map[string]string{"app": "b"}))
	dp := &recordingDataplane{}
	c := policy.New(policy.Config{NodeName: "n1", Source: s, Dataplane: dp})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()

	ev := waitEvent(t, client, "prod", "legacy", policy.ReasonNotEnforceable)
	t.Logf("event: %s", ev.Message)
	rs := dp.get()
	if rs == nil {
		t.Fatal("nothing applied")
	}
	if len(rs.Targets) != 1 || rs.Targets[0].Pod.Name != "a" || rs.Targets[0].Ingress == nil || len(rs.Targets[0].Ingress.Rules) != 0 {
		t.Errorf("want pod a isolated for ingress with nothing allowed, got %+v", fmt.Sprint(rs.Targets))
	}
}
