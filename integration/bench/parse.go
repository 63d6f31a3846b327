package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// IperfResult is what one iperf3 client run reports.
type IperfResult struct {
	// Gbps is the receiver's goodput: what arrived, not what was sent.
	Gbps        float64 `json:"gbps"`
	Retransmits int     `json:"retransmits"`
	// Seconds is the measured interval (without omitted warm-up seconds).
	Seconds float64 `json:"seconds"`
	// Bytes received.
	Bytes float64 `json:"bytes"`
}

// ParseIperf reads `iperf3 -J` client output. In reverse mode (-R) the
// server sends; iperf3 still reports the sender's retransmits in
// end.sum_sent, exchanged at the end of the test.
func ParseIperf(out []byte) (IperfResult, error) {
	var doc struct {
		Error string `json:"error"`
		End   struct {
			SumSent struct {
				Retransmits *int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				Seconds       float64 `json:"seconds"`
				Bytes         float64 `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return IperfResult{}, fmt.Errorf("iperf3 json: %w", err)
	}
	if doc.Error != "" {
		return IperfResult{}, fmt.Errorf("iperf3: %s", doc.Error)
	}
	r := IperfResult{
		Gbps:    doc.End.SumReceived.BitsPerSecond / 1e9,
		Seconds: doc.End.SumReceived.Seconds,
		Bytes:   doc.End.SumReceived.Bytes,
	}
	if doc.End.SumSent.Retransmits == nil {
		return r, errors.New("iperf3 json has no sender retransmit count (not TCP?)")
	}
	r.Retransmits = *doc.End.SumSent.Retransmits
	if r.Gbps <= 0 || r.Seconds <= 0 {
		return r, fmt.Errorf("iperf3 measured nothing: %.3f Gbit/s over %.2fs", r.Gbps, r.Seconds)
	}
	return r, nil
}

// ParseEthtoolFeatures reads `ethtool -k` output into feature → on/off,
// dropping the "[fixed]" notes.
func ParseEthtoolFeatures(out string) map[string]bool {
	m := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(l), ":")
		if !ok || strings.HasPrefix(l, "Features for") {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		m[k] = f[0] == "on"
	}
	return m
}

// ProcStat is the CPU time of one process, from /proc/<pid>/stat.
type ProcStat struct {
	UserTicks, SystemTicks uint64
}

// ParseProcStat reads utime and stime (fields 14 and 15) from
// /proc/<pid>/stat. The command name in field 2 may contain spaces and
// parentheses, so fields are counted from its closing parenthesis.
func ParseProcStat(s string) (ProcStat, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ProcStat{}, fmt.Errorf("malformed /proc/pid/stat %q", s)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime is field 14 → f[11].
	if len(f) < 13 {
		return ProcStat{}, fmt.Errorf("short /proc/pid/stat %q", s)
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return ProcStat{}, err
	}
	return ProcStat{UserTicks: u, SystemTicks: st}, nil
}

// ParseStatusKB reads a "Key:   123 kB" line of /proc/<pid>/status.
func ParseStatusKB(status, key string) (int64, error) {
	for _, l := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			f := strings.Fields(v)
			if len(f) == 2 && f[1] == "kB" {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no %s in /proc/pid/status", key)
}

// SystemCPU is the first line of /proc/stat: busy and total jiffies over
// all CPUs.
type SystemCPU struct {
	Busy, Total uint64
}

// ParseSystemCPU reads the aggregate "cpu" line of /proc/stat. Idle and
// iowait count as not busy.
func ParseSystemCPU(s string) (SystemCPU, error) {
	line, _, _ := strings.Cut(s, "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return SystemCPU{}, fmt.Errorf("unexpected /proc/stat first line %q", line)
	}
	var c SystemCPU
	for i, x := range f[1:] {
		v, err := strconv.ParseUint(x, 10, 64)
		if err != nil {
			return SystemCPU{}, err
		}
		// Fields: user nice system idle iowait irq softirq steal guest guest_nice.
		// guest time is already included in user/nice.
		if i >= 8 {
			break
		}
		c.Total += v
		if i != 3 && i != 4 {
			c.Busy += v
		}
	}
	return c, nil
}

// LinkStats are the counters of one interface (`ip -j -s link show`).
type LinkStats struct {
	TxBytes, TxPackets, RxBytes, RxPackets uint64
}

// ParseIPLinkStats reads `ip -j -s link show dev X`.
func ParseIPLinkStats(out []byte) (LinkStats, error) {
	var doc []struct {
		Stats64 struct {
			Rx struct {
				Bytes, Packets uint64
			} `json:"rx"`
			Tx struct {
				Bytes, Packets uint64
			} `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return LinkStats{}, fmt.Errorf("ip -j -s link: %w", err)
	}
	if len(doc) != 1 {
		return LinkStats{}, fmt.Errorf("ip -j -s link: %d links, want 1", len(doc))
	}
	s := doc[0].Stats64
	return LinkStats{TxBytes: s.Tx.Bytes, TxPackets: s.Tx.Packets, RxBytes: s.Rx.Bytes, RxPackets: s.Rx.Packets}, nil
}
