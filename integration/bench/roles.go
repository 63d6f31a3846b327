package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/reexec"
)

// The test binary re-executes itself inside `ip netns exec` for work that
// must run in another namespace with all of its threads (wireguard-go's
// sockets, the RR client and server); see reexec.
const rolePrefix = "WGMESH_BENCH"

var roles = reexec.Roles{
	"node":      runNodeRole,
	"rr-server": runRRServer,
	"rr-client": runRRClient,
	"scale":     runScaleRole,
	"prober":    runProber,
	"dataplane": runDataplaneRole,
}

// MaybeRunRole runs the role named in the environment and exits; it
// returns if none is set. Call it first thing in TestMain.
func MaybeRunRole() { reexec.Dispatch(rolePrefix, roles) }

func roleEnv(role string, cfg any) ([]string, error) { return reexec.Env(rolePrefix, role, cfg) }

// RRConfig configures the TCP request/response roles.
type RRConfig struct {
	// Addr is host:port to listen on (server) or dial (client).
	Addr string
	// Size of each request and response in bytes.
	Size int
	// Warmup round trips are not measured; Count are.
	Warmup, Count int
}

// RRResult is the client's latency distribution in microseconds.
type RRResult struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50_us"`
	P90   float64 `json:"p90_us"`
	P99   float64 `json:"p99_us"`
	Max   float64 `json:"max_us"`
	Mean  float64 `json:"mean_us"`
}

// runRRServer echoes fixed-size messages on every connection until SIGTERM,
// like sockperf's server in ping-pong mode.
func runRRServer(raw []byte) error {
	var cfg RRConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() { <-ctx.Done(); ln.Close() }()
	fmt.Println("listening")
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func() {
			defer c.Close()
			c.(*net.TCPConn).SetNoDelay(true)
			buf := make([]byte, cfg.Size)
			for {
				if _, err := io.ReadFull(c, buf); err != nil {
					return
				}
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}()
	}
}

// runRRClient does Warmup+Count sequential round trips on one TCP
// connection (TCP_NODELAY) and prints an RRResult as JSON.
func runRRClient(raw []byte) error {
	var cfg RRConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return err
	}
	if cfg.Count < 1 || cfg.Size < 1 {
		return errors.New("rr client: count and size must be positive")
	}
	c, err := net.DialTimeout("tcp", cfg.Addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.(*net.TCPConn).SetNoDelay(true)
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	req := make([]byte, cfg.Size)
	resp := make([]byte, cfg.Size)
	lat := make([]time.Duration, 0, cfg.Count)
	for i := 0; i < cfg.Warmup+cfg.Count; i++ {
		req[0] = byte(i)
		start := time.Now()
		if _, err := c.Write(req); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			return err
		}
		d := time.Since(start)
		if resp[0] != req[0] {
			return fmt.Errorf("rr client: response %d does not match request %d", resp[0], req[0])
		}
		if i >= cfg.Warmup {
			lat = append(lat, d)
		}
	}
	slices.Sort(lat)
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	res := RRResult{
		Count: len(lat),
		P50:   Micros(Percentile(lat, 0.50)),
		P90:   Micros(Percentile(lat, 0.90)),
		P99:   Micros(Percentile(lat, 0.99)),
		Max:   Micros(lat[len(lat)-1]),
		Mean:  Micros(sum / time.Duration(len(lat))),
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// ProbeConfig configures the ICMP prober role.
type ProbeConfig struct {
	Target   string
	Interval time.Duration
	Timeout  time.Duration
}

// probeReady and probeReply prefix the prober's output lines.
const (
	probeReady = "probing"
	probeReply = "first-reply-unix-nano"
)

// runProber sends an ICMP echo request every Interval (ignoring send
// errors such as "no route", which ping treats as fatal) until the first
// reply, then prints its arrival time. It exits with an error after
// Timeout.
func runProber(raw []byte) error {
	var cfg ProbeConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return err
	}
	dst, err := net.ResolveIPAddr("ip4", cfg.Target)
	if err != nil {
		return err
	}
	c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return err
	}
	defer c.Close()
	id := uint16(os.Getpid())
	replies := make(chan time.Time, 1)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			now := time.Now()
			// An echo reply (type 0) to our id from the target.
			if n >= 8 && buf[0] == 0 && from.String() == dst.String() && uint16(buf[4])<<8|uint16(buf[5]) == id {
				replies <- now
				return
			}
		}
	}()
	fmt.Println(probeReady)
	tick := time.NewTicker(cfg.Interval)
	defer tick.Stop()
	deadline := time.After(cfg.Timeout)
	for seq := uint16(0); ; seq++ {
		c.WriteTo(echoRequest(id, seq), dst)
		select {
		case t := <-replies:
			fmt.Printf("%s %d\n", probeReply, t.UnixNano())
			return nil
		case <-deadline:
			return fmt.Errorf("no echo reply from %s within %s", cfg.Target, cfg.Timeout)
		case <-tick.C:
		}
	}
}

// echoRequest is an ICMP echo request with a 16-byte payload.
func echoRequest(id, seq uint16) []byte {
	b := make([]byte, 8+16)
	b[0] = 8 // echo request
	b[4], b[5] = byte(id>>8), byte(id)
	b[6], b[7] = byte(seq>>8), byte(seq)
	var sum uint32
	for i := 0; i < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	cs := ^uint16(sum)
	b[2], b[3] = byte(cs>>8), byte(cs)
	return b
}
