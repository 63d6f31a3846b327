package nft

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	mnl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/wgmesh/wgmesh/mesh/policy"
)

// Dataplane implements policy.Dataplane with nftables.
type Dataplane struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	fallback *bool // last br_netfilter verdict, for logging changes
	// system is the kernel; tests of the planning replace it.
	sys system
}

var _ policy.Dataplane = (*Dataplane)(nil)

// New returns a Dataplane; it does no I/O.
func New(cfg Config) (*Dataplane, error) {
	cfg = cfg.withDefaults()
	if len(cfg.Bridge) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("nft: bridge name %q too long", cfg.Bridge)
	}
	return &Dataplane{cfg: cfg, log: cfg.Logger, sys: kernel{}}, nil
}

// system is what Apply needs from the kernel.
type system interface {
	// bridgeNetfilter turns on br_netfilter's IP hooks for the bridge
	// (if enable) and reports whether bridged IPv4 and IPv6 reach the
	// inet hooks.
	bridgeNetfilter(bridge string, enable bool) (bool, error)
	// installedHash returns the hash our inet table carries, "" if none.
	installedHash(table string) (string, error)
	apply(p *program, table string) error
	remove(table string) error
}

// Apply programs rs. It does nothing when the installed table already
// carries rs's program (resyncs are cheap and keep counters).
func (d *Dataplane) Apply(ctx context.Context, rs policy.Ruleset) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	active, err := d.sys.bridgeNetfilter(d.cfg.Bridge, !d.cfg.LeaveBridgeNetfilter)
	if err != nil {
		// Not fatal: the fallback table keeps same-node traffic of
		// isolated pods closed.
		d.log.Warn("cannot route bridged pod traffic through the forward hook", "bridge", d.cfg.Bridge, "err", err)
	}
	fallback := !active
	if d.fallback == nil || *d.fallback != fallback {
		if fallback {
			d.log.Warn("br_netfilter is not active for the pod bridge: same-node traffic to and from isolated pods is dropped (fails closed); load br_netfilter for full enforcement",
				"bridge", d.cfg.Bridge)
		} else {
			d.log.Info("bridged pod traffic passes the forward hook (br_netfilter for the pod bridge)", "bridge", d.cfg.Bridge)
		}
		d.fallback = &fallback
	}
	start := time.Now()
	p := render(rs, renderOptions{table: d.cfg.Table, bridge: d.cfg.Bridge, fallback: fallback})
	rendered := time.Now()
	if h, err := d.sys.installedHash(d.cfg.Table); err == nil && h == p.hash {
		return nil
	}
	if err := d.sys.apply(p, d.cfg.Table); err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	d.log.Debug("network policy table replaced", "table", d.cfg.Table, "hash", p.hash,
		"render", rendered.Sub(start), "kernel", time.Since(rendered))
	return nil
}

// Remove deletes our tables (policy enforcement switched off).
func (d *Dataplane) Remove() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.sys.remove(d.cfg.Table)
}

// kernel is the running kernel.
type kernel struct{}

func (kernel) installedHash(table string) (string, error) {
	c, err := nftables.New()
	if err != nil {
		return "", err
	}
	t := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
	ch, err := c.ListChain(t, chainForward)
	if err != nil {
		return "", err // includes "no such table"
	}
	ch.Table = t
	rules, err := c.GetRules(t, ch)
	if err != nil || len(rules) == 0 {
		return "", err
	}
	cm, _ := userdata.GetString(rules[0].UserData, userdata.TypeComment)
	h, ok := strings.CutPrefix(cm, commentPrefix)
	if !ok {
		return "", nil
	}
	h, _, _ = strings.Cut(h, " ")
	return h, nil
}

