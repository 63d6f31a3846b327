package mesh

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"time"
)

// endpointResolver resolves the DNS-name endpoints of the peers once per
// pass and caches the answers, so that a failed lookup keeps the last good
// address instead of dropping the peer's endpoint.
type endpointResolver struct {
	resolver Resolver // nil: only IP literal endpoints get an address
	timeout  time.Duration
	log      *slog.Logger
	// cache maps a name to its last good address; names no peer uses any
	// more are dropped.
	cache map[string]netip.Addr
}

func newEndpointResolver(r Resolver, timeout time.Duration, log *slog.Logger) *endpointResolver {
	return &endpointResolver{
		resolver: r,
		timeout:  cmp.Or(timeout, DefaultLookupTimeout),
		log:      log,
		cache:    map[string]netip.Addr{},
	}
}

// resolve returns addresses for the DNS-name endpoints among the nodes
// (Input.Resolved). A failed lookup falls back to the last good address.
// The map is the cache itself: valid until the next call.
func (e *endpointResolver) resolve(ctx context.Context, nodes []Node) map[string]netip.Addr {
	needed := map[string]bool{}
	for _, n := range nodes {
		if _, ok := n.Endpoint.AddrPort(); !ok {
			needed[n.Endpoint.Host] = true
		}
	}
	for h := range e.cache {
		if !needed[h] {
			delete(e.cache, h)
		}
	}
	if len(needed) == 0 || e.resolver == nil {
		return e.cache
	}
	hosts := make([]string, 0, len(needed))
	for h := range needed {
		hosts = append(hosts, h)
	}
	slices.Sort(hosts)
	for _, h := range hosts {
		lctx, cancel := context.WithTimeout(ctx, e.timeout)
		addrs, err := e.resolver.LookupNetIP(lctx, "ip", h)
		cancel()
		if err == nil && len(addrs) == 0 {
			err = errors.New("no addresses")
		}
		if err != nil {
			if prev, ok := e.cache[h]; ok {
				e.log.Warn("endpoint lookup failed; keeping last address", "host", h, "addr", prev, "err", err)
			} else {
				e.log.Debug("endpoint lookup failed", "host", h, "err", err)
			}
			continue
		}
		e.cache[h] = pickAddr(addrs, e.cache[h])
	}
	return e.cache
}

// pickAddr keeps the previous address while it is still among the answers,
// so DNS round-robin does not rewrite the peer's endpoint on every pass;
// otherwise it picks the smallest address, preferring IPv4.
func pickAddr(addrs []netip.Addr, prev netip.Addr) netip.Addr {
	var best netip.Addr
	for _, a := range addrs {
		a = a.Unmap()
		if !a.IsValid() {
			continue
		}
		if prev.IsValid() && a == prev {
			return prev
		}
		if !best.IsValid() || a.Compare(best) < 0 {
			best = a
		}
	}
	return best
}
