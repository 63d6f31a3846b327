//go:build !linux

package dataplane

import (
	"errors"
	"net/netip"
)

var errUnsupported = errors.New("dataplane: only Linux is supported")

// NewSystem returns a System whose every operation fails: wgmesh's data
// path is Linux-only.
func NewSystem() System { return unsupported{} }

type unsupported struct{}

func (unsupported) EnsureBridge(string, int) error       { return errUnsupported }
func (unsupported) EnsureLinkUp(string, int) error       { return errUnsupported }
func (unsupported) Addrs(string) ([]netip.Prefix, error) { return nil, errUnsupported }
func (unsupported) AddAddr(string, netip.Prefix) error   { return errUnsupported }
func (unsupported) DelAddr(string, netip.Prefix) error   { return errUnsupported }
func (unsupported) Routes(int) ([]Route, error)          { return nil, errUnsupported }
func (unsupported) AddRoute(Route) error                 { return errUnsupported }
func (unsupported) ReplaceRoute(Route) error             { return errUnsupported }
func (unsupported) DelRoute(Route) error                 { return errUnsupported }
func (unsupported) Sysctl(string) (string, error)        { return "", errUnsupported }
func (unsupported) SetSysctl(string, string) error       { return errUnsupported }
func (unsupported) ApplyFirewall(Firewall) error         { return errUnsupported }
func (unsupported) ApplyGuard(Guard) error               { return errUnsupported }
func (unsupported) RemoveFirewall(...string) error       { return errUnsupported }
func (unsupported) DeleteLink(string) error              { return errUnsupported }

// AutoMTU is not supported off Linux.
func AutoMTU(...string) (int, error) { return 0, errUnsupported }

// LinkInfos is not supported off Linux.
func LinkInfos() ([]LinkInfo, int, error) { return nil, 0, errUnsupported }

func linkByIndex(int) (LinkInfo, bool, error) { return LinkInfo{}, false, errUnsupported }
