// Package nfqdelay holds packets for a random time in userspace through an
// NFQUEUE and then lets them go: delay and jitter where the kernel has no
// sch_netem (the soak's machine: "Specified qdisc kind is unknown", and no
// fq either, so eBPF departure times would be ignored too). A rule such as
// `iptables -t mangle -A OUTPUT -o eth0 -j NFQUEUE --queue-num N
// --queue-bypass` sends a namespace's packets to queue N; the Delayer bound
// to it gives each packet's verdict (accept) after a delay drawn uniformly
// from [Min, Max], so packets leave later and, as with netem's jitter, out
// of order. It talks nfnetlink_queue itself (uapi
// linux/netfilter/nfnetlink_queue.h) over github.com/mdlayher/netlink.
package nfqdelay

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nfnetlink_queue's vocabulary (uapi linux/netfilter/nfnetlink.h and
// nfnetlink_queue.h).
const (
	subsysQueue = 3 // NFNL_SUBSYS_QUEUE

	msgPacket  = 0 // NFQNL_MSG_PACKET
	msgVerdict = 1 // NFQNL_MSG_VERDICT
	msgConfig  = 2 // NFQNL_MSG_CONFIG

	attrPacketHdr  = 1 // NFQA_PACKET_HDR
	attrVerdictHdr = 2 // NFQA_VERDICT_HDR

	attrCfgCmd      = 1 // NFQA_CFG_CMD
	attrCfgParams   = 2 // NFQA_CFG_PARAMS
	attrCfgQueueLen = 3 // NFQA_CFG_QUEUE_MAXLEN

	cmdBind = 1 // NFQNL_CFG_CMD_BIND

	copyMeta = 1 // NFQNL_COPY_META: the packet's id, not its bytes

	verdictAccept = 1 // NF_ACCEPT
)

// Config is one delayer.
type Config struct {
	// NetNS is the network namespace whose queue is served (a path such
	// as /run/netns/NAME); empty: the caller's.
	NetNS string
	// Queue is the NFQUEUE number the rule sends packets to.
	Queue uint16
	// Min and Max bound each packet's delay (uniform).
	Min, Max time.Duration
	// Seed seeds the delays.
	Seed uint64
	// MaxLen is the kernel queue's length (packets held at once); 0: 8192.
	// Packets beyond it are dropped by the kernel (counted in
	// /proc/net/netfilter/nfnetlink_queue as queue_dropped).
	MaxLen uint32
}

// Stats is what a delayer did.
type Stats struct {
	// Packets is how many packets it held and let go.
	Packets int
	// Delays are the delays it gave (sorted), as many as Packets.
	Delays []time.Duration
	// Flushed counts packets the kernel dropped before their verdict (it
	// flushes a namespace's queues whenever a netfilter hook there is
	// unregistered): loss on top of whatever loss is meant.
	Flushed int
	// Errors counts failed receives or verdicts (each may lose packets).
	Errors int
	// FirstError is the first of them.
	FirstError string
}

// Delayer serves one queue; New does no I/O, Run does the work.
type Delayer struct {
	cfg   Config
	ready chan struct{}

	mu    sync.Mutex
	stats Stats
}

// New returns a delayer for cfg.
func New(cfg Config) *Delayer {
	if cfg.MaxLen == 0 {
		cfg.MaxLen = 8192
	}
	return &Delayer{cfg: cfg, ready: make(chan struct{})}
}

// Ready is closed once the queue is bound: packets sent to it from then on
// are delayed (before, a --queue-bypass rule lets them pass).
func (d *Delayer) Ready() <-chan struct{} { return d.ready }

// Stats returns what the delayer did so far.
func (d *Delayer) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.stats
	s.Delays = slices.Clone(s.Delays)
	slices.Sort(s.Delays)
	return s
}

// Run binds the queue and delays every packet it receives until ctx is
// done; then it lets the packets it still holds go at their time (at most
// Max later: closing the socket would make the kernel drop them), closes
// the socket (which unbinds the queue) and returns. Remove the rule before cancelling, or packets that arrive
// meanwhile pass undelayed (with --queue-bypass) once the queue is gone.
func (d *Delayer) Run(ctx context.Context) error {
	if d.cfg.Max < d.cfg.Min || d.cfg.Min < 0 {
		return fmt.Errorf("nfqdelay: delay range [%s, %s] is empty", d.cfg.Min, d.cfg.Max)
	}
	nc := &netlink.Config{}
	if d.cfg.NetNS != "" {
		f, err := os.Open(d.cfg.NetNS)
		if err != nil {
			return fmt.Errorf("nfqdelay: open netns: %w", err)
		}
		defer f.Close()
		nc.NetNS = int(f.Fd())
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nc)
	if err != nil {
		return fmt.Errorf("nfqdelay: dial nfnetlink: %w", err)
	}
	defer c.Close()
	// Many packets may arrive at once (a burst of a TCP window): a large
	// receive buffer keeps the kernel from failing to deliver them.
	_ = c.SetReadBuffer(4 << 20)
	for _, m := range bindMessages(d.cfg.Queue, d.cfg.MaxLen) {
		if _, err := c.Execute(m); err != nil {
			return fmt.Errorf("nfqdelay: configure queue %d: %w", d.cfg.Queue, err)
		}
	}
	close(d.ready)

	rng := rand.New(rand.NewPCG(d.cfg.Seed, d.cfg.Seed^0xde1a7))
	// Conn.Receive stops at the first error message of a batch and drops
	// the packets after it, which would then never get a verdict; the
	// socket is read directly, each message on its own.
	raw, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("nfqdelay: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Now()) })
	defer stop()
	var wg sync.WaitGroup
	buf := make([]byte, 1<<16)
	for ctx.Err() == nil {
		var n int
		var rerr error
		err := raw.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), buf, 0)
			return rerr != unix.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			// ENOBUFS: the kernel could not deliver some packets (they
			// stay queued until the socket closes); counted.
			d.fail(fmt.Errorf("receive: %w", err))
			continue
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			d.fail(fmt.Errorf("parse: %w", err))
			continue
		}
		for _, m := range msgs {
			id, ok, err := parseMessage(m.Header.Type, m.Data)
			switch {
			case errors.Is(err, unix.ENOENT):
				// The answer to a verdict for a packet the kernel no
				// longer holds: it dropped it meanwhile (it flushes
				// every queue of a namespace when a netfilter hook
				// there is unregistered, e.g. a base chain replaced).
				d.mu.Lock()
				d.stats.Flushed++
				d.mu.Unlock()
				continue
			case err != nil:
				d.fail(err)
				continue
			case !ok:
				continue
			}
			delay := d.cfg.Min
			if span := d.cfg.Max - d.cfg.Min; span > 0 {
				delay += time.Duration(rng.Int64N(int64(span) + 1))
			}
			d.mu.Lock()
			d.stats.Packets++
			d.stats.Delays = append(d.stats.Delays, delay)
			d.mu.Unlock()
			wg.Add(1)
			time.AfterFunc(delay, func() {
				defer wg.Done()
				if _, err := c.Send(verdictMessage(d.cfg.Queue, id)); err != nil {
					d.fail(fmt.Errorf("verdict for packet %d: %w", id, err))
				}
			})
		}
	}
	wg.Wait()
	// Closing the socket unbinds the queue (the kernel destroys the
	// instance on release); it holds no packet any more.
	return nil
}

