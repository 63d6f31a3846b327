package kube

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// refused is what a Go client sees when nothing listens on the port.
var refused = &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}

func TestRetryingLW(t *testing.T) {
	tooMany := apierrors.NewTooManyRequests("slow down", 1)
	forbidden := apierrors.NewForbidden(schemaNodes, "", fmt.Errorf("RBAC: not yet synced"))
	unauthorized := apierrors.NewUnauthorized("token authenticator starting")
	tests := []struct {
		name      string
		errs      []error // returned by the calls, in order; then success
		cancelAt  int     // cancel the context before this sleep (0: never)
		wantCalls int
		wantErr   error
	}{
		{name: "succeeds at once", wantCalls: 1},
		{name: "refused until the apiserver is back", errs: []error{refused, refused, refused, refused, refused, refused, refused}, wantCalls: 8},
		{name: "reset and EOF are retried too", errs: []error{fmt.Errorf("get: %w", syscall.ECONNRESET), fmt.Errorf("watch: %w", io.ErrUnexpectedEOF)}, wantCalls: 3},
		{name: "an answer from the apiserver goes to the reflector", errs: []error{refused, tooMany}, wantCalls: 2, wantErr: tooMany},
		{name: "denied while the restarted apiserver's authorizer starts", errs: []error{refused, forbidden, unauthorized, forbidden}, wantCalls: 5},
		{name: "a denial without an outage goes to the reflector", errs: []error{forbidden}, wantCalls: 1, wantErr: forbidden},
		{name: "denials beyond the bound go to the reflector", errs: append([]error{refused}, slices.Repeat([]error{forbidden}, startupDenials+1)...),
			wantCalls: startupDenials + 2, wantErr: forbidden},
		{name: "cancelled while waiting", errs: []error{refused, refused, refused}, cancelAt: 2, wantCalls: 2, wantErr: refused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			calls := 0
			call := func() error {
				calls++
				if calls <= len(tt.errs) {
					return tt.errs[calls-1]
				}
				return nil
			}
			var slept []time.Duration
			r := retryingLW{
				lw: &cache.ListWatch{
					ListWithContextFunc: func(context.Context, metav1.ListOptions) (runtime.Object, error) {
						return nil, call()
					},
					WatchFuncWithContext: func(context.Context, metav1.ListOptions) (watch.Interface, error) {
						return nil, call()
					},
				},
				log: slog.New(slog.DiscardHandler),
				sleep: func(ctx context.Context, d time.Duration) bool {
					slept = append(slept, d)
					if len(slept) == tt.cancelAt {
						cancel()
					}
					return ctx.Err() == nil
				},
			}
			for _, op := range []string{"list", "watch"} {
				calls, slept = 0, nil
				var err error
				if op == "list" {
					_, err = r.ListWithContext(ctx, metav1.ListOptions{})
				} else {
					_, err = r.WatchWithContext(ctx, metav1.ListOptions{})
				}
				if tt.cancelAt != 0 && op == "watch" {
					continue // the context is gone
				}
				if (err == nil) != (tt.wantErr == nil) || (err != nil && err.Error() != tt.wantErr.Error()) {
					t.Errorf("%s: err = %v, want %v", op, err, tt.wantErr)
				}
				if calls != tt.wantCalls {
					t.Errorf("%s: %d calls, want %d", op, calls, tt.wantCalls)
				}
				// Bounded and jittered: the n-th wait is in
				// [nominal/2, nominal], nominal doubling from
				// retryFirst to retryMax.
				nominal := retryFirst
				for i, d := range slept {
					if d < nominal/2 || d > nominal {
						t.Errorf("%s: wait %d = %s, want within [%s, %s]", op, i, d, nominal/2, nominal)
					}
					nominal = min(2*nominal, retryMax)
				}
			}
		})
	}
}

func TestIsConnectionFailure(t *testing.T) {
	got := map[string]bool{}
	for name, err := range map[string]error{
		"refused":   refused,
		"reset":     fmt.Errorf("read: %w", syscall.ECONNRESET),
		"not found": apierrors.NewNotFound(schemaNodes, "node1"),
		"429":       apierrors.NewTooManyRequests("slow down", 1),
		"timeout":   apierrors.NewServerTimeout(schemaNodes, "list", 1),
	} {
		got[name] = isConnectionFailure(err)
	}
	want := map[string]bool{"refused": true, "reset": true, "not found": false, "429": false, "timeout": false}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}

var schemaNodes = schema.GroupResource{Resource: "nodes"}

