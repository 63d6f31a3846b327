// Package pingout reads what iputils ping prints: the replies (with their
// -D timestamps and round-trip times) and the closing summary. The suites
// use it to count replies, to take round-trip times and to measure the
// longest time a path gave no reply.
package pingout

import (
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Reply is one echo reply line.
type Reply struct {
	// At is the -D timestamp; zero when ping ran without -D.
	At  time.Time
	Seq int
	// RTT is the round-trip time; zero when ping printed none.
	RTT time.Duration
}

// Output is a parsed ping output.
type Output struct {
	Replies []Reply
	// Summary reports whether ping printed its closing statistics (it
	// does when it ends, also on SIGINT); Sent and Received are from it.
	Summary        bool
	Sent, Received int
}

var (
	replyLine = regexp.MustCompile(`^(?:\[(\d+)\.(\d+)\] )?\d+ bytes from \S+ icmp_seq=(\d+)(?: .*?time=([0-9.]+) ms)?`)
	// busybox writes "packets received"; iputils "received".
	summaryLine = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (?:packets )?received`)
)

// Parse reads ping's output, complete or as far as it got. Lines that are
// neither a reply nor the summary (the header, errors, a line still being
// written) are passed over.
func Parse(out string) Output {
	var o Output
	for _, line := range strings.Split(out, "\n") {
		if m := replyLine.FindStringSubmatch(line); m != nil {
			var r Reply
			if m[1] != "" {
				sec, _ := strconv.ParseInt(m[1], 10, 64)
				// -D prints microseconds; pad or cut to nanoseconds.
				frac := (m[2] + "000000000")[:9]
				ns, _ := strconv.ParseInt(frac, 10, 64)
				r.At = time.Unix(sec, ns)
			}
			r.Seq, _ = strconv.Atoi(m[3])
			if m[4] != "" {
				ms, _ := strconv.ParseFloat(m[4], 64)
				r.RTT = time.Duration(math.Round(ms * float64(time.Millisecond)))
			}
			o.Replies = append(o.Replies, r)
			continue
		}
		if m := summaryLine.FindStringSubmatch(line); m != nil {
			o.Summary = true
			o.Sent, _ = strconv.Atoi(m[1])
			o.Received, _ = strconv.Atoi(m[2])
		}
	}
	return o
}

// RTTs returns the round-trip times of the replies that printed one, in
// order.
func (o Output) RTTs() []time.Duration {
	var rtts []time.Duration
	for _, r := range o.Replies {
		if r.RTT > 0 {
			rtts = append(rtts, r.RTT)
		}
	}
	return rtts
}

// Gap describes the longest stretch without a reply in a window.
type Gap struct {
	// Max is the longest time between two replies, or between an edge of
	// the window and the nearest reply, less one ping interval: how long
	// the path was down. Start is when that stretch began.
	Max   time.Duration
	Start time.Time
	// Received counts the replies in the window; Last is the last one's
	// time (zero if none).
	Received int
	Last     time.Time
}

// Gap evaluates the timestamped replies (ping -D) in [from, to] of a ping
// that sent every interval.
func (o Output) Gap(from, to time.Time, interval time.Duration) Gap {
	var g Gap
	prev := from
	longest := time.Duration(0)
	for _, r := range o.Replies {
		if r.At.IsZero() || r.At.Before(from) || r.At.After(to) {
			continue
		}
		g.Received++
		if d := r.At.Sub(prev); d > longest {
			longest, g.Start = d, prev
		}
		prev, g.Last = r.At, r.At
	}
	if d := to.Sub(prev); d > longest {
		longest, g.Start = d, prev
	}
	g.Max = max(0, longest-interval)
	return g
}
