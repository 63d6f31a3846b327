package netnstest

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
	"time"
)

// StreamConfig configures a TCP stream whose every byte is checked, from one
// namespace (a pod) to another: RunSource at one end, RunSink at the other,
// each in a process of its own inside its namespace (a test binary
// re-executed in a role). Both print a StreamResult as their last line.
type StreamConfig struct {
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

// StreamResult is what either end prints as its last line (JSON).
type StreamResult struct {
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
	// Elapsed from the first to the last byte.
	Elapsed time.Duration `json:"elapsed"`
	// MaxGap (sink only): the longest wait between two reads, and when
	// (since the first byte) it ended.
	MaxGap   time.Duration `json:"maxGap"`
	MaxGapAt time.Duration `json:"maxGapAt"`
	// Stalls (sink only): every wait between reads longer than
	// StallThreshold, in order.
	Stalls []Stall `json:"stalls,omitempty"`
}

// Stall is a pause in the received stream: Gap long, ending At after the
// first byte.
type Stall struct {
	At  time.Duration `json:"at"`
	Gap time.Duration `json:"gap"`
}

func (s Stall) String() string {
	return fmt.Sprintf("%s at +%s", s.Gap.Round(time.Millisecond), s.At.Round(time.Millisecond))
}

// StallThreshold: waits longer than this count as stalls (the source
// writes every few milliseconds).
const StallThreshold = 100 * time.Millisecond

// SinkListening is printed (to stderr) by the sink once it listens.
const SinkListening = "tcpsink listening"

// RunSink accepts one connection on cfg.Addr, reads it to the end and prints
// the byte count, checksum and stalls.
func RunSink(raw []byte) error {
	var cfg StreamConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Fprintln(os.Stderr, SinkListening)
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(cfg.Timeout))
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(cfg.Timeout))
	h := sha256.New()
	buf := make([]byte, 256<<10)
	var res StreamResult
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
				if gap > StallThreshold {
					res.Stalls = append(res.Stalls, Stall{At: now.Sub(first), Gap: gap})
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

// RunSource connects to cfg.Addr (retrying until cfg.Timeout), sends the
// seeded pseudo-random stream and prints the byte count and checksum once
// the sink has read everything.
func RunSource(raw []byte) error {
	var cfg StreamConfig
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
	var res StreamResult
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
