package informerrun

import (
	"context"
	"errors"
	"testing"
	"time"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
)

func TestRunLifecycle(t *testing.T) {
	client := fake.NewClientset()
	f := informers.NewSharedInformerFactory(client, 0)
	inf := f.Core().V1().Nodes().Informer()
	r := New(Config{Client: client, Factory: f, Synced: []cache.InformerSynced{inf.HasSynced}, Component: "test", Host: "n1", SyncedMessage: "synced"})
	if r.Recorder() != nil {
		t.Fatal("recorder before Run")
	}
	if r.HasSynced() {
		t.Fatal("synced before Run")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	select {
	case <-r.Changed(): // the first sync signals
	case <-time.After(10 * time.Second):
		t.Fatal("no signal after the first sync")
	}
	if !r.HasSynced() || r.Recorder() == nil {
		t.Fatalf("after sync: synced %v, recorder %v", r.HasSynced(), r.Recorder())
	}
	if err := r.Run(ctx); !errors.Is(err, ErrAlreadyRunning) {
		t.Fatalf("second Run = %v, want ErrAlreadyRunning", err)
	}
	// Signals coalesce: two, one receive, then nothing.
	r.Signal()
	r.Signal()
	<-r.Changed()
	select {
	case <-r.Changed():
		t.Fatal("signals did not coalesce")
	default:
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if r.Recorder() != nil {
		t.Fatal("recorder after Run returned")
	}
}
