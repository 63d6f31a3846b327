// Package kube is the client-go adapter of mesh.NodeSource: a Node
// informer and lister for reading, a JSON merge patch for publishing this
// node's own annotations, and an event recorder for warnings.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/internal/informerrun"
	"github.com/wgmesh/wgmesh/mesh/kube/translate"
)

// DefaultComponent is the event source component and patch field manager.
const DefaultComponent = "wgmesh-agent"

// ErrAlreadyRunning is returned by a second call to Run.
var ErrAlreadyRunning = informerrun.ErrAlreadyRunning

// Config configures a Source.
type Config struct {
	// Client talks to the API server.
	Client kubernetes.Interface
	// NodeName is this node's Node object; Publish patches it.
	NodeName string
	// Resync is the informer's resync period (0 disables it; the
	// reconciler has its own resync tick).
	Resync time.Duration
	Logger *slog.Logger
	// Component names the event source and the patch field manager;
	// empty means DefaultComponent.
	Component string
}

// Source is a mesh.NodeSource backed by a shared Node informer.
type Source struct {
	cfg      Config
	log      *slog.Logger
	run      *informerrun.Runner
	informer cache.SharedIndexInformer
	lister   listersv1.NodeLister

	// translated caches each Node's translation by the cached object it
	// came from: the informer replaces, never modifies, a cached object,
	// so the same pointer means the same content. Translating every Node
	// on every pass was most of a pass's listing time at 5000 Nodes.
	mu         sync.Mutex
	translated map[string]translation
}

type translation struct {
	obj *v1.Node
	raw mesh.RawNode
}

var _ mesh.NodeSource = (*Source)(nil)

// New builds the informer and lister; it does no I/O. Call Run to start.
func New(cfg Config) (*Source, error) {
	if cfg.Client == nil {
		return nil, errors.New("kube node source: client is nil")
	}
	if cfg.NodeName == "" {
		return nil, errors.New("kube node source: node name is empty")
	}
	if cfg.Component == "" {
		cfg.Component = DefaultComponent
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	factory := informers.NewSharedInformerFactory(cfg.Client, cfg.Resync)
	// The factory's own Node informer, but with a list and watch that
	// reconnect quickly after an apiserver outage and relist at once when
	// a restarted apiserver expires the resumed watch (see retry.go).
	var informer cache.SharedIndexInformer
	informer = factory.InformerFor(&v1.Node{}, func(c kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		nodes := c.CoreV1().Nodes()
		lw := &cache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return nodes.List(ctx, o)
			},
			WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return nodes.Watch(ctx, o)
			},
		}
		rlw := newRetryingLW(lw, c, log)
		// Used only once the informer runs, after the assignment.
		rlw.known = func() []any { return informer.GetStore().List() }
		rlw.newObject = func() runtime.Object { return &v1.Node{} }
		return cache.NewSharedIndexInformer(rlw, &v1.Node{}, resync, cache.Indexers{})
	})
	s := &Source{
		cfg:      cfg,
		log:      log,
		informer: informer,
		lister:   listersv1.NewNodeLister(informer.GetIndexer()),
		run: informerrun.New(informerrun.Config{
			Client: cfg.Client, Factory: factory, Synced: []cache.InformerSynced{informer.HasSynced},
			Component: cfg.Component, Host: cfg.NodeName, Logger: log, SyncedMessage: "node informer synced",
		}),
	}
	// Registering a handler before Start does no I/O.
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    s.onAdd,
		UpdateFunc: s.onUpdate,
		DeleteFunc: s.onDelete,
	}); err != nil {
		return nil, fmt.Errorf("kube node source: add event handler: %w", err)
	}
	return s, nil
}

// Run starts the informer and the event broadcaster and blocks until ctx is
// cancelled, then stops both.
func (s *Source) Run(ctx context.Context) error { return s.run.Run(ctx) }

