package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/integration/internal/pingout"
)

// clkTck is USER_HZ, the unit of /proc/<pid>/stat times. It is 100 on
// every Linux architecture Go supports.
const clkTck = 100

// Background is a long-running process started by StartIn.
type Background struct {
	Name string
	cmd  *exec.Cmd
	out  *netnstest.SyncBuffer
	done chan struct{}
	err  error
}

// StartIn starts argv via r with extra environment, in its own process
// group, and kills that group in cleanup if it is still running.
func StartIn(t testing.TB, r Runner, name string, env []string, argv ...string) *Background {
	t.Helper()
	return startIn(t, r, name, env, &syscall.SysProcAttr{Setpgid: true}, argv)
}

// StartDaemonIn is StartIn in a session of its own: a WireGuard daemon,
// placed as the lab's agents are (see netnstest.NS.StartSession).
func StartDaemonIn(t testing.TB, r Runner, name string, env []string, argv ...string) *Background {
	t.Helper()
	return startIn(t, r, name, env, &syscall.SysProcAttr{Setsid: true}, argv)
}

func startIn(t testing.TB, r Runner, name string, env []string, attr *syscall.SysProcAttr, argv []string) *Background {
	t.Helper()
	cmd := r.Command(context.Background(), argv...)
	cmd.Env = append(os.Environ(), env...)
	b := &Background{Name: name, cmd: cmd, out: &netnstest.SyncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = b.out, b.out
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		b.err = cmd.Wait()
		close(b.done)
	}()
	t.Cleanup(func() {
		select {
		case <-b.done:
		default:
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-b.done
		}
	})
	return b
}

// Stop interrupts the process group and waits for it.
func (b *Background) Stop() {
	if !b.Exited() {
		syscall.Kill(-b.cmd.Process.Pid, syscall.SIGINT)
		select {
		case <-b.done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
			<-b.done
		}
	}
}

// Output so far.
func (b *Background) Output() string { return b.out.String() }

// Exited reports whether the process ended.
func (b *Background) Exited() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

