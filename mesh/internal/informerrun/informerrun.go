// Package informerrun is what the agent's two client-go sources (the Node
// source in mesh/kube and the NetworkPolicy source in mesh/policy/kube)
// share: run a shared informer factory and an event broadcaster for the
// lifetime of a context, signal the owner's level-triggered loop when the
// caches first sync and on every event (bursts coalesce), and hand out the
// event recorder only while it runs. It sits under mesh/internal, not in
// either adapter, because adapters never import each other.
package informerrun

import (
	"context"
	"errors"
	"log/slog"
	"sync"

	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

// ErrAlreadyRunning is returned by a second call to Run.
var ErrAlreadyRunning = errors.New("source already running")

// Config configures a Runner.
type Config struct {
	// Client receives the events.
	Client kubernetes.Interface
	// Factory holds the owner's informers, handlers already added.
	Factory informers.SharedInformerFactory
	// Synced are the informers that must sync before SyncedMessage is
	// logged and Changed fires.
	Synced []cache.InformerSynced
	// Component and Host name the events' source.
	Component, Host string
	Logger          *slog.Logger
	SyncedMessage   string
}

// Runner runs one factory and broadcaster; see the package comment.
type Runner struct {
	cfg     Config
	log     *slog.Logger
	changed chan struct{}

	mu       sync.Mutex
	running  bool
	recorder record.EventRecorder
}

// New returns a Runner; it does no I/O.
func New(cfg Config) *Runner {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Runner{cfg: cfg, log: log, changed: make(chan struct{}, 1)}
}

// Run starts the informers and the event broadcaster and blocks until ctx
// ends, then stops both. It runs once: a second call returns
// ErrAlreadyRunning.
func (r *Runner) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.running {
		r.mu.Unlock()
		return ErrAlreadyRunning
	}
	r.running = true
	b := record.NewBroadcaster(record.WithContext(ctx))
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: r.cfg.Client.CoreV1().Events("")})
	r.recorder = b.NewRecorder(scheme.Scheme, v1.EventSource{Component: r.cfg.Component, Host: r.cfg.Host})
	r.mu.Unlock()

	r.cfg.Factory.Start(ctx.Done())
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), r.cfg.Synced...) {
			r.log.Info(r.cfg.SyncedMessage)
			r.Signal() // the owner's loop may be waiting for this
		}
	}()
	<-ctx.Done()
	r.cfg.Factory.Shutdown()
	b.Shutdown()

	r.mu.Lock()
	r.recorder = nil
	r.mu.Unlock()
	return nil
}

// HasSynced reports whether every informer in Config.Synced has completed
// its first list.
func (r *Runner) HasSynced() bool {
	for _, f := range r.cfg.Synced {
		if !f() {
			return false
		}
	}
	return true
}

// Changed receives after Signal; bursts coalesce into one receive.
func (r *Runner) Changed() <-chan struct{} { return r.changed }

// Signal wakes the owner's loop without blocking.
func (r *Runner) Signal() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// Recorder is the event recorder while Run runs, nil before and after.
func (r *Runner) Recorder() record.EventRecorder {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.recorder
}
