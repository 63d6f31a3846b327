// Package kube is the client-go adapter of policy.Source: informers over
// all Pods (every pod can be a peer; only this node's are enforced),
// Namespaces and NetworkPolicies, their translation into the policy
// package's vocabulary, and Warning events on NetworkPolicies.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	networkinglisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/wgmesh/wgmesh/mesh/internal/informerrun"
	"github.com/wgmesh/wgmesh/mesh/policy"
)

// DefaultComponent is the event source component.
const DefaultComponent = "wgmesh-agent"

// ErrAlreadyRunning is returned by a second call to Run.
var ErrAlreadyRunning = informerrun.ErrAlreadyRunning

// Config configures a Source.
type Config struct {
	Client kubernetes.Interface
	// NodeName is this node (the events' source host).
	NodeName string
	// Resync is the informers' resync period (0: none; the controller
	// has its own).
	Resync    time.Duration
	Logger    *slog.Logger
	Component string
}

// Source implements policy.Source.
type Source struct {
	cfg  Config
	log  *slog.Logger
	run  *informerrun.Runner
	pods listersv1.PodLister
	nss  listersv1.NamespaceLister
	nps  networkinglisters.NetworkPolicyLister
}

var _ policy.Source = (*Source)(nil)

// New builds the informers; it does no I/O.
func New(cfg Config) (*Source, error) {
	if cfg.Client == nil {
		return nil, errors.New("policy source: client is nil")
	}
	if cfg.NodeName == "" {
		return nil, errors.New("policy source: node name is empty")
	}
	if cfg.Component == "" {
		cfg.Component = DefaultComponent
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := informers.NewSharedInformerFactory(cfg.Client, cfg.Resync)
	s := &Source{cfg: cfg, log: log}
	var synced []cache.InformerSynced

	pods := f.Core().V1().Pods()
	// Every pod in the cluster is cached; keep only what policies read
	// (a full Pod is kilobytes of spec and status).
	if err := pods.Informer().SetTransform(slimPod); err != nil {
		return nil, fmt.Errorf("policy source: pod transform: %w", err)
	}
	nss := f.Core().V1().Namespaces()
	nps := f.Networking().V1().NetworkPolicies()
	for kind, inf := range map[string]cache.SharedIndexInformer{"pod": pods.Informer(), "namespace": nss.Informer(), "networkpolicy": nps.Informer()} {
		h := handler{kind: kind, s: s}
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: h.add, UpdateFunc: h.update, DeleteFunc: h.delete}); err != nil {
			return nil, fmt.Errorf("policy source: %s event handler: %w", kind, err)
		}
		synced = append(synced, inf.HasSynced)
	}
	s.pods, s.nss, s.nps = pods.Lister(), nss.Lister(), nps.Lister()
	s.run = informerrun.New(informerrun.Config{
		Client: cfg.Client, Factory: f, Synced: synced,
		Component: cfg.Component, Host: cfg.NodeName, Logger: log,
		SyncedMessage: "pod, namespace and network policy informers synced",
	})
	return s, nil
}

// slimPod keeps the fields policies read. Tombstones and other objects
// pass through unchanged.
func slimPod(obj any) (any, error) {
	p, ok := obj.(*v1.Pod)
	if !ok {
		return obj, nil
	}
	out := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, UID: p.UID, Labels: p.Labels,
			ResourceVersion: p.ResourceVersion, DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec: v1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork},
		Status: v1.PodStatus{
			Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs,
		},
	}
	slim := func(cs []v1.Container) []v1.Container {
		var out []v1.Container
		for _, c := range cs {
			if len(c.Ports) > 0 {
				out = append(out, v1.Container{Name: c.Name, Ports: c.Ports, RestartPolicy: c.RestartPolicy})
			}
		}
		return out
	}
	out.Spec.Containers = slim(p.Spec.Containers)
	out.Spec.InitContainers = slim(p.Spec.InitContainers)
	return out, nil
}

// Run starts the informers and the event broadcaster and blocks until ctx
// ends.
func (s *Source) Run(ctx context.Context) error { return s.run.Run(ctx) }

// HasSynced reports whether all three informers completed their first
// list.
func (s *Source) HasSynced() bool { return s.run.HasSynced() }

// Changed receives after any event; bursts coalesce.
func (s *Source) Changed() <-chan struct{} { return s.run.Changed() }

// Snapshot translates the cached objects.
func (s *Source) Snapshot() (policy.Input, error) {
	var in policy.Input
	pods, err := s.pods.List(labels.Everything())
	if err != nil {
		return in, fmt.Errorf("list pods from cache: %w", err)
	}
	nss, err := s.nss.List(labels.Everything())
	if err != nil {
		return in, fmt.Errorf("list namespaces from cache: %w", err)
	}
	nps, err := s.nps.List(labels.Everything())
	if err != nil {
		return in, fmt.Errorf("list network policies from cache: %w", err)
	}
	in.Pods = make([]policy.Pod, 0, len(pods))
	for _, p := range pods {
		if tp, ok := Pod(p); ok {
			in.Pods = append(in.Pods, tp)
		}
	}
	for _, ns := range nss {
		in.Namespaces = append(in.Namespaces, Namespace(ns))
	}
	for _, np := range nps {
		in.Policies = append(in.Policies, Policy(np))
	}
	return in, nil
}

// Warn records a Warning event on the NetworkPolicy "namespace/name".
func (s *Source) Warn(key, reason, message string) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		s.log.Warn("bad policy key for an event", "key", key, "err", err)
		return
	}
	var obj *networkingv1.NetworkPolicy
	if np, err := s.nps.NetworkPolicies(ns).Get(name); err == nil {
		obj = np
	} else {
		obj = &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	}
	rec := s.run.Recorder()
	if rec == nil {
		s.log.Warn("event recorder not running; event dropped", "policy", key, "reason", reason, "message", message)
		return
	}
	rec.Event(obj, v1.EventTypeWarning, reason, message)
}

func (s *Source) signal() { s.run.Signal() }

// handler signals on every event. The controller re-reads the listers, so
// the handlers only log; deletes unwrap tombstones
// (cache.DeletedFinalStateUnknown) for an accurate log line.
type handler struct {
	kind string
	s    *Source
}

func (h handler) add(obj any) {
	h.s.log.Debug(h.kind+" added", "key", keyOf(obj))
	h.s.signal()
}

func (h handler) update(_, obj any) {
	h.s.log.Debug(h.kind+" updated", "key", keyOf(obj))
	h.s.signal()
}

func (h handler) delete(obj any) {
	tombstone := false
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		tombstone = true
		obj = t.Obj
		if obj == nil {
			h.s.log.Debug(h.kind+" deleted", "key", t.Key, "tombstone", true)
			h.s.signal()
			return
		}
	}
	h.s.log.Debug(h.kind+" deleted", "key", keyOf(obj), "tombstone", tombstone)
	h.s.signal()
}

func keyOf(obj any) string {
	k, err := cache.MetaNamespaceKeyFunc(obj)
	if err != nil {
		return fmt.Sprintf("<%T>", obj)
	}
	return k
}
