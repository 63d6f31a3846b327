package datapath

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
)

// tcpConfig configures the "tcpsink" and "tcpsource" roles: a TCP stream
// whose every byte is checked, from one pod to another.
type tcpConfig struct {
	// Addr: the sink listens on it, the source connects to it.
	Addr string
	// Source: Bytes in total, as fast as TCP goes, or (Bytes 0) Rate
	// bytes per second for Duration, in Chunk-sized writes.
	Bytes    int64
	Rate     int64
	Duration time.Duration
	Chunk    int
	// Seed of the pseudo-random payload.
	Seed uint64
	// Timeout bounds the whole role.
	Timeout time.Duration
}

// tcpResult is what either end prints as its last line (JSON).
type tcpResult struct {
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
	// Elapsed from the first to the last byte.
	Elapsed time.Duration `json:"elapsed"`
	// MaxGap (sink only): the longest wait between two reads, and when
	// (since the first byte) it ended.
	MaxGap   time.Duration `json:"maxGap"`
	MaxGapAt time.Duration `json:"maxGapAt"`
	// Stalls (sink only): every wait between reads longer than
	// stallThreshold, in order.
	Stalls []stall `json:"stalls,omitempty"`
}

// stall is a pause in the received stream: Gap long, ending At after the
// first byte.
type stall struct {
	At  time.Duration `json:"at"`
	Gap time.Duration `json:"gap"`
}

func (s stall) String() string {
	return fmt.Sprintf("%s at +%s", s.Gap.Round(time.Millisecond), s.At.Round(time.Millisecond))
}

// stallThreshold: waits longer than this count as stalls (the source
// writes every few milliseconds).
const stallThreshold = 100 * time.Millisecond

// listeningMessage is printed by the sink once it listens.
const listeningMessage = "tcpsink listening"

func init() {
	roles["tcpsink"] = runTCPSinkRole
	roles["tcpsource"] = runTCPSourceRole
}

func runTCPSinkRole(raw []byte) error {
	var cfg tcpConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Fprintln(os.Stderr, listeningMessage)
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(cfg.Timeout))
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(cfg.Timeout))
	h := sha256.New()
	buf := make([]byte, 256<<10)
	var res tcpResult
	var first, last time.Time
	for {
		n, err := c.Read(buf)
		if n > 0 {
			now := time.Now()
			if first.IsZero() {
				first = now
			} else {
				gap := now.Sub(last)
				if gap > res.MaxGap {
					res.MaxGap, res.MaxGapAt = gap, now.Sub(first)
				}
				if gap > stallThreshold {
					res.Stalls = append(res.Stalls, stall{At: now.Sub(first), Gap: gap})
				}
			}
			last = now
			h.Write(buf[:n])
			res.Bytes += int64(n)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read after %d bytes: %w", res.Bytes, err)
		}
	}
	res.Elapsed = last.Sub(first)
	res.SHA256 = hex.EncodeToString(h.Sum(nil))
	return json.NewEncoder(os.Stdout).Encode(res)
}

func runTCPSourceRole(raw []byte) error {
	var cfg tcpConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return err
	}
	deadline := time.Now().Add(cfg.Timeout)
	var c net.Conn
	var err error
	for {
		c, err = net.DialTimeout("tcp", cfg.Addr, time.Second)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	c.SetDeadline(deadline)
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))
	h := sha256.New()
	chunk := make([]byte, cfg.Chunk)
	var res tcpResult
	start := time.Now()
	var interval time.Duration
	if cfg.Bytes == 0 {
		interval = time.Duration(float64(time.Second) * float64(cfg.Chunk) / float64(cfg.Rate))
	}
	for i := 0; ; i++ {
		if cfg.Bytes > 0 && res.Bytes >= cfg.Bytes {
			break
		}
		if cfg.Bytes == 0 {
			if time.Since(start) >= cfg.Duration {
				break
			}
			// Pace by schedule, so a stall is not stretched.
			if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
				time.Sleep(wait)
			}
		}
		for j := range chunk {
			chunk[j] = byte(rng.Uint32())
		}
		n, err := c.Write(chunk)
		h.Write(chunk[:n])
		res.Bytes += int64(n)
		if err != nil {
			return fmt.Errorf("write after %d bytes: %w", res.Bytes, err)
		}
	}
	// Half-close and wait for the sink to close: every byte arrived.
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, c); err != nil {
		return fmt.Errorf("waiting for the sink to finish: %w", err)
	}
	c.Close()
	res.Elapsed = time.Since(start)
	res.SHA256 = hex.EncodeToString(h.Sum(nil))
	return json.NewEncoder(os.Stdout).Encode(res)
}

// startTCP starts a sink in dst and a source in src; wait collects both
// results, failing the test if either end failed or the streams differ.
func startTCP(t *testing.T, src, dst *netnstest.NS, cfg tcpConfig) (wait func() (source, sink tcpResult)) {
	t.Helper()
	sinkEnv, err := childEnv("tcpsink", cfg)
	if err != nil {
		t.Fatal(err)
	}
	sink := dst.Start(t, "tcp sink in "+dst.Name, sinkEnv, self(t))
	netnstest.Eventually(t, 10*time.Second, "tcp sink listening", func() error {
		if sink.Exited() {
			t.Fatalf("tcp sink exited: %s", sink.Output())
		}
		if !strings.Contains(sink.Output(), listeningMessage) {
			return errors.New("not yet")
		}
		return nil
	})
	srcEnv, err := childEnv("tcpsource", cfg)
	if err != nil {
		t.Fatal(err)
	}
	source := src.Start(t, "tcp source in "+src.Name, srcEnv, self(t))
	return func() (tcpResult, tcpResult) {
		t.Helper()
		var out [2]tcpResult
		for i, p := range []*netnstest.Proc{source, sink} {
			select {
			case <-p.Done():
			case <-time.After(cfg.Timeout + 10*time.Second):
				t.Fatalf("%s did not finish", p.Name)
			}
			if err := p.Stop(0, time.Second); err != nil {
				t.Fatalf("%s failed: %v\n%s", p.Name, err, p.Output())
			}
			out[i] = lastJSON[tcpResult](t, p)
		}
		if out[0].Bytes != out[1].Bytes || out[0].SHA256 != out[1].SHA256 {
			t.Fatalf("stream corrupted: sent %d bytes sha256 %s, received %d bytes sha256 %s",
				out[0].Bytes, out[0].SHA256, out[1].Bytes, out[1].SHA256)
		}
		return out[0], out[1]
	}
}

// lastJSON decodes the last line of the process's output that is JSON.
func lastJSON[T any](t *testing.T, p *netnstest.Proc) T {
	t.Helper()
	var v T
	lines := strings.Split(strings.TrimSpace(p.Output()), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "{") {
			if err := json.Unmarshal([]byte(lines[i]), &v); err != nil {
				t.Fatalf("%s: %v", p.Name, err)
			}
			return v
		}
	}
	t.Fatalf("%s printed no result:\n%s", p.Name, p.Output())
	return v
}

func self(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}
