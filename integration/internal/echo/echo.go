// Package echo is the TCP/UDP echo server and client that root suites run
// inside pod namespaces, as their own test binary re-executed in a helper
// role, so that a reachability probe needs no tools in the pod.
package echo

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Ready is the line Serve prints once every socket listens.
const Ready = "ready"

// DefaultTimeout bounds a Connect that names no timeout.
const DefaultTimeout = 800 * time.Millisecond

// Serve listens on every "tcp:PORT" or "udp:PORT" argument and echoes one
// line per TCP connection, or every UDP datagram, back until SIGTERM or
// SIGINT. It prints Ready once all sockets listen and returns the exit
// status of the helper process.
func Serve(args []string) int {
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
		default:
			fmt.Printf("echo: %q is not tcp:PORT or udp:PORT\n", a)
			return 2
		}
	}
	fmt.Println(Ready)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return 0
}

// Connect takes PROTO ADDR PORT [TIMEOUT_MS]: it sends a line (TCP) or a
// datagram (UDP) and returns 0 if the same comes back within the timeout
// (DefaultTimeout if none is given), 1 if not, 2 for bad arguments.
func Connect(args []string) int {
	if len(args) < 3 {
		return 2
	}
	timeout := DefaultTimeout
	if len(args) > 3 {
		ms, err := strconv.Atoi(args[3])
		if err != nil {
			return 2
		}
		timeout = time.Duration(ms) * time.Millisecond
	}
	c, err := net.DialTimeout(args[0], net.JoinHostPort(args[1], args[2]), timeout)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	const msg = "hello\n"
	if _, err := io.WriteString(c, msg); err != nil {
		fmt.Println(err)
		return 1
	}
	buf := make([]byte, 16)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != msg {
		fmt.Println("no echo:", err)
		return 1
	}
	return 0
}