// StartServers starts iperf3 and the RR server in pod-b and waits until
// both accept connections from pod-a.
func StartServers(t testing.TB, self string, p *Pair) {
	t.Helper()
	b := p.Nodes[1]
	iperf := StartIn(t, b.Pod, p.Prefix+" iperf3 server", nil, "iperf3", "-s", "--forceflush", "-p", strconv.Itoa(iperfPort))
	env, err := roleEnv("rr-server", RRConfig{Addr: fmt.Sprintf(":%d", rrPort), Size: rrSize})
	if err != nil {
		t.Fatal(err)
	}
	rr := StartIn(t, b.Pod, p.Prefix+" rr server", env, self)
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(iperf.Output(), "Server listening") || !strings.Contains(rr.Output(), "listening") {
		if iperf.Exited() || rr.Exited() || time.Now().After(deadline) {
			t.Fatalf("[%s] servers not up: iperf3: %q rr: %q", p.Variant, iperf.Output(), rr.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rrSize is the request and response size of the latency test (sockperf's
// default message size is 14 bytes; 64 is a small RPC).
const rrSize = 64

// ProcCPUSeconds is the CPU time (user+system) a process has used.
func ProcCPUSeconds(pid int) (float64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	st, err := ParseProcStat(string(raw))
	if err != nil {
		return 0, err
	}
	return float64(st.UserTicks+st.SystemTicks) / clkTck, nil
}

// ProcMem is a process's memory in MiB from one read of /proc/<pid>/status:
// the resident set (VmRSS), its peak (VmHWM) and the private anonymous part
// (RssAnon: VmRSS without the clean, shared pages of its binary and
// libraries, which the kernel can drop and re-read at will), and from
// /proc/<pid>/smaps_rollup the private dirty pages (Private_Dirty: what the
// process alone holds and the kernel cannot drop without swap).
type ProcMem struct{ RSS, Peak, Anon, PrivateDirty float64 }

// ReadProcMem reads a process's ProcMem.
func ReadProcMem(pid int) (ProcMem, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ProcMem{}, err
	}
	var kb [3]int64
	for i, field := range []string{"VmRSS", "VmHWM", "RssAnon"} {
		if kb[i], err = ParseStatusKB(string(raw), field); err != nil {
			return ProcMem{}, err
		}
	}
	rollup, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return ProcMem{}, err
	}
	dirty, err := ParseStatusKB(string(rollup), "Private_Dirty")
	if err != nil {
		return ProcMem{}, err
	}
	return ProcMem{RSS: float64(kb[0]) / 1024, Peak: float64(kb[1]) / 1024, Anon: float64(kb[2]) / 1024, PrivateDirty: float64(dirty) / 1024}, nil
}

// SystemBusySeconds is the busy CPU time of the whole machine (all cores).
func SystemBusySeconds() (float64, error) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	c, err := ParseSystemCPU(string(raw))
	if err != nil {
		return 0, err
	}
	return float64(c.Busy) / clkTck, nil
}

// linkStats reads an interface's counters in a namespace.
func linkStats(ns, dev string) (LinkStats, error) {
	out, err := exec.Command("ip", "-n", ns, "-j", "-s", "link", "show", "dev", dev).Output()
	if err != nil {
		return LinkStats{}, fmt.Errorf("ip -n %s -s link show %s: %w", ns, dev, err)
	}
	return ParseIPLinkStats(out)
}

// BulkSample is one iperf3 run with what it cost.
type BulkSample struct {
	IperfResult
	// DaemonCPU is the CPU time both nodes' WireGuard daemons used during
	// the run, in core-seconds; SystemCPU that of the whole machine.
	DaemonCPU float64 `json:"daemon_cpu_s"`
	SystemCPU float64 `json:"system_cpu_s"`
	// UnderlayBytesPerPacket is the sender node's eth0 tx bytes/packets
	// during the run: a GSO super-packet counts once, so values far above
	// the MTU mean UDP segmentation offload carried the tunnel traffic.
	UnderlayBytesPerPacket float64 `json:"underlay_bytes_per_packet"`
}

// Bulk runs one iperf3 test from pod-a to pod-b (reverse: b to a) for dur,
// or, if bytes > 0, until that many bytes are sent.
func Bulk(p *Pair, streams int, reverse bool, dur time.Duration, bytes int64) (BulkSample, error) {
	secs := max(1, int(dur/time.Second))
	argv := []string{"iperf3", "-c", p.Nodes[1].PodIP.String(), "-p", strconv.Itoa(iperfPort), "-J", "-P", strconv.Itoa(streams)}
	switch {
	case bytes > 0:
		argv = append(argv, "-n", strconv.FormatInt(bytes, 10))
		dur = time.Minute
	case secs >= 4:
		argv = append(argv, "-t", strconv.Itoa(secs), "-O", "1") // skip slow start
	default:
		argv = append(argv, "-t", strconv.Itoa(secs))
	}
	if reverse {
		argv = append(argv, "-R")
	}
	sender := p.Nodes[0]
	if reverse {
		sender = p.Nodes[1]
	}
	ls0, err := linkStats(sender.NS.Name, "eth0")
	if err != nil {
		return BulkSample{}, err
	}
	d0, err := daemonsCPU(p)
	if err != nil {
		return BulkSample{}, err
	}
	s0, err := SystemBusySeconds()
	if err != nil {
		return BulkSample{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), dur+time.Minute)
	defer cancel()
	out, runErr := p.Nodes[0].Pod.Command(ctx, argv...).Output()
	s1, err := SystemBusySeconds()
	if err != nil {
		return BulkSample{}, err
	}
	d1, err := daemonsCPU(p)
	if err != nil {
		return BulkSample{}, err
	}
	ls1, err := linkStats(sender.NS.Name, "eth0")
	if err != nil {
		return BulkSample{}, err
	}
	res, err := ParseIperf(out)
	if err != nil {
		return BulkSample{}, fmt.Errorf("%s (exit: %v)", err, runErr)
	}
	bs := BulkSample{IperfResult: res, DaemonCPU: d1 - d0, SystemCPU: s1 - s0}
	if pk := ls1.TxPackets - ls0.TxPackets; pk > 0 {
		bs.UnderlayBytesPerPacket = float64(ls1.TxBytes-ls0.TxBytes) / float64(pk)
	}
	return bs, nil
}

func daemonsCPU(p *Pair) (float64, error) {
	var sum float64
	for _, n := range p.Nodes {
		if n.Pid == 0 {
			continue
		}
		s, err := ProcCPUSeconds(n.Pid)
		if err != nil {
			return 0, err
		}
		sum += s
	}
	return sum, nil
}

// RequestResponse runs the RR client in pod-a against pod-b's server.
func RequestResponse(self string, p *Pair, warmup, count int) (RRResult, error) {
	env, err := roleEnv("rr-client", RRConfig{Addr: fmt.Sprintf("%s:%d", p.Nodes[1].PodIP, rrPort), Size: rrSize, Warmup: warmup, Count: count})
	if err != nil {
		return RRResult{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := p.Nodes[0].Pod.Command(ctx, self)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return RRResult{}, fmt.Errorf("rr client: %w: %s", err, stderr.String())
	}
	var res RRResult
	if err := json.Unmarshal(out, &res); err != nil {
		return RRResult{}, fmt.Errorf("rr client output %q: %w", out, err)
	}
	return res, nil
}

// PingResult is ICMP echo round-trip times in microseconds.
type PingResult struct {
	Sent     int     `json:"sent"`
	Received int     `json:"received"`
	P50      float64 `json:"p50_us"`
	P99      float64 `json:"p99_us"`
}

// Ping pings pod-b from pod-a.
func Ping(p *Pair, count int, interval time.Duration) (PingResult, error) {
	out, err := Run(p.Nodes[0].Pod, "ping", "-n", "-c", strconv.Itoa(count), "-i",
		strconv.FormatFloat(interval.Seconds(), 'f', 3, 64), "-W", "1", p.Nodes[1].PodIP.String())
	if err != nil {
		return PingResult{}, err
	}
	po := pingout.Parse(out)
	if !po.Summary {
		return PingResult{}, fmt.Errorf("no ping summary in %q", out)
	}
	rtts, sent := po.RTTs(), po.Sent
	if len(rtts) == 0 {
		return PingResult{}, fmt.Errorf("no ping replies: %s", out)
	}
	slices.Sort(rtts)
	return PingResult{Sent: sent, Received: len(rtts), P50: Micros(Percentile(rtts, 0.5)), P99: Micros(Percentile(rtts, 0.99))}, nil
}

// Offloads are the tunnel interface's segmentation/receive offloads as
// ethtool reports them on node-a.
type Offloads struct {
	Interface string          `json:"interface"`
	TSO       bool            `json:"tso"`
	USO       bool            `json:"uso"`
	GSO       bool            `json:"gso"`
	GRO       bool            `json:"gro"`
	Raw       map[string]bool `json:"-"`
}

// TunnelOffloads runs `ethtool -k` on node-a's tunnel interface.
func TunnelOffloads(p *Pair) (Offloads, error) {
	n := p.Nodes[0]
	if n.Iface == "" {
		return Offloads{}, nil
	}
	out, err := Run(n.NS, "ethtool", "-k", n.Iface)
	if err != nil {
		return Offloads{}, err
	}
	f := ParseEthtoolFeatures(out)
	return Offloads{Interface: n.Iface, TSO: f["tcp-segmentation-offload"], USO: f["tx-udp-segmentation"],
		GSO: f["generic-segmentation-offload"], GRO: f["generic-receive-offload"], Raw: f}, nil
}

// UnderlayCapture captures the underlay (node-a's eth0) during a short
// forward iperf3 run and returns the mean and maximum IP length of the
// WireGuard UDP packets tcpdump saw (it sees GSO super-packets whole).
func UnderlayCapture(p *Pair, dur time.Duration) (mean, maxLen float64, packets int, err error) {
	n := p.Nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), dur+time.Minute)
	defer cancel()
	cmd := n.NS.Command(ctx, "tcpdump", "-n", "-i", "eth0", "-c", "2000", "-l", "-Q", "out", "udp", "port", strconv.Itoa(listenPort))
	var out netnstest.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return 0, 0, 0, err
	}
	defer func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
		cmd.Wait()
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "listening on") {
		if time.Now().After(deadline) {
			return 0, 0, 0, fmt.Errorf("tcpdump did not start: %s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := Bulk(p, 1, false, dur, 0); err != nil {
		return 0, 0, 0, err
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
	cmd.Wait()
	var sum float64
	for _, l := range strings.Split(out.String(), "\n") {
		// "IP 198.51.100.11.51820 > 198.51.100.12.51820: UDP, length 1440"
		i := strings.LastIndex(l, "UDP, length ")
		if i < 0 {
			continue
		}
		v, err := strconv.Atoi(strings.TrimSpace(l[i+len("UDP, length "):]))
		if err != nil {
			continue
		}
		packets++
		sum += float64(v)
		maxLen = max(maxLen, float64(v))
	}
	if packets == 0 {
		return 0, 0, 0, fmt.Errorf("no WireGuard UDP captured:\n%s", out.String())
	}
	return sum / float64(packets), maxLen, packets, nil
}
