package lab

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Ping sends ICMP echo requests from a pod to ip until one is answered or
// attempts run out. It returns nil on the first reply.
func (l *Lab) Ping(ctx context.Context, from PodRef, ip string, attempts int) error {
	var err error
	for i := 0; i < attempts; i++ {
		if _, err = l.PodExec(ctx, from.Node, from.Pod, "ping", "-n", "-q", "-c", "1", "-W", "1", ip); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return err
}

// Matrix is the outcome of pinging every pod from every pod:
// OK[i][j] reports whether Pods[i] reached Pods[j].
type Matrix struct {
	Pods []PodRef
	OK   [][]bool
}

// Failures lists the pairs that did not connect.
func (m Matrix) Failures() []string {
	var out []string
	for i, from := range m.Pods {
		for j, to := range m.Pods {
			if !m.OK[i][j] {
				out = append(out, fmt.Sprintf("%s/%s -> %s/%s (%s)", from.Node, from.Pod, to.Node, to.Pod, to.IP))
			}
		}
	}
	return out
}

// PingMatrix pings every pod from every pod (itself included), a few
// sources at a time.
func (l *Lab) PingMatrix(ctx context.Context, attempts int) Matrix {
	return l.pingMatrix(ctx, attempts, l.Pods())
}

// PingMatrix6 is PingMatrix over the pods' IPv6 addresses (a dual-stack
// lab); the Matrix's PodRefs carry the IPv6 address as IP.
func (l *Lab) PingMatrix6(ctx context.Context, attempts int) Matrix {
	pods := l.Pods()
	for i := range pods {
		pods[i].IP = pods[i].IPv6
	}
	return l.pingMatrix(ctx, attempts, pods)
}

func (l *Lab) pingMatrix(ctx context.Context, attempts int, pods []PodRef) Matrix {
	m := Matrix{Pods: pods, OK: make([][]bool, len(pods))}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for i := range pods {
		m.OK[i] = make([]bool, len(pods))
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			for j := range pods {
				m.OK[i][j] = l.Ping(ctx, pods[i], pods[j].IP, attempts) == nil
			}
		}(i)
	}
	wg.Wait()
	return m
}

// Print writes the matrix as a table: rows are sources, columns targets.
func (m Matrix) Print(w io.Writer) {
	label := func(p PodRef) string { return p.Node + "/" + p.Pod }
	width := 8
	for _, p := range m.Pods {
		if len(label(p)) > width {
			width = len(label(p))
		}
	}
	fmt.Fprintf(w, "%-*s", width+2, "from\\to")
	for _, p := range m.Pods {
		fmt.Fprintf(w, "%-*s", width+2, label(p))
	}
	fmt.Fprintln(w)
	for i, p := range m.Pods {
		fmt.Fprintf(w, "%-*s", width+2, label(p))
		for j := range m.Pods {
			mark := "ok"
			if !m.OK[i][j] {
				mark = "FAIL"
			}
			fmt.Fprintf(w, "%-*s", width+2, mark)
		}
		fmt.Fprintln(w)
	}
	total := len(m.Pods) * len(m.Pods)
	fmt.Fprintf(w, "%d/%d pairs reachable\n", total-len(m.Failures()), total)
}

// WaitFor polls cond every interval until it returns true or timeout passes,
// returning how long it took.
func WaitFor(ctx context.Context, timeout, interval time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for {
		if cond() {
			return time.Since(start), true
		}
		if time.Since(start) > timeout {
			return time.Since(start), false
		}
		select {
		case <-ctx.Done():
			return time.Since(start), false
		case <-time.After(interval):
		}
	}
}

// StatusTSV writes exactly one line per pod: NODE<TAB>POD<TAB>POD-IP, and
// <TAB>POD-IPV6 in a dual-stack lab.
func (l *Lab) StatusTSV(w io.Writer) {
	for _, p := range l.Pods() {
		if p.IPv6 != "" {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", p.Node, p.Pod, p.IP, p.IPv6)
			continue
		}
		fmt.Fprintf(w, "%s\t%s\t%s\n", p.Node, p.Pod, p.IP)
	}
}

// StatusTable writes a human-readable summary.
func (l *Lab) StatusTable(w io.Writer) {
	st := l.st
	apiserver := "stopped"
	if st.APIServer != nil && st.APIServer.Alive() {
		apiserver = fmt.Sprintf("running (pid %d)", st.APIServer.PID)
	}
	fmt.Fprintf(w, "lab %q  state %s\n", st.Name, l.cfg.StateDir)
	fmt.Fprintf(w, "apiserver %s  %s   underlay netns %s bridge %s\n\n", APIServerURL(), apiserver, st.Underlay, underlayBridge)
	fmt.Fprintf(w, "%-12s %-16s %-16s %-18s %s\n", "NODE", "UNDERLAY-IP", "POD-CIDR", "AGENT", "PODS")
	for _, name := range st.NodeNames() {
		n := st.Nodes[name]
		agent := "not running"
		if n.Agent != nil && n.Agent.Alive() {
			agent = fmt.Sprintf("pid %d", n.Agent.PID)
		}
		ip := strings.Join(n.InternalIPs(), ",")
		if n.NAT != nil {
			ip += " (NAT " + n.NAT.PublicIP + ")"
		}
		var pods []string
		for _, pn := range n.PodNames() {
			p := pn + "=" + n.Pods[pn].IP
			if v6 := n.Pods[pn].IPv6; v6 != "" {
				p += "," + v6
			}
			pods = append(pods, p)
		}
		fmt.Fprintf(w, "%-12s %-16s %-16s %-18s %s\n", name, ip, strings.Join(n.PodCIDRs(), ","), agent, strings.Join(pods, " "))
	}
}