// apply replaces our inet table (and adds or removes the bridge fallback
// table) in one batch, which the kernel commits atomically: packets see
// the old ruleset or the new one, never a mix.
func (kernel) apply(p *program, name string) error {
	c, err := nftables.New(nftables.WithSockOptions(bigBuffers))
	if err != nil {
		return err
	}
	if err := queueTable(c, &p.inet); err != nil {
		return err
	}
	bt := &nftables.Table{Name: name, Family: nftables.TableFamilyBridge}
	c.AddTable(bt)
	c.DelTable(bt)
	if p.bridge != nil {
		if err := queueTable(c, p.bridge); err != nil {
			return err
		}
	}
	return c.Flush()
}

// bigBuffers lifts the socket buffer limits for one batch, as nft(8) does:
// a node with a thousand isolated pods sends megabytes in one sendmsg,
// and the kernel queues an acknowledgement per message before we read
// them. The *FORCE options need CAP_NET_ADMIN, which the agent has.
func bigBuffers(c *mnl.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	const size = 64 << 20
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = errors.Join(
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, size),
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size))
	})
	return errors.Join(err, serr)
}

func (kernel) remove(name string) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyINet, nftables.TableFamilyBridge} {
		t := &nftables.Table{Name: name, Family: fam}
		c.AddTable(t) // so that deleting never fails on a missing table
		c.DelTable(t)
	}
	return c.Flush()
}

// queueTable queues "add, delete, add" of the table (so it works whether
// or not the table existed) and then all of its objects.
func queueTable(c *nftables.Conn, t *table) error {
	nt := &nftables.Table{Name: t.name, Family: t.family}
	c.AddTable(nt)
	c.DelTable(nt)
	c.AddTable(nt)
	chains := map[string]*nftables.Chain{}
	accept := nftables.ChainPolicyAccept
	for _, ch := range t.chains {
		if ch.base {
			continue
		}
		chains[ch.name] = c.AddChain(&nftables.Chain{Name: ch.name, Table: nt})
	}
	for _, s := range t.sets {
		ns := s.s
		ns.Table = nt
		if err := c.AddSet(&ns, s.elems); err != nil {
			return fmt.Errorf("set %s: %w", ns.Name, err)
		}
	}
	for _, ch := range t.chains {
		if !ch.base {
			continue
		}
		chains[ch.name] = c.AddChain(&nftables.Chain{Name: ch.name, Table: nt, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	}
	for _, ch := range t.chains {
		for _, r := range ch.rules {
			var ud []byte
			if r.comment != "" {
				ud = userdata.AppendString(nil, userdata.TypeComment, truncate(r.comment, 120))
			}
			c.AddRule(&nftables.Rule{Table: nt, Chain: chains[ch.name], Exprs: r.exprs, UserData: ud})
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// bridgeNetfilter sets the bridge's nf_call_iptables and nf_call_ip6tables
// options (only this bridge, not the host-wide sysctls) and reports
// whether br_netfilter is loaded to act on them.
func (kernel) bridgeNetfilter(bridge string, enable bool) (bool, error) {
	// The sysctls exist (per network namespace) only while br_netfilter
	// is loaded; without it the bridge options do nothing.
	sys4, err := readSysctlBool("/proc/sys/net/bridge/bridge-nf-call-iptables")
	if err != nil {
		return false, fmt.Errorf("br_netfilter not loaded: %w", err)
	}
	sys6, err := readSysctlBool("/proc/sys/net/bridge/bridge-nf-call-ip6tables")
	if err != nil {
		return false, fmt.Errorf("br_netfilter not loaded: %w", err)
	}
	v4, v6, err := getBridgeNF(bridge)
	if err != nil {
		return false, err
	}
	if (v4 || sys4) && (v6 || sys6) {
		return true, nil
	}
	if !enable {
		return false, nil
	}
	if err := setBridgeNF(bridge); err != nil {
		return false, err
	}
	v4, v6, err = getBridgeNF(bridge)
	if err != nil {
		return false, err
	}
	if !v4 || !v6 {
		return false, errors.New("bridge netfilter options did not stick")
	}
	return true, nil
}

func readSysctlBool(path string) (bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	return strings.TrimSpace(string(b)) == "1", nil
}
