package kube

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/watchlist"
)

// Reconnecting after an apiserver outage.
//
// client-go's reflector backs off exponentially (0.8 s doubling to 30 s,
// each delay stretched by up to 2x) while its list or watch fails, and
// shared informers offer no way to change that. After a 30 s outage the
// agents' next attempt therefore came 20-60 s after the apiserver was
// back, and a Node added then took 47-52 s to reach the old nodes. So the
// Node informer's list and watch retry connection failures themselves,
// with a short bounded backoff, before the reflector sees them:
// retryFirst doubling to retryMax, each delay scaled by a random factor in
// [0.5, 1] so that the agents of a cluster spread out. A refused or reset
// connection costs a down apiserver nothing (the kernel answers it); the
// first attempt after it is back is at most retryMax later, and it is one
// watch per agent, served from the apiserver's watch cache. Every answer
// the apiserver gives itself, including 429 and 5xx, still goes to the
// reflector and its long backoff: a recovering apiserver that sheds load
// is left alone. The one exception is a denial right after an outage
// (startupDenials).
const (
	retryFirst = 250 * time.Millisecond
	retryMax   = 2 * time.Second
)

// retryingLW is a cache.ListerWatcher whose list and watch retry
// connection failures (see above) until they succeed, fail otherwise, or
// the context ends.
type retryingLW struct {
	lw  cache.ListerWatcherWithContext
	log *slog.Logger
	// known lists the objects the informer holds and newObject makes an
	// empty one of its type; with both set, a watch the apiserver ends
	// at once as expired is resumed by a list (see relistOnExpiry).
	known     func() []any
	newObject func() runtime.Object
	// relisted is when relistOnExpiry last relisted (unix nanoseconds):
	// at most one relist per relistEvery, the rest goes to the reflector
	// and its backoff, so an apiserver that expires every watch at once
	// never sees a tight list-and-watch loop.
	relisted *atomic.Int64
	// noWatchList passes on what the client says about streaming lists
	// (client-go asks the ListerWatcher; fake clientsets have none).
	noWatchList bool
	// sleep waits d or until ctx ends (false); a seam for tests.
	sleep func(ctx context.Context, d time.Duration) bool
}

var (
	_ cache.ListerWatcher            = retryingLW{}
	_ cache.ListerWatcherWithContext = retryingLW{}
)

func newRetryingLW(lw cache.ListerWatcherWithContext, client any, log *slog.Logger) retryingLW {
	return retryingLW{lw: lw, log: log, sleep: sleepCtx, noWatchList: watchlist.DoesClientNotSupportWatchListSemantics(client),
		relisted: new(atomic.Int64)}
}

// relistEvery bounds relistOnExpiry to one relist per agent per 10 s:
// far more than apiserver restarts happen, far less than a loop would.
const relistEvery = 10 * time.Second

// IsWatchListSemanticsUnSupported is what client-go's reflector asks.
func (r retryingLW) IsWatchListSemanticsUnSupported() bool { return r.noWatchList }

func (r retryingLW) ListWithContext(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
	return retry(ctx, r, "list", func() (runtime.Object, error) { return r.lw.ListWithContext(ctx, opts) })
}

func (r retryingLW) WatchWithContext(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	w, err := retry(ctx, r, "watch", func() (watch.Interface, error) { return r.lw.WatchWithContext(ctx, opts) })
	if err != nil || r.known == nil || r.newObject == nil || opts.ResourceVersion == "" || opts.ResourceVersion == "0" ||
		opts.SendInitialEvents != nil {
		return w, err
	}
	return r.relistOnExpiry(ctx, opts, w), nil
}

// Resuming after an apiserver restart.
//
// A restarted apiserver's watch cache begins at a resource version later
// than the one the informer resumes its watch from (the apiserver writes
// on start-up), so the resumed watch ends at once with 410 Gone. client-go's
// reflector then relists, but only after its backoff, and that backoff
// resets only 2 minutes after its last reset, whether or not anything
// failed in between: after the third restart within 2 minutes the relist
// waited 3.2-6.4 s (0.8 s doubling, each delay stretched by up to 2x), and
// so did every Node change the agent should have seen meanwhile (the
// apiserver-outage e2e: the old agents' watches were back within 1.3 s,
// the new Node reached them 0-6.3 s later, every delay inside one of those
// backoff bands; docs/reliability.md). So a watch whose first event is
// "expired" is resumed here: one list (from the watch cache, at least as
// fresh as the watch asked for, which is what the reflector's relist would
// ask too), handed to the reflector as events (each listed object as
// modified, each object the informer holds that is gone as deleted, then
// a bookmark at the list's resource version), after which the stream
// ends and the reflector watches on from the bookmark. The apiserver gets
// the same one list per agent it would get anyway, without the wait.
func (r retryingLW) relistOnExpiry(ctx context.Context, opts metav1.ListOptions, w watch.Interface) watch.Interface {
	out := make(chan watch.Event)
	stop := make(chan struct{})
	pw := &proxyWatch{out: out, stop: stop}
	go func() {
		defer close(out)
		defer w.Stop()
		send := func(ev watch.Event) bool {
			select {
			case out <- ev:
				return true
			case <-stop:
				return false
			case <-ctx.Done():
				return false
			}
		}
		first := true
		for {
			var ev watch.Event
			var ok bool
			select {
			case ev, ok = <-w.ResultChan():
			case <-stop:
				return
			case <-ctx.Done():
				return
			}
			if !ok {
				return
			}
			if first && ev.Type == watch.Error && isExpired(ev.Object) && r.mayRelist() {
				evs, err := r.relistEvents(ctx, opts)
				if err != nil {
					r.log.Warn("relisting after an expired watch failed; leaving it to the informer", "err", err)
					send(ev)
					return
				}
				r.log.Info("watch expired (apiserver restarted); relisted at once", "objects", len(evs)-1)
				for _, e := range evs {
					if !send(e) {
						return
					}
				}
				return
			}
			first = false
			if !send(ev) {
				return
			}
		}
	}()
	return pw
}

