package nft

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// setBridgeNF switches on IFLA_BR_NF_CALL_IPTABLES and _IP6TABLES for one
// bridge (`ip link set BR type bridge nf_call_iptables 1
// nf_call_ip6tables 1`). vishvananda/netlink has no setter for them.
func setBridgeNF(bridge string) error {
	link, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", bridge, err)
	}
	if link.Type() != "bridge" {
		return fmt.Errorf("%s is a %s, not a bridge", bridge, link.Type())
	}
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(link.Attrs().Index)
	req.AddData(msg)
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("bridge"))
	data := info.AddRtAttr(nl.IFLA_INFO_DATA, nil)
	data.AddRtAttr(unix.IFLA_BR_NF_CALL_IPTABLES, []byte{1})
	data.AddRtAttr(unix.IFLA_BR_NF_CALL_IP6TABLES, []byte{1})
	req.AddData(info)
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return fmt.Errorf("set nf_call_iptables on %s: %w", bridge, err)
	}
	return nil
}

// getBridgeNF reads the two options back from the link's bridge data.
func getBridgeNF(bridge string) (v4, v6 bool, err error) {
	link, err := netlink.LinkByName(bridge)
	if err != nil {
		return false, false, fmt.Errorf("bridge %s: %w", bridge, err)
	}
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(link.Attrs().Index)
	req.AddData(msg)
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return false, false, fmt.Errorf("get link %s: %w", bridge, err)
	}
	if len(msgs) != 1 || len(msgs[0]) < unix.SizeofIfInfomsg {
		return false, false, errors.New("unexpected RTM_GETLINK answer")
	}
	attrs, err := nl.ParseRouteAttr(msgs[0][unix.SizeofIfInfomsg:])
	if err != nil {
		return false, false, err
	}
	for _, a := range attrs {
		if a.Attr.Type&nl.NLA_TYPE_MASK != unix.IFLA_LINKINFO {
			continue
		}
		infos, err := nl.ParseRouteAttr(a.Value)
		if err != nil {
			return false, false, err
		}
		for _, i := range infos {
			if i.Attr.Type&nl.NLA_TYPE_MASK != nl.IFLA_INFO_DATA {
				continue
			}
			data, err := nl.ParseRouteAttr(i.Value)
			if err != nil {
				return false, false, err
			}
			for _, d := range data {
				switch d.Attr.Type & nl.NLA_TYPE_MASK {
				case unix.IFLA_BR_NF_CALL_IPTABLES:
					v4 = len(d.Value) > 0 && d.Value[0] != 0
				case unix.IFLA_BR_NF_CALL_IP6TABLES:
					v6 = len(d.Value) > 0 && d.Value[0] != 0
				}
			}
		}
	}
	return v4, v6, nil
}
