package dataplane

import (
	"slices"
	"sync"
	"time"
)

// WireGuard's worst-case overhead: outer IPv6 header (40) + UDP (8) +
// WireGuard data header (16) + authentication tag (16).
const WireGuardOverhead = 80

// FallbackMTU is used when no underlay interface can be found; it is
// wg-quick's default.
const FallbackMTU = 1420

// LinkInfo is a network interface as MTU detection sees it.
type LinkInfo struct {
	Name     string
	Index    int
	MTU      int
	Up       bool
	Loopback bool
}

// ChooseMTU picks the WireGuard MTU: the MTU of the interface carrying the
// default route (defaultIndex, 0 if there is none) minus WireGuardOverhead;
// without a default route, the first up non-loopback interface's MTU minus
// the overhead; else FallbackMTU. Interfaces named in exclude (our own
// WireGuard interface and bridge, present after a restart) never count.
func ChooseMTU(links []LinkInfo, defaultIndex int, exclude ...string) int {
	usable := func(l LinkInfo) bool {
		for _, e := range exclude {
			if l.Name == e {
				return false
			}
		}
		return l.MTU > WireGuardOverhead
	}
	if defaultIndex != 0 {
		for _, l := range links {
			if l.Index == defaultIndex && usable(l) {
				return l.MTU - WireGuardOverhead
			}
		}
	}
	var best *LinkInfo
	for i, l := range links {
		if !l.Up || l.Loopback || !usable(l) {
			continue
		}
		if best == nil || l.Index < best.Index {
			best = &links[i]
		}
	}
	if best != nil {
		return best.MTU - WireGuardOverhead
	}
	return FallbackMTU
}

// MTUDetector is AutoMTU for a caller that asks every few seconds (the
// reconciler's MTU check): a full look lists every link and every route of
// the main table, which on a node of a large mesh means thousands of routes
// (one per other node) parsed each time. Between full looks (every
// FullEvery) it reads the one link that carried the default route last
// time: a changed MTU on it, what an operator or a cloud changes, is seen
// at once; the default route moving to another link is seen at the next
// full look. The zero value is not usable; use NewMTUDetector.
type MTUDetector struct {
	// FullEvery is how often Detect looks at every link and route.
	FullEvery time.Duration

	now       func() time.Time
	linkInfos func() ([]LinkInfo, int, error)
	// linkByIndex reads one link; ok is false if it is gone.
	linkByIndex func(index int) (info LinkInfo, ok bool, err error)

	mu       sync.Mutex
	defIndex int // the default route's link at the last full look; 0: none
	full     time.Time
}

// DefaultMTUFullEvery is MTUDetector.FullEvery's default.
const DefaultMTUFullEvery = time.Minute

// NewMTUDetector returns a detector over the running kernel.
func NewMTUDetector() *MTUDetector {
	return &MTUDetector{FullEvery: DefaultMTUFullEvery, now: time.Now, linkInfos: LinkInfos, linkByIndex: linkByIndex}
}

// Detect returns what AutoMTU would, from one link when it can.
func (d *MTUDetector) Detect(exclude ...string) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.defIndex != 0 && d.now().Sub(d.full) < d.FullEvery {
		// ChooseMTU's rule for the default route's link; a link that
		// is gone or no longer qualifies means a full look.
		l, ok, err := d.linkByIndex(d.defIndex)
		if err == nil && ok && l.MTU > WireGuardOverhead && !slices.Contains(exclude, l.Name) {
			return l.MTU - WireGuardOverhead, nil
		}
	}
	links, def, err := d.linkInfos()
	if err != nil {
		return 0, err
	}
	d.defIndex, d.full = def, d.now()
	return ChooseMTU(links, def, exclude...), nil
}
