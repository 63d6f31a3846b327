package nfqdelay

import (
	"encoding/binary"
	"errors"
	"slices"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
)

// The messages as the kernel reads them (uapi nfnetlink_queue.h); the byte
// strings are written out from the structs' layouts, not from the code.
func TestMessages(t *testing.T) {
	hdr := func(typ uint16, flags netlink.HeaderFlags) netlink.Header {
		return netlink.Header{Type: netlink.HeaderType(typ), Flags: flags}
	}
	// nla is an attribute header: nla_len, nla_type in host order.
	nla := func(length, typ uint16) []byte {
		return binary.NativeEndian.AppendUint16(binary.NativeEndian.AppendUint16(nil, length), typ)
	}
	tests := []struct {
		name string
		got  netlink.Message
		want netlink.Message
	}{
		{"bind", bindMessages(7, 4096)[0], netlink.Message{Header: hdr(0x0302, netlink.Request|netlink.Acknowledge), Data: slices.Concat(
			[]byte{0, 0, 0, 7}, // nfgenmsg: AF_UNSPEC, v0, queue 7 (big-endian)
			nla(8, 1),          // NFQA_CFG_CMD
			[]byte{1, 0, 0, 0}, // BIND, pad, pf
		)}},
		{"params", bindMessages(7, 4096)[1], netlink.Message{Header: hdr(0x0302, netlink.Request|netlink.Acknowledge), Data: slices.Concat(
			[]byte{0, 0, 0, 7},
			nla(9, 2),                      // NFQA_CFG_PARAMS
			[]byte{0, 0, 0, 0, 1, 0, 0, 0}, // copy_range 0, COPY_META, padding to 4
			nla(8, 3),                      // NFQA_CFG_QUEUE_MAXLEN
			[]byte{0, 0, 0x10, 0},          // 4096 big-endian
		)}},
		{"verdict", verdictMessage(300, 0x01020304), netlink.Message{Header: hdr(0x0301, netlink.Request), Data: slices.Concat(
			[]byte{0, 0, 1, 44}, // queue 300
			nla(12, 2),          // NFQA_VERDICT_HDR
			[]byte{0, 0, 0, 1},  // NF_ACCEPT
			[]byte{1, 2, 3, 4},  // packet id
		)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, tt.got); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseMessage(t *testing.T) {
	nla := func(length, typ uint16) []byte {
		return binary.NativeEndian.AppendUint16(binary.NativeEndian.AppendUint16(nil, length), typ)
	}
	packet := func(attrs ...[]byte) netlink.Message {
		return netlink.Message{Header: netlink.Header{Type: 0x0300}, Data: slices.Concat(append([][]byte{{2, 0, 0, 7}}, attrs...)...)}
	}
	nlerr := func(errno int32) netlink.Message {
		// struct nlmsgerr: error (negative errno, host order), then the
		// request's header.
		return netlink.Message{Header: netlink.Header{Type: 2}, Data: append(binary.NativeEndian.AppendUint32(nil, uint32(errno)), make([]byte, 16)...)}
	}
	tests := []struct {
		name    string
		m       netlink.Message
		id      uint32
		ok      bool
		wantErr error
	}{
		{"packet", packet(
			nla(8, 9), []byte{0, 0, 0, 1}, // another attribute first (NFQA_IFINDEX_OUTDEV)
			nla(11, 1), []byte{0, 0, 0x12, 0x34, 8, 0, 3, 0}, // NFQA_PACKET_HDR: id 0x1234, ETH_P_IP, NF_INET_LOCAL_OUT, pad
		), 0x1234, true, nil},
		{"other message", netlink.Message{Header: netlink.Header{Type: 0x0302}, Data: []byte{0, 0, 0, 7}}, 0, false, nil},
		{"ack", nlerr(0), 0, false, nil},
		{"verdict for a flushed packet", nlerr(-2), 0, false, syscall.ENOENT},
		{"no header", packet(nla(8, 9), []byte{0, 0, 0, 1}), 0, false, errAny},
		{"short header", packet(nla(6, 1), []byte{0, 0, 0, 0}), 0, false, errShort},
		{"truncated", netlink.Message{Header: netlink.Header{Type: 0x0300}, Data: []byte{2, 0}}, 0, false, errShort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, ok, err := parseMessage(uint16(tt.m.Header.Type), tt.m.Data)
			errOK := errors.Is(err, tt.wantErr) || (tt.wantErr == errAny && err != nil)
			if !errOK || id != tt.id || ok != tt.ok {
				t.Errorf("parseMessage = %#x, %v, %v; want %#x, %v, error %v", id, ok, err, tt.id, tt.ok, tt.wantErr)
			}
		})
	}
}

// errAny stands for any error in a table.
var errAny = errors.New("any error")
