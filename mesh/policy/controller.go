package policy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// DefaultResync is the period of full passes without a change signal.
const DefaultResync = 10 * time.Second

// ReasonNotEnforceable is the event reason on a policy that fails closed.
const ReasonNotEnforceable = "NetworkPolicyNotEnforceable"

// Source is the cluster as the policy engine reads it: listers over Pods,
// Namespaces and NetworkPolicies. Changed is a level trigger (a capacity-1
// channel, bursts coalesce): on every signal the controller re-reads
// everything.
type Source interface {
	// Snapshot returns the cached pods, namespaces and policies (Node is
	// left empty; the controller fills it in).
	Snapshot() (Input, error)
	Changed() <-chan struct{}
	// HasSynced reports whether every cache completed its first list;
	// nothing is programmed before, so a restart never applies a partial
	// view.
	HasSynced() bool
	// Warn records a Warning event on the policy ("namespace/name").
	Warn(policy, reason, message string)
}

// Dataplane programs a ruleset atomically. Apply must be idempotent; it is
// called on every pass.
type Dataplane interface {
	Apply(ctx context.Context, rs Ruleset) error
}

// Config configures a Controller.
type Config struct {
	// NodeName is the node whose pods are enforced.
	NodeName  string
	Source    Source
	Dataplane Dataplane
	Logger    *slog.Logger
	// Resync is the period of passes without a change; zero means
	// DefaultResync.
	Resync time.Duration
}

// Validate checks cfg without I/O.
func (c Config) Validate() error {
	var errs []error
	if c.NodeName == "" {
		errs = append(errs, errors.New("node name is empty"))
	}
	if c.Source == nil {
		errs = append(errs, errors.New("source is nil"))
	}
	if c.Dataplane == nil {
		errs = append(errs, errors.New("dataplane is nil"))
	}
	if c.Resync < 0 {
		errs = append(errs, fmt.Errorf("resync %s is negative", c.Resync))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("policy controller config: %w", err)
	}
	return nil
}

// Status describes the last pass.
type Status struct {
	At time.Time
	// Compile is the CPU-bound part (compiling); Apply the dataplane's.
	Compile, Apply time.Duration
	Err            error
	// Targets is the number of isolated local pods; Problems the number
	// of policies failing closed here.
	Targets, Problems int
	Passes            uint64
}

// Controller keeps the dataplane in line with the cluster's policies. Like
// the mesh reconciler it is level-triggered: every pass compiles from the
// full cached state.
type Controller struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex // serialises passes; guards the fields below
	warned  map[string]string
	summary string
	status  Status
}

// New returns a Controller; it does no I/O.
func New(cfg Config) *Controller {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Controller{cfg: cfg, log: log, warned: map[string]string{}}
}

// Status returns the last pass's status.
func (c *Controller) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status
}

// Run waits for the caches, then reconciles on every change and every
// resync period until ctx ends. Failed passes are retried with backoff
// (capped at the resync period). It returns nil on cancellation.
func (c *Controller) Run(ctx context.Context) error {
	if err := c.cfg.Validate(); err != nil {
		return err
	}
	resync := cmp.Or(c.cfg.Resync, DefaultResync)
	for !c.cfg.Source.HasSynced() {
		select {
		case <-ctx.Done():
			return nil
		case <-c.cfg.Source.Changed():
		case <-time.After(100 * time.Millisecond):
		}
	}
	c.log.Info("network policy caches synced, enforcing", "resync", resync)
	ticker := time.NewTicker(resync)
	defer ticker.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	backoff := 500 * time.Millisecond
	for {
		if err := c.Reconcile(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			c.log.Error("network policy pass failed; will retry", "err", err, "retry_in", backoff)
			retry.Reset(backoff)
			backoff = min(backoff*2, resync)
		} else {
			retry.Stop()
			backoff = 500 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return nil
		case <-c.cfg.Source.Changed():
		case <-ticker.C:
		case <-retry.C:
		}
	}
}

// Reconcile runs one pass: snapshot, compile, report, apply.
func (c *Controller) Reconcile(ctx context.Context) error {
	if err := c.cfg.Validate(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st := Status{Passes: c.status.Passes + 1}
	defer func() {
		st.At = time.Now()
		c.status = st
	}()

	in, err := c.cfg.Source.Snapshot()
	if err != nil {
		st.Err = fmt.Errorf("read policy caches: %w", err)
		return st.Err
	}
	in.Node = c.cfg.NodeName
	start := time.Now()
	rs := Compile(in)
	st.Compile = time.Since(start)
	st.Targets, st.Problems = len(rs.Targets), len(rs.Problems)
	c.report(rs)

	start = time.Now()
	err = c.cfg.Dataplane.Apply(ctx, rs)
	st.Apply = time.Since(start)
	if err != nil {
		st.Err = fmt.Errorf("apply network policy rules: %w", err)
		return st.Err
	}
	summary := fmt.Sprintf("%d isolated pods, %d failing closed, %d address conflicts", len(rs.Targets), len(rs.Problems), len(rs.Conflicts))
	if summary != c.summary {
		c.log.Info("network policy rules applied", "isolated_pods", len(rs.Targets), "policies_failing_closed", len(rs.Problems),
			"address_conflicts", rs.Conflicts, "compile", st.Compile, "apply", st.Apply)
		c.summary = summary
	} else {
		c.log.Debug("network policy rules applied", "compile", st.Compile, "apply", st.Apply)
	}
	return nil
}

// report logs and raises an event for each policy failing closed, once per
// change of its message, and forgets policies that were fixed or deleted.
func (c *Controller) report(rs Ruleset) {
	seen := map[string]bool{}
	for _, p := range rs.Problems {
		seen[p.Policy] = true
		msg := fmt.Sprintf("cannot be enforced (%v); failing closed on node %s for %d pod(s): no new connections in the directions it names until it is fixed",
			p.Err, c.cfg.NodeName, len(p.Pods))
		if c.warned[p.Policy] == msg {
			continue
		}
		c.warned[p.Policy] = msg
		c.log.Warn("network policy cannot be enforced; failing closed for the pods it selects",
			"policy", p.Policy, "err", p.Err, "pods", p.Pods)
		c.cfg.Source.Warn(p.Policy, ReasonNotEnforceable, msg)
	}
	for k := range c.warned {
		if !seen[k] {
			c.log.Info("network policy no longer failing closed", "policy", k)
			delete(c.warned, k)
		}
	}
}
