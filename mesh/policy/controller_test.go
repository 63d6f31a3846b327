package policy

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeSource is an in-memory Source.
type fakeSource struct {
	mu      sync.Mutex
	in      Input
	err     error
	synced  bool
	changed chan struct{}
	warns   []string
}

func newFakeSource(in Input) *fakeSource {
	return &fakeSource{in: in, synced: true, changed: make(chan struct{}, 1)}
}

func (s *fakeSource) Snapshot() (Input, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.in, s.err
}
func (s *fakeSource) Changed() <-chan struct{} { return s.changed }
func (s *fakeSource) HasSynced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}
func (s *fakeSource) Warn(policy, reason, message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.warns = append(s.warns, policy+" "+reason)
}
func (s *fakeSource) set(f func(*fakeSource)) {
	s.mu.Lock()
	f(s)
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
}
func (s *fakeSource) warnings() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.warns...)
}

// fakeDataplane records applied rulesets.
type fakeDataplane struct {
	mu      sync.Mutex
	applied []Ruleset
	fail    int // fail this many times first
	got     chan Ruleset
}

func (d *fakeDataplane) Apply(_ context.Context, rs Ruleset) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail > 0 {
		d.fail--
		return errors.New("netlink says no")
	}
	d.applied = append(d.applied, rs)
	if d.got != nil {
		select {
		case d.got <- rs:
		default:
		}
	}
	return nil
}

func denyDB() Policy { return ingressOnly("prod", "deny-db", *sel("app", "db")) }

func TestReconcileReportsProblemsOnce(t *testing.T) {
	in := fixture()
	in.Node = "" // the controller fills it in
	in.Policies = []Policy{{Namespace: "prod", Name: "bad", PodSelector: *sel("app", "db"), Ingress: true, Err: errors.New("cidr 010.0.0.0/8")}}
	src := newFakeSource(in)
	dp := &fakeDataplane{}
	c := New(Config{NodeName: local, Source: src, Dataplane: dp})
	ctx := context.Background()
	for range 3 {
		if err := c.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if d := cmp.Diff([]string{"prod/bad " + ReasonNotEnforceable}, src.warnings()); d != "" {
		t.Errorf("warnings (-want +got):\n%s", d)
	}
	if len(dp.applied) != 3 || len(dp.applied[2].Targets) != 1 || dp.applied[2].Targets[0].Ingress == nil {
		t.Fatalf("applied: %+v", dp.applied)
	}
	if st := c.Status(); st.Targets != 1 || st.Problems != 1 || st.Passes != 3 || st.Err != nil {
		t.Errorf("status %+v", st)
	}
	// Another message: reported again. Fixed: forgotten, so breaking it
	// again is reported again.
	src.set(func(s *fakeSource) { s.in.Policies[0].Err = errors.New("other") })
	c.Reconcile(ctx)
	src.set(func(s *fakeSource) { s.in.Policies[0].Err = nil })
	c.Reconcile(ctx)
	src.set(func(s *fakeSource) { s.in.Policies[0].Err = errors.New("other") })
	c.Reconcile(ctx)
	if got := len(src.warnings()); got != 3 {
		t.Errorf("%d warnings, want 3: %v", got, src.warnings())
	}
}

func TestReconcileErrors(t *testing.T) {
	src := newFakeSource(fixture())
	src.err = errors.New("cache gone")
	dp := &fakeDataplane{fail: 1}
	c := New(Config{NodeName: local, Source: src, Dataplane: dp})
	if err := c.Reconcile(context.Background()); err == nil || c.Status().Err == nil {
		t.Errorf("snapshot error not returned")
	}
	src.err = nil
	if err := c.Reconcile(context.Background()); err == nil {
		t.Errorf("apply error not returned")
	}
	if err := c.Reconcile(context.Background()); err != nil {
		t.Errorf("third pass: %v", err)
	}
	if err := New(Config{}).Reconcile(context.Background()); err == nil {
		t.Errorf("empty config accepted")
	}
}

func TestRunWaitsForSyncAndFollowsChanges(t *testing.T) {
	in := fixture()
	src := newFakeSource(in)
	src.synced = false
	dp := &fakeDataplane{got: make(chan Ruleset, 10), fail: 1}
	c := New(Config{NodeName: local, Source: src, Dataplane: dp, Resync: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()

	select {
	case rs := <-dp.got:
		t.Fatalf("applied before the caches synced: %+v", rs)
	case <-time.After(300 * time.Millisecond):
	}
	src.set(func(s *fakeSource) { s.synced = true })
	// The first apply fails; the retry (500ms backoff) succeeds.
	select {
	case rs := <-dp.got:
		if len(rs.Targets) != 0 {
			t.Errorf("no policies yet, got targets %+v", rs.Targets)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no apply after sync and a failed first attempt")
	}
	start := time.Now()
	src.set(func(s *fakeSource) { s.in.Policies = []Policy{denyDB()} })
	select {
	case rs := <-dp.got:
		if len(rs.Targets) != 1 || rs.Targets[0].Pod != db {
			t.Errorf("targets after the change: %+v", rs.Targets)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("change applied after %s, want well under 1s", d)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("change not applied")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}
