// Package policy_test is the root suite for wgmesh's NetworkPolicy
// dataplane (mesh/policy/nft) on the real kernel: a node namespace with the
// pod bridge, pod namespaces on it and a "remote node" namespace routed
// like the WireGuard tunnel; traffic only ever flows between those
// namespaces. It needs root and fails, never skips, without it.
//
// The test binary doubles as the helper processes it runs inside the
// namespaces (POLICY_HELPER=serve|connect|apply), so no extra tools are
// needed.
package policy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/mesh/policy"
	"github.com/wgmesh/wgmesh/mesh/policy/nft"
)

func TestMain(m *testing.M) {
	switch os.Getenv("POLICY_HELPER") {
	case "":
		os.Exit(m.Run())
	case "serve":
		os.Exit(serve(os.Args[1:]))
	case "connect":
		os.Exit(connect(os.Args[1:]))
	case "apply":
		os.Exit(applyHelper(os.Stdin))
	default:
		fmt.Fprintln(os.Stderr, "unknown POLICY_HELPER")
		os.Exit(2)
	}
}

// serve listens on "tcp:PORT" / "udp:PORT" arguments and echoes one line
// (TCP) or datagram (UDP) back, until SIGTERM. It prints "ready" once all
// sockets listen.
func serve(args []string) int {
	for _, a := range args {
		proto, port, _ := strings.Cut(a, ":")
		switch proto {
		case "tcp":
			ln, err := net.Listen("tcp", ":"+port)
			if err != nil {
				fmt.Println(err)
				return 1
			}
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						c.SetDeadline(time.Now().Add(5 * time.Second))
						line, _ := bufio.NewReader(c).ReadString('\n')
						io.WriteString(c, line)
					}()
				}
			}()
		case "udp":
			pc, err := net.ListenPacket("udp", ":"+port)
			if err != nil {
				fmt.Println(err)
				return 1
			}
			go func() {
				buf := make([]byte, 1500)
				for {
					n, from, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					pc.WriteTo(buf[:n], from)
				}
			}()
		}
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return 0
}

// connect PROTO ADDR PORT [TIMEOUT_MS] exits 0 if a line (TCP) or
// datagram (UDP) comes back, 1 otherwise.
func connect(args []string) int {
	if len(args) < 3 {
		return 2
	}
	timeout := 800 * time.Millisecond
	if len(args) > 3 {
		ms, _ := strconv.Atoi(args[3])
		timeout = time.Duration(ms) * time.Millisecond
	}
	c, err := net.DialTimeout(args[0], net.JoinHostPort(args[1], args[2]), timeout)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		fmt.Println(err)
		return 1
	}
	buf := make([]byte, 16)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "hello\n" {
		fmt.Println("no echo:", err)
		return 1
	}
	return 0
}

// applyRequest is what the apply helper reads from stdin.
type applyRequest struct {
	Ruleset              policy.Ruleset
	LeaveBridgeNetfilter bool
	Remove               bool
}

func applyHelper(r io.Reader) int {
	var req applyRequest
	if err := json.NewDecoder(r).Decode(&req); err != nil {
		fmt.Println("decode:", err)
		return 2
	}
	dp, err := nft.New(nft.Config{LeaveBridgeNetfilter: req.LeaveBridgeNetfilter,
		Logger: slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	start := time.Now()
	if req.Remove {
		err = dp.Remove()
	} else {
		err = dp.Apply(context.Background(), req.Ruleset)
	}
	fmt.Printf("apply took %d us\n", time.Since(start).Microseconds())
	if err != nil {
		fmt.Println("apply:", err)
		if errors.Is(err, context.Canceled) {
			return 3
		}
		return 1
	}
	return 0
}