// TestRelistOnExpiredWatch: the watch resumed after an apiserver restart
// ends at once with 410 Gone. The informer must then hold exactly what a
// fresh list says (changed, new and vanished Nodes), without waiting for
// client-go's relist backoff, and watch on from the list's resource
// version.
func TestRelistOnExpiredWatch(t *testing.T) {
	node := func(name, rv, key string) *v1.Node {
		return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, ResourceVersion: rv,
			Annotations: map[string]string{"wgmesh.io/public-key": key}}}
	}
	var (
		mu       sync.Mutex
		lists    []metav1.ListOptions
		watches  []string
		resumed  = make(chan string, 1)
		first    = watch.NewFake()
		expiring = watch.NewFake()
	)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(_ context.Context, o metav1.ListOptions) (runtime.Object, error) {
			mu.Lock()
			defer mu.Unlock()
			lists = append(lists, o)
			if len(lists) == 1 {
				return &v1.NodeList{ListMeta: metav1.ListMeta{ResourceVersion: "10"},
					Items: []v1.Node{*node("a", "5", "ka"), *node("b", "6", "kb")}}, nil
			}
			return &v1.NodeList{ListMeta: metav1.ListMeta{ResourceVersion: "20"},
				Items: []v1.Node{*node("a", "15", "ka2"), *node("c", "16", "kc")}}, nil
		},
		WatchFuncWithContext: func(_ context.Context, o metav1.ListOptions) (watch.Interface, error) {
			mu.Lock()
			defer mu.Unlock()
			watches = append(watches, o.ResourceVersion)
			switch len(watches) {
			case 1:
				return first, nil
			case 2:
				return expiring, nil
			default:
				select {
				case resumed <- o.ResourceVersion:
				default:
				}
				return watch.NewFake(), nil
			}
		},
	}
	var informer cache.SharedIndexInformer
	r := newRetryingLW(lw, nil, slog.New(slog.DiscardHandler))
	r.noWatchList = true // a list, then watches (as the lab's apiserver serves it)
	r.known = func() []any { return informer.GetStore().List() }
	r.newObject = func() runtime.Object { return &v1.Node{} }
	informer = cache.NewSharedIndexInformer(r, &v1.Node{}, 0, cache.Indexers{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	go informer.RunWithContext(ctx)
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		t.Fatal("informer did not sync")
	}
	// The apiserver goes away: the first watch ends (after an event, so
	// the reflector resumes the watch rather than relisting); the
	// restarted apiserver expires the resumed watch.
	first.Modify(node("a", "11", "ka"))
	first.Stop()
	expiring.Error(&apierrors.NewResourceExpired("too old resource version: 11 (30)").ErrStatus)
	start := time.Now()
	var rv string
	select {
	case rv = <-resumed:
	case <-time.After(30 * time.Second):
		t.Fatalf("no watch after the expired one; watches %v", watches)
	}
	t.Logf("watching again %s after the expiry", time.Since(start).Round(time.Millisecond))
	if rv != "20" {
		t.Errorf("watch resumed from resource version %q, want the list's 20", rv)
	}
	mu.Lock()
	// The second list is ours (the reflector's own relist does not ask
	// for NotOlderThan): the reflector did not relist after its backoff.
	if len(lists) != 2 || lists[1].ResourceVersionMatch != metav1.ResourceVersionMatchNotOlderThan || lists[1].ResourceVersion != "11" {
		t.Errorf("lists %+v, want the initial one and one not older than the expired watch's 11", lists)
	}
	mu.Unlock()
	// The relist's events reach the store through the reflector's own
	// goroutine, which may run after the next watch has been opened: wait
	// for them (5 s is far above the microseconds this takes, for a loaded
	// 2-core box).
	want := map[string]string{"a": "ka2", "c": "kc"}
	var d string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		got := map[string]string{}
		for _, o := range informer.GetStore().List() {
			n := o.(*v1.Node)
			got[n.Name] = n.Annotations["wgmesh.io/public-key"]
		}
		if d = cmp.Diff(want, got); d == "" || time.Now().After(deadline) {
			break
		}
	}
	if d != "" {
		t.Errorf("informer store 5s after the relist (-want +got):\n%s", d)
	}
}

// TestRelistOnExpiredWatchAtMostEvery10s: a second expiry soon after a
// relist goes to the reflector (and its backoff) as it is: an apiserver
// that expires every watch must not get a tight list-and-watch loop.
func TestRelistOnExpiredWatchAtMostEvery10s(t *testing.T) {
	lists := 0
	r := newRetryingLW(&cache.ListWatch{
		ListWithContextFunc: func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			lists++
			return &v1.NodeList{ListMeta: metav1.ListMeta{ResourceVersion: "20"}}, nil
		},
	}, nil, slog.New(slog.DiscardHandler))
	r.known = func() []any { return nil }
	r.newObject = func() runtime.Object { return &v1.Node{} }
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i, want := range []watch.EventType{watch.Bookmark, watch.Error} {
		fake := watch.NewFake()
		w := r.relistOnExpiry(ctx, metav1.ListOptions{ResourceVersion: "11"}, fake)
		go fake.Error(&apierrors.NewResourceExpired("too old resource version").ErrStatus)
		// The reflector stops a watch after an error event.
		ev := <-w.ResultChan()
		w.Stop()
		if ev.Type != want {
			t.Errorf("expiry %d: first event %s, want %s", i+1, ev.Type, want)
		}
	}
	if lists != 1 {
		t.Errorf("%d lists, want 1", lists)
	}
}
