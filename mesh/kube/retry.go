package kube

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"syscall"
	"time"

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
// is left alone.
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
	return retryingLW{lw: lw, log: log, sleep: sleepCtx, noWatchList: watchlist.DoesClientNotSupportWatchListSemantics(client)}
}

// IsWatchListSemanticsUnSupported is what client-go's reflector asks.
func (r retryingLW) IsWatchListSemanticsUnSupported() bool { return r.noWatchList }

func (r retryingLW) ListWithContext(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
	return retry(ctx, r, "list", func() (runtime.Object, error) { return r.lw.ListWithContext(ctx, opts) })
}

func (r retryingLW) WatchWithContext(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return retry(ctx, r, "watch", func() (watch.Interface, error) { return r.lw.WatchWithContext(ctx, opts) })
}

// List and Watch serve callers without a context (the reflector uses the
// context variants).
func (r retryingLW) List(opts metav1.ListOptions) (runtime.Object, error) {
	return r.ListWithContext(context.Background(), opts)
}

func (r retryingLW) Watch(opts metav1.ListOptions) (watch.Interface, error) {
	return r.WatchWithContext(context.Background(), opts)
}

func retry[T any](ctx context.Context, r retryingLW, what string, call func() (T, error)) (T, error) {
	delay := retryFirst
	var since time.Time
	for {
		v, err := call()
		if err == nil || !isConnectionFailure(err) || ctx.Err() != nil {
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