// mayRelist reports whether relistOnExpiry may relist now, and if so
// records that it does.
func (r retryingLW) mayRelist() bool {
	if r.relisted == nil {
		return false
	}
	now := time.Now().UnixNano()
	last := r.relisted.Load()
	if last != 0 && now-last < int64(relistEvery) {
		return false
	}
	return r.relisted.CompareAndSwap(last, now)
}

func isExpired(obj runtime.Object) bool {
	err := apierrors.FromObject(obj)
	return apierrors.IsResourceExpired(err) || apierrors.IsGone(err)
}

// relistEvents lists and returns the events that bring the informer's
// store to the list: every listed object as modified, every known object
// not listed as deleted, and a bookmark at the list's resource version.
func (r retryingLW) relistEvents(ctx context.Context, opts metav1.ListOptions) ([]watch.Event, error) {
	lo := metav1.ListOptions{
		LabelSelector:        opts.LabelSelector,
		FieldSelector:        opts.FieldSelector,
		ResourceVersion:      opts.ResourceVersion,
		ResourceVersionMatch: metav1.ResourceVersionMatchNotOlderThan,
	}
	list, err := retry(ctx, r, "list", func() (runtime.Object, error) { return r.lw.ListWithContext(ctx, lo) })
	if err != nil {
		return nil, err
	}
	lm, err := meta.ListAccessor(list)
	if err != nil {
		return nil, err
	}
	items, err := meta.ExtractList(list)
	if err != nil {
		return nil, err
	}
	key := func(o any) string {
		m, err := meta.Accessor(o)
		if err != nil {
			return ""
		}
		return m.GetNamespace() + "/" + m.GetName()
	}
	evs := make([]watch.Event, 0, len(items)+1)
	listed := make(map[string]bool, len(items))
	for _, it := range items {
		listed[key(it)] = true
		evs = append(evs, watch.Event{Type: watch.Modified, Object: it})
	}
	for _, o := range r.known() {
		if obj, ok := o.(runtime.Object); ok && !listed[key(o)] {
			evs = append(evs, watch.Event{Type: watch.Deleted, Object: obj})
		}
	}
	bm := r.newObject()
	m, err := meta.Accessor(bm)
	if err != nil {
		return nil, err
	}
	m.SetResourceVersion(lm.GetResourceVersion())
	return append(evs, watch.Event{Type: watch.Bookmark, Object: bm}), nil
}

// proxyWatch is the watch relistOnExpiry hands out.
type proxyWatch struct {
	out  chan watch.Event
	stop chan struct{}
	once sync.Once
}

func (p *proxyWatch) ResultChan() <-chan watch.Event { return p.out }

func (p *proxyWatch) Stop() { p.once.Do(func() { close(p.stop) }) }

// List and Watch serve callers without a context (the reflector uses the
// context variants).
func (r retryingLW) List(opts metav1.ListOptions) (runtime.Object, error) {
	return r.ListWithContext(context.Background(), opts)
}

func (r retryingLW) Watch(opts metav1.ListOptions) (watch.Interface, error) {
	return r.WatchWithContext(context.Background(), opts)
}

// startupDenials is how many 401/403 answers retry retries after it saw
// the apiserver unreachable: an apiserver that has just started serves
// requests before its authorizer's caches are filled and denies them
// meanwhile (seen in the real-node soak: "nodes is forbidden" for the
// agent's own ServiceAccount seconds after a restart). Handed to the
// reflector, each such denial doubles its backoff, which only resets after
// 2 minutes of quiet; with restarts a minute apart the Node watch waited
// tens of seconds. 15 answers at most retryMax apart bound it to ~30 s,
// after which a denial is what it says and goes to the reflector.
const startupDenials = 15

func retry[T any](ctx context.Context, r retryingLW, what string, call func() (T, error)) (T, error) {
	delay := retryFirst
	var since time.Time
	denials := 0
	for {
		v, err := call()
		if err != nil && !since.IsZero() && isDenial(err) && denials < startupDenials && ctx.Err() == nil {
			if denials == 0 {
				r.log.Info("apiserver back but denying (its authorizer is starting); retrying", "request", what, "err", err)
			}
			denials++
		} else if err == nil || !isConnectionFailure(err) || ctx.Err() != nil {
			if err == nil && !since.IsZero() {
				r.log.Info("apiserver reachable again", "request", what, "after", time.Since(since).Round(time.Millisecond))
			}
			return v, err
		}
		if since.IsZero() {
			since = time.Now()
			r.log.Warn("apiserver unreachable; retrying", "request", what, "err", err, "max_interval", retryMax)
		}
		d := time.Duration(float64(delay) * (0.5 + rand.Float64()/2))
		if !r.sleep(ctx, d) {
			return v, err
		}
		delay = min(2*delay, retryMax)
	}
}

// isDenial reports the apiserver refusing the request's credentials or
// their permissions.
func isDenial(err error) bool {
	return apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err)
}

// isConnectionFailure reports errors of reaching the apiserver at all, as
// opposed to answers from it.
func isConnectionFailure(err error) bool {
	return utilnet.IsConnectionRefused(err) || utilnet.IsConnectionReset(err) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
