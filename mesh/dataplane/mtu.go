package dataplane

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
