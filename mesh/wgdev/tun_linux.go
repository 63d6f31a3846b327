package wgdev

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// busyRetry is how often openPersistentTUN retries a TUN that another
// process still holds.
const busyRetry = 100 * time.Millisecond

// openPersistentTUN opens the named TUN, creating it or re-attaching to the
// persistent one a previous agent left, and marks it persistent
// (TUNSETPERSIST), so the interface with its addresses and routes outlives
// this process: while no agent runs, the kernel drops what is routed into
// it (nothing is read from the queue), and the next agent picks it up
// without a single route changing. existed reports a re-attach.
//
// It opens the device as tun.CreateTUN does (IFF_TUN|IFF_NO_PI, plus
// IFF_VNET_HDR unless noOffload) and hands the file to
// tun.CreateTUNFromFile, which enables TSO/USO itself when IFF_VNET_HDR is
// set; without it, reads are batched by drainTUN. The kernel takes the new
// flags on re-attach, so an interface made with other flags (e.g. by
// `ip tuntap`) is adopted too. Doing the open
// here rather than in tun.CreateTUN closes the descriptor when TUNSETIFF
// fails, which matters while retrying: a TUN still held by a previous agent
// that is shutting down (EBUSY) is retried for up to busyTimeout.
func openPersistentTUN(name string, mtu int, noOffload bool, busyTimeout time.Duration) (dev tun.Device, existed bool, err error) {
	_, lerr := net.InterfaceByName(name)
	existed = lerr == nil
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if !noOffload {
		flags |= unix.IFF_VNET_HDR
	}
	deadline := time.Now().Add(busyTimeout)
	var fd int
	for {
		fd, err = attachTUN(name, flags)
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			break
		}
		time.Sleep(busyRetry)
	}
	switch {
	case errors.Is(err, unix.EBUSY):
		return nil, existed, fmt.Errorf("tun %s is held by another process (another agent still running?): %w", name, err)
	case errors.Is(err, unix.EINVAL) && existed:
		return nil, existed, fmt.Errorf("interface %s exists and is not a TUN we can attach to (a kernel WireGuard or multi-queue interface?): %w", name, err)
	case err != nil:
		return nil, existed, err
	}
	f := os.NewFile(uintptr(fd), "/dev/net/tun")
	dev, err = tun.CreateTUNFromFile(f, mtu)
	if err != nil {
		f.Close()
		return nil, existed, err
	}
	return newDrainTUN(dev), existed, nil
}

// attachTUN opens /dev/net/tun, attaches it to the named interface (creating
// it if needed), marks the interface persistent and sets the descriptor
// non-blocking, as it must be before Go's netpoller sees it.
func attachTUN(name string, flags uint16) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("make tun %s persistent: %w", name, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// DeleteLink removes the named interface, e.g. the persistent TUN when
// wgmesh is uninstalled from a node. A missing interface is no error.
func DeleteLink(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	return netlink.LinkDel(link)
}