func (d *Delayer) fail(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stats.Errors++
	if d.stats.FirstError == "" {
		d.stats.FirstError = err.Error()
	}
}

// nfgenmsg is struct nfgenmsg: family, version NFNETLINK_V0, the queue
// number (res_id, big-endian).
func nfgenmsg(queue uint16) []byte {
	b := []byte{unix.AF_UNSPEC, 0, 0, 0}
	binary.BigEndian.PutUint16(b[2:], queue)
	return b
}

type attr struct {
	typ  uint16
	data []byte
}

func cmdMessageAttr(cmd uint8) attr {
	// struct nfqnl_msg_config_cmd: command, pad, pf (unused since 3.8).
	return attr{attrCfgCmd, []byte{cmd, 0, 0, 0}}
}

func configMessage(queue uint16, attrs ...attr) netlink.Message {
	ae := netlink.NewAttributeEncoder()
	for _, a := range attrs {
		ae.Bytes(a.typ, a.data)
	}
	b, _ := ae.Encode() // cannot fail: fixed-size byte attributes
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(subsysQueue<<8 | msgConfig), Flags: netlink.Request | netlink.Acknowledge},
		Data:   append(nfgenmsg(queue), b...),
	}
}

// bindMessages bind the queue to this socket and ask for the packets'
// metadata only, in a queue of maxLen packets.
func bindMessages(queue uint16, maxLen uint32) []netlink.Message {
	// struct nfqnl_msg_config_params (packed): copy_range, copy_mode.
	params := make([]byte, 5)
	params[4] = copyMeta
	qlen := binary.BigEndian.AppendUint32(nil, maxLen)
	return []netlink.Message{
		configMessage(queue, cmdMessageAttr(cmdBind)),
		configMessage(queue, attr{attrCfgParams, params}, attr{attrCfgQueueLen, qlen}),
	}
}

// verdictMessage accepts packet id.
func verdictMessage(queue uint16, id uint32) netlink.Message {
	// struct nfqnl_msg_verdict_hdr: verdict, id (both big-endian).
	v := binary.BigEndian.AppendUint32(nil, verdictAccept)
	v = binary.BigEndian.AppendUint32(v, id)
	ae := netlink.NewAttributeEncoder()
	ae.Bytes(attrVerdictHdr, v)
	b, _ := ae.Encode()
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(subsysQueue<<8 | msgVerdict), Flags: netlink.Request},
		Data:   append(nfgenmsg(queue), b...),
	}
}

var errShort = errors.New("nfqdelay: short packet message")

// parseMessage returns the packet id of an NFQNL_MSG_PACKET (ok false for
// any other message); an NLMSG_ERROR with an error number is returned as
// that syscall.Errno.
func parseMessage(typ uint16, data []byte) (id uint32, ok bool, err error) {
	if typ == unix.NLMSG_ERROR {
		if len(data) < 4 {
			return 0, false, errShort
		}
		if e := int32(binary.NativeEndian.Uint32(data)); e != 0 {
			return 0, false, fmt.Errorf("nfqdelay: kernel answered: %w", syscall.Errno(-e))
		}
		return 0, false, nil
	}
	if typ != subsysQueue<<8|msgPacket {
		return 0, false, nil
	}
	if len(data) < 4 {
		return 0, false, errShort
	}
	ad, err := netlink.NewAttributeDecoder(data[4:])
	if err != nil {
		return 0, false, fmt.Errorf("nfqdelay: packet attributes: %w", err)
	}
	for ad.Next() {
		if ad.Type() != attrPacketHdr {
			continue
		}
		// struct nfqnl_msg_packet_hdr (packed): packet_id, hw_protocol, hook.
		b := ad.Bytes()
		if len(b) < 4 {
			return 0, false, errShort
		}
		return binary.BigEndian.Uint32(b), true, nil
	}
	if err := ad.Err(); err != nil {
		return 0, false, fmt.Errorf("nfqdelay: packet attributes: %w", err)
	}
	return 0, false, fmt.Errorf("nfqdelay: packet message without NFQA_PACKET_HDR")
}
