package wgdev

import (
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// drainTUN batches reads from a TUN without offloads (no IFF_VNET_HDR).
// wireguard-go's TUN then returns one packet per Read, and every packet
// makes its own way through the pipeline: one batch, one hand-off to the
// encryption workers and the sender, one Send, for which conn.StdNetBind
// resets all of its 128 message headers (7.6% of the node role's CPU
// samples without offloads, docs/benchmarks.md round 11). After the blocking
// Read we take what the kernel has queued already, without waiting, so that
// under load a batch carries many packets, which the bind then also
// coalesces into UDP GSO sends; when the queue is empty a batch stays one
// packet and costs one more read that finds nothing.
type drainTUN struct {
	tun.Device
	// readMore reads one queued packet into p without blocking; it
	// returns unix.EAGAIN when nothing is queued.
	readMore func(p []byte) (int, error)
}

// newDrainTUN wraps dev if it reads one packet at a time; otherwise (with
// offloads, where one read is already a batch) it returns dev as it is.
func newDrainTUN(dev tun.Device) tun.Device {
	f := dev.File()
	if dev.BatchSize() != 1 || f == nil {
		return dev
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return dev
	}
	return &drainTUN{Device: dev, readMore: func(p []byte) (n int, err error) {
		// A callback that returns true never waits for readiness:
		// the descriptor is non-blocking (see attachTUN).
		if cerr := rc.Read(func(fd uintptr) bool {
			n, err = unix.Read(int(fd), p)
			return true
		}); cerr != nil {
			return 0, cerr
		}
		return n, err
	}}
}

func (t *drainTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := t.Device.Read(bufs, sizes, offset)
	if err != nil || n != 1 {
		return n, err
	}
	for n < len(bufs) {
		m, rerr := t.readMore(bufs[n][offset:])
		if rerr != nil || m <= 0 {
			// EAGAIN: the queue is empty. Any other error (the
			// device closing) the next blocking Read reports.
			break
		}
		sizes[n] = m
		n++
	}
	return n, nil
}
