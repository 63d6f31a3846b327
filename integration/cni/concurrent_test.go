package cnitest

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/cni"
)

// TestConcurrentAdds200 starts 200 ADDs at once, each its own plugin
// process (libcni execs the binary), as a runtime starting 200 pods does.
// Every pod must get its own address; then 200 concurrent DELs must leave
// the store empty and no veth behind.
func TestConcurrentAdds200(t *testing.T) {
	const pods = 200
	n := newNode(t, "10.244.103.0/24", false)
	start := time.Now()
	ps := make([]*pod, pods)
	for i := range ps {
		ps[i] = n.newPod(fmt.Sprintf("c%d", i))
	}
	t.Logf("created %d pod namespaces in %s", pods, time.Since(start).Round(time.Millisecond))

	addrs := make([]netip.Addr, pods)
	errs := make([]error, pods)
	var wg sync.WaitGroup
	start = time.Now()
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := n.add(p)
			if err != nil {
				errs[i] = err
				return
			}
			if len(r.IPs) != 1 {
				errs[i] = errorf("result has %d IPs", len(r.IPs))
				return
			}
			addrs[i], _ = netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
		}()
	}
	wg.Wait()
	addTime := time.Since(start)
	t.Logf("%d concurrent ADDs took %s", pods, addTime.Round(time.Millisecond))

	seen := map[netip.Addr]string{}
	for i, a := range addrs {
		if errs[i] != nil {
			t.Errorf("ADD %s: %v", ps[i].id, errs[i])
			continue
		}
		if !n.podCIDR.Contains(a) || a == netip.MustParseAddr("10.244.103.1") {
			t.Errorf("%s got %s", ps[i].id, a)
		}
		if prev, dup := seen[a]; dup {
			t.Errorf("%s given to %s and %s", a, prev, ps[i].id)
		}
		seen[a] = ps[i].id
	}
	if len(seen) != pods {
		t.Fatalf("%d distinct addresses for %d pods", len(seen), pods)
	}
	if recs := n.records(); len(recs) != pods {
		t.Errorf("store holds %d records, want %d", len(recs), pods)
	}
	// Spot-check the dataplane of the first and last pod.
	ping(t, ps[0].ns, addrs[pods-1])
	ping(t, ps[pods-1].ns, addrs[0])

	start = time.Now()
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = n.del(p)
		}()
	}
	wg.Wait()
	t.Logf("%d concurrent DELs took %s", pods, time.Since(start).Round(time.Millisecond))
	for i, err := range errs {
		if err != nil {
			t.Errorf("DEL %s: %v", ps[i].id, err)
		}
	}
	if recs := n.records(); len(recs) != 0 {
		t.Errorf("store not empty after DEL of all: %d records, e.g. %v", len(recs), recs[0])
	}
	for _, l := range n.links() {
		if cni.IsHostVethName(l) {
			t.Errorf("veth %s left after DEL of all", l)
		}
	}
	// Generous bound: on 2 busy cores this takes a few seconds; minutes
	// would mean the store lock is serialising far more than it should.
	if addTime > time.Minute {
		t.Errorf("200 concurrent ADDs took %s", addTime)
	}
}
