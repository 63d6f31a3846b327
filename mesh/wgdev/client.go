package wgdev

import (
	"errors"
	"fmt"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
)

// ErrReplacePeers is returned for a configuration that would replace all
// peers: that drops every session and every roamed endpoint, so wgmesh
// applies per-peer diffs only.
var ErrReplacePeers = errors.New("wgdev: ReplacePeers is not allowed; apply per-peer changes")

// Client is a mesh.Device: wgctrl bound to one interface. On Linux wgctrl
// talks to wireguard-go through its UAPI socket in /var/run/wireguard.
type Client struct {
	name string
	c    *wgctrl.Client
}

var _ mesh.Device = (*Client)(nil)

// Dial opens a wgctrl client for the named interface.
func Dial(name string) (*Client, error) {
	c, err := wgctrl.New()
	if err != nil {
		return nil, fmt.Errorf("wgctrl: %w", err)
	}
	return &Client{name: name, c: c}, nil
}

// Device reads the interface's current configuration and peers.
func (c *Client) Device() (*wgtypes.Device, error) {
	d, err := c.c.Device(c.name)
	if err != nil {
		return nil, fmt.Errorf("read wireguard device %s: %w", c.name, err)
	}
	return d, nil
}

// ConfigureDevice applies cfg to the interface.
func (c *Client) ConfigureDevice(cfg wgtypes.Config) error {
	if cfg.ReplacePeers {
		return ErrReplacePeers
	}
	if err := c.c.ConfigureDevice(c.name, cfg); err != nil {
		return fmt.Errorf("configure wireguard device %s: %w", c.name, err)
	}
	return nil
}

// Close releases the wgctrl client.
func (c *Client) Close() error { return c.c.Close() }
