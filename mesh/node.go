package mesh

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Sentinel errors wrapped by the validation functions, for errors.Is.
var (
	ErrMissing    = errors.New("missing")
	ErrMalformed  = errors.New("malformed")
	ErrNotAllowed = errors.New("not allowed")
)

// MaxKeepalive is the largest persistent keepalive WireGuard accepts (a
// 16-bit number of seconds).
const MaxKeepalive = 65535 * time.Second

// NodeError says why a node cannot be part of the mesh. Reason is stable
// and short (for events and metrics); Err is the human-readable detail.
type NodeError struct {
	Node   string
	Reason Reason
	Err    error
}

func (e *NodeError) Error() string {
	return fmt.Sprintf("node %q: %s: %v", e.Node, e.Reason, e.Err)
}

func (e *NodeError) Unwrap() error { return e.Err }

// ReasonOf returns the Reason carried by err, or "" if it carries none.
func ReasonOf(err error) Reason {
	var ne *NodeError
	if errors.As(err, &ne) {
		return ne.Reason
	}
	return ""
}

// parseHook, set only by tests, is called with the name of every Node
// parsed (as a peer by ParseNode, or as the own entry by ParseNodes): a test
// counts the calls to prove that a pass parses each Node once.
var parseHook func(name string)

// ParseNode validates a RawNode as a prospective peer. It checks every field
// a peer needs and reports the first problem as a *NodeError.
func ParseNode(raw RawNode) (Node, error) {
	if parseHook != nil {
		parseHook(raw.Name)
	}
	return parseNode(raw)
}

func parseNode(raw RawNode) (Node, error) {
	n := Node{Name: raw.Name, Created: raw.Created}
	fail := func(r Reason, err error) (Node, error) {
		return Node{}, &NodeError{Node: raw.Name, Reason: r, Err: err}
	}

	keyText, ok := raw.Annotations[AnnotationPublicKey]
	if !ok || strings.TrimSpace(keyText) == "" {
		return fail(ReasonNoPublicKey, fmt.Errorf("annotation %s is %w", AnnotationPublicKey, ErrMissing))
	}
	key, err := ParsePublicKey(keyText)
	if err != nil {
		return fail(ReasonBadPublicKey, fmt.Errorf("annotation %s: %w", AnnotationPublicKey, err))
	}
	n.PublicKey = key

	// The operator's override wins over what the agent published, so a
	// node behind NAT can be given its public address.
	epKey := AnnotationEndpointOverride
	epText, ok := raw.Annotations[epKey]
	if !ok || strings.TrimSpace(epText) == "" {
		epKey = AnnotationEndpoint
		epText, ok = raw.Annotations[epKey]
	}
	if !ok || strings.TrimSpace(epText) == "" {
		return fail(ReasonNoEndpoint, fmt.Errorf("annotation %s is %w", AnnotationEndpoint, ErrMissing))
	}
	ep, err := ParseEndpoint(epText)
	if err != nil {
		return fail(ReasonBadEndpoint, fmt.Errorf("annotation %s: %w", epKey, err))
	}
	n.Endpoint = ep

	cidrs, err := ParsePodCIDRs(raw.PodCIDRs)
	if err != nil {
		if errors.Is(err, ErrMissing) {
			return fail(ReasonNoPodCIDR, err)
		}
		return fail(ReasonBadPodCIDR, err)
	}
	n.PodCIDRs = cidrs

	if ka, ok := raw.Annotations[AnnotationKeepalive]; ok {
		d, err := ParseKeepalive(ka)
		if err != nil {
			return fail(ReasonBadKeepalive, fmt.Errorf("annotation %s: %w", AnnotationKeepalive, err))
		}
		n.Keepalive = &d
	}
	if err := parseLocation(raw, &n); err != nil {
		return Node{}, err
	}
	n.Relay, n.NoRelay = relayMark(raw)
	return n, nil
}

// ParsePublicKey parses a base64 WireGuard public key. The all-zero key is
// rejected: it is what an unset key looks like.
func ParsePublicKey(s string) (wgtypes.Key, error) {
	k, err := wgtypes.ParseKey(strings.TrimSpace(s))
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("%w public key %q: %v", ErrMalformed, s, err)
	}
	if k == (wgtypes.Key{}) {
		return wgtypes.Key{}, fmt.Errorf("%w public key %q: all zero", ErrMalformed, s)
	}
	return k, nil
}

