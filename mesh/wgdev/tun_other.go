//go:build !linux

package wgdev

import (
	"errors"
	"time"

	"golang.zx2c4.com/wireguard/tun"
)

var errTUNNotLinux = errors.New("wgdev: persistent TUN devices need Linux")

func openPersistentTUN(string, int, bool, time.Duration) (tun.Device, bool, error) {
	return nil, false, errTUNNotLinux
}

// DeleteLink is not supported off Linux.
func DeleteLink(string) error { return errTUNNotLinux }
