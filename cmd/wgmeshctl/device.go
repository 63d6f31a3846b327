package main

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// Sentinel errors for the two failures an operator meets most.
var (
	ErrNoInterface      = errors.New("no such WireGuard interface")
	ErrPermissionDenied = errors.New("permission denied")
)

// readDevice reads the named interface through wgctrl (the UAPI socket of
// wireguard-go, or the kernel's genetlink if the interface is a kernel one).
func readDevice(name string) (*wgtypes.Device, error) {
	c, err := wgctrl.New()
	if err != nil {
		return nil, deviceError(name, err)
	}
	defer c.Close()
	dev, err := c.Device(name)
	if err != nil {
		return nil, deviceError(name, err)
	}
	return dev, nil
}

// deviceError turns wgctrl's errors into ones that say what to do.
func deviceError(name string, err error) error {
	sock := wgdev.SocketPath(name)
	switch {
	case errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM):
		return fmt.Errorf("%w reading WireGuard interface %s: run as root (the UAPI socket %s is root-only): %w",
			ErrPermissionDenied, name, sock, err)
	case errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET):
		// The socket file is there but nothing listens (a dead agent), or
		// the agent died while answering.
		return fmt.Errorf("%w %s: the UAPI socket %s exists but no process serves it (is wgmesh-agent running?): %w",
			ErrNoInterface, name, sock, err)
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w %s: no %s and no kernel interface of that name (is wgmesh-agent running on this node, with interface %s?)",
			ErrNoInterface, name, sock, name)
	}
	return fmt.Errorf("read WireGuard interface %s: %w", name, err)
}
