package wgdev

import "github.com/vishvananda/netlink"

// setLinkUp sets the interface administratively up.
func setLinkUp(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(link)
}
