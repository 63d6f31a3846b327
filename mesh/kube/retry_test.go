package kube

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
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
