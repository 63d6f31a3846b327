package wgdev

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// dgramTUN stands in for a TUN without offloads: a non-blocking datagram
// socket keeps packet boundaries as the TUN's queue does, and Read takes one
// packet per call, blocking, as wireguard-go's NativeTun does then.
type dgramTUN struct {
	tun.Device // nil: only File, BatchSize and Read are used
	f          *os.File
	batch      int
	readErr    error
}

func (d *dgramTUN) File() *os.File { return d.f }
func (d *dgramTUN) BatchSize() int { return d.batch }

func (d *dgramTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if d.readErr != nil {
		return 0, d.readErr
	}
	n, err := d.f.Read(bufs[0][offset:])
	if err != nil {
		return 0, err
	}
	sizes[0] = n
	return 1, nil
}

// newDgramTUN returns the TUN end and the end packets are queued from.
func newDgramTUN(t *testing.T, batch int) (*dgramTUN, *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	d := &dgramTUN{f: os.NewFile(uintptr(fds[0]), "tun"), batch: batch}
	w := os.NewFile(uintptr(fds[1]), "queue")
	t.Cleanup(func() { d.f.Close(); w.Close() })
	return d, w
}

func packet(i int) []byte {
	return []byte(fmt.Sprintf("packet %d %s", i, bytes.Repeat([]byte{'x'}, i)))
}

func TestDrainTUNRead(t *testing.T) {
	const offset = 16
	tests := []struct {
		name   string
		queued int
		bufs   int
		want   []int // packets per Read until the queue is empty
	}{
		{name: "one packet", queued: 1, bufs: 8, want: []int{1}},
		{name: "all queued in one batch", queued: 5, bufs: 8, want: []int{5}},
		{name: "exactly a batch", queued: 8, bufs: 8, want: []int{8}},
		{name: "more than a batch", queued: 10, bufs: 4, want: []int{4, 4, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inner, q := newDgramTUN(t, 1)
			dev := newDrainTUN(inner)
			if _, ok := dev.(*drainTUN); !ok {
				t.Fatalf("a one-packet TUN was not wrapped: %T", dev)
			}
			for i := range tt.queued {
				if _, err := q.Write(packet(i)); err != nil {
					t.Fatal(err)
				}
			}
			var got []int
			next := 0
			for next < tt.queued {
				bufs := make([][]byte, tt.bufs)
				for i := range bufs {
					bufs[i] = make([]byte, offset+64)
				}
				sizes := make([]int, tt.bufs)
				n, err := dev.Read(bufs, sizes, offset)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, n)
				for i := range n {
					if p := bufs[i][offset : offset+sizes[i]]; !bytes.Equal(p, packet(next)) {
						t.Fatalf("read %d buffer %d: %q, want %q (in order, at the offset)", len(got), i, p, packet(next))
					}
					next++
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("packets per Read (-want +got):\n%s", diff)
			}
		})
	}
}

// An error from the blocking Read is returned as it is, nothing drained.
func TestDrainTUNReadError(t *testing.T) {
	inner, q := newDgramTUN(t, 1)
	inner.readErr = os.ErrClosed
	if _, err := q.Write(packet(1)); err != nil {
		t.Fatal(err)
	}
	dev := newDrainTUN(inner)
	bufs, sizes := [][]byte{make([]byte, 64), make([]byte, 64)}, make([]int, 2)
	if n, err := dev.Read(bufs, sizes, 0); n != 0 || !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Read = %d, %v; want 0, %v", n, err, os.ErrClosed)
	}
}

// A TUN with offloads returns a batch per read already: left alone.
func TestDrainTUNOffloadsUnwrapped(t *testing.T) {
	inner, _ := newDgramTUN(t, 128)
	if dev := newDrainTUN(inner); dev != tun.Device(inner) {
		t.Fatalf("a batching TUN was wrapped: %T", dev)
	}
}