// Nodes lists the cached Nodes, sorted by name. Successive calls share the
// annotation maps and slices of unchanged Nodes: callers must not modify
// them (the mesh only reads).
func (s *Source) Nodes() ([]mesh.RawNode, error) {
	list, err := s.lister.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list nodes from cache: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.translated == nil {
		s.translated = make(map[string]translation, len(list))
	}
	// Sorted as pointers: moving the translated structs was a third of
	// listing 5000 Nodes.
	slices.SortFunc(list, func(a, b *v1.Node) int { return strings.Compare(a.Name, b.Name) })
	out := make([]mesh.RawNode, 0, len(list))
	for _, n := range list {
		t, ok := s.translated[n.Name]
		if !ok || t.obj != n {
			t = translation{obj: n, raw: RawNode(n)}
			s.translated[n.Name] = t
		}
		out = append(out, t.raw)
	}
	if len(s.translated) > len(out) {
		// Forget deleted Nodes.
		seen := make(map[string]bool, len(out))
		for _, r := range out {
			seen[r.Name] = true
		}
		for name := range s.translated {
			if !seen[name] {
				delete(s.translated, name)
			}
		}
	}
	return out, nil
}

// RawNode translates a Node object into the mesh's view, copying
// everything so the cached object is never shared (see package translate).
func RawNode(n *v1.Node) mesh.RawNode { return translate.RawNode(n) }

// Changed receives after any Node event; bursts coalesce.
func (s *Source) Changed() <-chan struct{} { return s.run.Changed() }

// HasSynced reports whether the informer completed its initial list.
func (s *Source) HasSynced() bool { return s.run.HasSynced() }

// Publish merges annotations into this node's own Node (patchAnnotations).
func (s *Source) Publish(ctx context.Context, annotations map[string]string) error {
	if len(annotations) == 0 {
		return nil
	}
	return patchAnnotations(ctx, s.cfg.Client, s.cfg.NodeName, s.cfg.Component, annotations)
}

// Warn records a Warning event on the named Node. Before Run (or after it
// returned) there is no recorder and the warning is only logged.
func (s *Source) Warn(node, reason, message string) {
	ref := &v1.ObjectReference{Kind: "Node", APIVersion: "v1", Name: node}
	if n, err := s.lister.Get(node); err == nil {
		ref.UID = n.UID
	}
	rec := s.run.Recorder()
	if rec == nil {
		s.log.Warn("event recorder not running; event dropped", "node", node, "reason", reason, "message", message)
		return
	}
	rec.Event(ref, v1.EventTypeWarning, EventReason(reason), message)
}

// EventReason turns a mesh reason ("bad-public-key") into the CamelCase
// form Kubernetes events use ("BadPublicKey").
func EventReason(reason string) string {
	var b strings.Builder
	for _, part := range strings.FieldsFunc(reason, func(r rune) bool { return r == '-' || r == '_' || r == ' ' }) {
		b.WriteString(strings.ToUpper(part[:1]))
		b.WriteString(part[1:])
	}
	if b.Len() == 0 {
		return "Warning"
	}
	return b.String()
}

func (s *Source) onAdd(obj any) {
	if n, ok := obj.(*v1.Node); ok {
		s.log.Debug("node added", "node", n.Name)
	}
	s.signal()
}

func (s *Source) onUpdate(_, obj any) {
	if n, ok := obj.(*v1.Node); ok {
		s.log.Debug("node updated", "node", n.Name, "resource_version", n.ResourceVersion)
	}
	s.signal()
}

// onDelete accepts a *v1.Node or a cache.DeletedFinalStateUnknown
// tombstone (the watch missed the delete and a relist noticed it). The
// reconciler re-reads the lister, which no longer has the node, so the
// signal is what matters; the unwrapping is for an accurate log.
func (s *Source) onDelete(obj any) {
	name, tombstone := nodeName(obj)
	if name == "" {
		s.log.Warn("node delete event with unexpected object", "type", fmt.Sprintf("%T", obj))
	} else {
		s.log.Debug("node deleted", "node", name, "tombstone", tombstone)
	}
	s.signal()
}

// nodeName extracts the node name from a delete notification.
func nodeName(obj any) (name string, tombstone bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		tombstone = true
		if n, ok := t.Obj.(*v1.Node); ok {
			return n.Name, true
		}
		// The key of a cluster-scoped object is its name.
		return t.Key, true
	}
	if n, ok := obj.(*v1.Node); ok {
		return n.Name, false
	}
	return "", false
}

func (s *Source) signal() { s.run.Signal() }
