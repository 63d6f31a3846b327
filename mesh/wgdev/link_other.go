//go:build !linux

package wgdev

import "errors"

func setLinkUp(name string) error {
	return errors.New("wgdev: only Linux is supported")
}
