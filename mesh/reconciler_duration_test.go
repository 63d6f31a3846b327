package mesh_test

import (
	"context"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/meshtest"
)

// TestStatusDuration checks that Status.Duration is the time between the
// start and the end of the pass, as the clock tells it, and that the
// OnReconcile hook sees the same value.
func TestStatusDuration(t *testing.T) {
	priv, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	calls := 0
	var hooked []mesh.Status
	r := mesh.New(mesh.Config{
		NodeName:   "node-a",
		PublicKey:  priv.PublicKey(),
		ListenPort: 51820,
		Source:     meshtest.NewSource("node-a"),
		Device:     meshtest.NewDevice("wgmesh0"),
		Dataplane:  &meshtest.Dataplane{},
		// Every reading of the clock advances it by 750ms.
		Now: func() time.Time {
			calls++
			return t0.Add(time.Duration(calls) * 750 * time.Millisecond)
		},
		OnReconcile: func(s mesh.Status) { hooked = append(hooked, s) },
	})
	for pass := 1; pass <= 2; pass++ {
		if err := r.Reconcile(context.Background()); err != nil {
			t.Fatalf("pass %d: %v", pass, err)
		}
		st := r.Status()
		if st.Duration != 750*time.Millisecond {
			t.Errorf("pass %d: Duration = %v, want 750ms", pass, st.Duration)
		}
		if len(hooked) != pass || hooked[pass-1].Duration != st.Duration {
			t.Errorf("pass %d: OnReconcile saw %d statuses, last %+v", pass, len(hooked), hooked)
		}
	}
}