// ParseEndpoint parses "host:port" where host is an IP literal (IPv6 in
// brackets) or a DNS name and port is 1-65535.
func ParseEndpoint(s string) (Endpoint, error) {
	host, portText, err := net.SplitHostPort(strings.TrimSpace(s))
	if err != nil {
		return Endpoint{}, fmt.Errorf("%w endpoint %q: want host:port (IPv6 in brackets): %v", ErrMalformed, s, err)
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil || port == 0 {
		return Endpoint{}, fmt.Errorf("%w endpoint %q: port %q is not in 1-65535", ErrMalformed, s, portText)
	}
	if host == "" {
		return Endpoint{}, fmt.Errorf("%w endpoint %q: empty host", ErrMalformed, s)
	}
	if addr, err := netip.ParseAddr(host); err == nil {
		if addr.IsUnspecified() || addr.IsMulticast() {
			return Endpoint{}, fmt.Errorf("%w endpoint %q: %s is not a unicast address", ErrMalformed, s, addr)
		}
		return Endpoint{Host: addr.Unmap().String(), Port: uint16(port)}, nil
	}
	if err := checkHostname(host); err != nil {
		return Endpoint{}, fmt.Errorf("%w endpoint %q: %v", ErrMalformed, s, err)
	}
	return Endpoint{Host: strings.ToLower(strings.TrimSuffix(host, ".")), Port: uint16(port)}, nil
}

// checkHostname accepts RFC 1123 host names. A name whose last label is all
// digits is refused because it is almost certainly a mistyped IP address.
func checkHostname(h string) error {
	name := strings.TrimSuffix(h, ".")
	if len(name) == 0 || len(name) > 253 {
		return fmt.Errorf("host %q is neither an IP address nor a DNS name", h)
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("host %q is neither an IP address nor a DNS name", h)
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("host %q is neither an IP address nor a DNS name", h)
			}
		}
	}
	if _, err := strconv.Atoi(labels[len(labels)-1]); err == nil {
		return fmt.Errorf("host %q is not a valid IP address", h)
	}
	return nil
}

// String formats the endpoint as host:port, bracketing IPv6.
func (e Endpoint) String() string {
	return net.JoinHostPort(e.Host, strconv.Itoa(int(e.Port)))
}

// AddrPort returns the endpoint as an address when Host is an IP literal.
func (e Endpoint) AddrPort() (netip.AddrPort, bool) {
	a, err := netip.ParseAddr(e.Host)
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a, e.Port), true
}

// ParsePodCIDRs parses a node's pod prefixes. Each must be canonical
// (address bits beyond the mask zero): "10.244.1.5/24" is almost certainly
// a mistake and routing it as 10.244.1.0/24 would hide that. Prefixes of
// one node must not overlap each other, and /0 is refused because it would
// pull all traffic into one peer.
func ParsePodCIDRs(in []string) ([]netip.Prefix, error) {
	if len(in) == 0 {
		return nil, fmt.Errorf("spec.podCIDRs is %w", ErrMissing)
	}
	return parsePrefixes(in, "pod CIDR")
}

// parsePrefixes parses a non-empty list of prefixes routed to one peer (a
// node's pod CIDRs, an external peer's allowed IPs; what names them in
// errors) by ParsePodCIDRs' rules: canonical, not IPv4-mapped, not /0, not
// overlapping each other. The result is sorted.
func parsePrefixes(in []string, what string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(in))
	for _, s := range in {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("%w %s %q: %v", ErrMalformed, what, s, err)
		}
		if p.Addr().Is4In6() {
			return nil, fmt.Errorf("%w %s %q: IPv4-mapped IPv6 prefix", ErrMalformed, what, s)
		}
		if p.Masked() != p {
			return nil, fmt.Errorf("%w %s %q: host bits set, did you mean %s?", ErrMalformed, what, s, p.Masked())
		}
		if p.Bits() == 0 {
			return nil, fmt.Errorf("%s %q is %w: it would capture all traffic", what, s, ErrNotAllowed)
		}
		for _, q := range out {
			if q.Overlaps(p) {
				return nil, fmt.Errorf("%w %ss: %s overlaps %s", ErrMalformed, what, p, q)
			}
		}
		out = append(out, p)
	}
	sortPrefixes(out)
	return out, nil
}

// ParseKeepalive parses a persistent keepalive as a Go duration ("25s") or
// a bare number of seconds ("25"). WireGuard counts whole seconds up to
// 65535; "0" disables keepalives.
func ParseKeepalive(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	var d time.Duration
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 || n > int64(MaxKeepalive/time.Second) {
			return 0, fmt.Errorf("%w keepalive %q: want 0-65535 seconds", ErrMalformed, s)
		}
		d = time.Duration(n) * time.Second
	} else {
		d, err = time.ParseDuration(s)
		if err != nil {
			return 0, fmt.Errorf("%w keepalive %q: want a duration like 25s or a number of seconds", ErrMalformed, s)
		}
	}
	if d < 0 || d > MaxKeepalive {
		return 0, fmt.Errorf("%w keepalive %q: want 0s-65535s", ErrMalformed, s)
	}
	if d%time.Second != 0 {
		return 0, fmt.Errorf("%w keepalive %q: WireGuard counts whole seconds", ErrMalformed, s)
	}
	return d, nil
}
