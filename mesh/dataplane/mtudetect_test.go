package dataplane

import (
	"errors"
	"testing"
	"time"
)

func TestMTUDetector(t *testing.T) {
	now := time.Unix(1000, 0)
	links := []LinkInfo{
		{Name: "lo", Index: 1, MTU: 65536, Up: true, Loopback: true},
		{Name: "eth0", Index: 2, MTU: 1500, Up: true},
		{Name: "eth1", Index: 3, MTU: 9000, Up: true},
		{Name: "wgmesh0", Index: 4, MTU: 1420, Up: true},
	}
	def := 2
	var fullLooks, linkReads int
	var linkErr error
	d := &MTUDetector{
		FullEvery: time.Minute,
		now:       func() time.Time { return now },
		linkInfos: func() ([]LinkInfo, int, error) {
			fullLooks++
			return append([]LinkInfo(nil), links...), def, nil
		},
		linkByIndex: func(index int) (LinkInfo, bool, error) {
			linkReads++
			if linkErr != nil {
				return LinkInfo{}, false, linkErr
			}
			for _, l := range links {
				if l.Index == index {
					return l, true, nil
				}
			}
			return LinkInfo{}, false, nil
		},
	}
	detect := func(step string, want, wantFull, wantReads int) {
		t.Helper()
		fullLooks, linkReads = 0, 0
		got, err := d.Detect("wgmesh0", "wgmesh-br0")
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if got != want || fullLooks != wantFull || linkReads != wantReads {
			t.Errorf("%s: mtu %d, full looks %d, link reads %d; want %d, %d, %d", step, got, fullLooks, linkReads, want, wantFull, wantReads)
		}
	}
	detect("first call looks at everything", 1420, 1, 0)
	detect("then one link", 1420, 0, 1)

	links[1].MTU = 1400 // the underlay's MTU lowered
	detect("a lowered MTU is seen at once", 1320, 0, 1)

	def = 3 // the default route moved to eth1
	now = now.Add(30 * time.Second)
	detect("a moved default route waits for the full look", 1320, 0, 1)
	now = now.Add(31 * time.Second)
	detect("full look after FullEvery", 8920, 1, 0)

	links = links[:2] // eth1 removed (and wgmesh0)
	def = 0
	detect("the link is gone: full look, first up link", 1320, 1, 1)

	links = append(links, LinkInfo{Name: "eth1", Index: 3, MTU: 9000, Up: true})
	def = 3
	now = now.Add(2 * time.Minute)
	detect("full look again", 8920, 1, 0)
	linkErr = errors.New("netlink: interrupted")
	detect("a failed read means a full look", 8920, 1, 1)
}
