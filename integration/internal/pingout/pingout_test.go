package pingout

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// The files in testdata are real iputils ping output (20221126), made in a
// throw-away namespace on its loopback with an nftables rule dropping the
// replies for a while: a -D run every 50 ms ended by SIGINT
// (timestamped-gap), a counted run as the benchmark does it (count-loss),
// and a ping without a route (unreachable).
func readTestdata(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func at(sec, usec int64) time.Time { return time.Unix(sec, usec*1000) }

func TestParse(t *testing.T) {
	us := time.Microsecond
	tests := []struct {
		name string
		in   string
		want Output
	}{
		{
			name: "counted run with losses",
			in:   readTestdata(t, "count-loss.txt"),
			want: Output{
				Replies: []Reply{
					{Seq: 1, RTT: 21 * us}, {Seq: 2, RTT: 29 * us}, {Seq: 3, RTT: 30 * us}, {Seq: 4, RTT: 37 * us},
					{Seq: 8, RTT: 28 * us}, {Seq: 9, RTT: 28 * us}, {Seq: 10, RTT: 29 * us},
				},
				Summary: true, Sent: 10, Received: 7,
			},
		},
		{
			name: "no route",
			in:   readTestdata(t, "unreachable.txt"),
			want: Output{},
		},
		{
			name: "running ping: no summary yet, a line half written",
			in: "PING 10.244.2.1 (10.244.2.1) 56(84) bytes of data.\n" +
				"[1796278493.520122] 64 bytes from 10.244.2.1: icmp_seq=1 ttl=64 time=0.038 ms\n" +
				"[1796278493.57",
			want: Output{Replies: []Reply{{At: at(1796278493, 520122), Seq: 1, RTT: 38 * us}}},
		},
		{
			name: "duplicate reply and busybox's summary",
			in: "64 bytes from 10.244.2.2: icmp_seq=1 ttl=62 time=0.512 ms\n" +
				"64 bytes from 10.244.2.2: icmp_seq=1 ttl=62 time=1.25 ms (DUP!)\n" +
				"3 packets transmitted, 2 packets received, 33% packet loss\n",
			want: Output{
				Replies: []Reply{{Seq: 1, RTT: 512 * us}, {Seq: 1, RTT: 1250 * us}},
				Summary: true, Sent: 3, Received: 2,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, Parse(tt.in)); diff != "" {
				t.Errorf("Parse (-want +got)\n%s", diff)
			}
		})
	}
}

func TestParseTimestamps(t *testing.T) {
	o := Parse(readTestdata(t, "timestamped-gap.txt"))
	if len(o.Replies) != 19 || !o.Summary || o.Sent != 37 || o.Received != 19 {
		t.Fatalf("%d replies, summary %v: %d sent, %d received; want 19, true, 37, 19", len(o.Replies), o.Summary, o.Sent, o.Received)
	}
	// Replies 10 to 27 were dropped.
	want := []Reply{
		{At: at(1796278493, 989583), Seq: 9, RTT: 42 * time.Microsecond},
		{At: at(1796278495, 64924), Seq: 28, RTT: 29 * time.Microsecond},
	}
	if diff := cmp.Diff(want, o.Replies[8:10]); diff != "" {
		t.Errorf("replies around the drop (-want +got)\n%s", diff)
	}
}

func TestRTTs(t *testing.T) {
	o := Output{Replies: []Reply{{Seq: 1, RTT: time.Millisecond}, {Seq: 2}, {Seq: 3, RTT: 2 * time.Millisecond}}}
	if diff := cmp.Diff([]time.Duration{time.Millisecond, 2 * time.Millisecond}, o.RTTs()); diff != "" {
		t.Errorf("RTTs (-want +got)\n%s", diff)
	}
}

func TestGap(t *testing.T) {
	gapped := Parse(readTestdata(t, "timestamped-gap.txt"))
	const interval = 50 * time.Millisecond
	tests := []struct {
		name     string
		o        Output
		from, to time.Time
		want     Gap
	}{
		{
			// The drop: 1.075341 s from reply 9 to reply 28, less
			// one interval.
			name: "whole run",
			o:    gapped, from: at(1796278493, 500000), to: at(1796278495, 600000),
			want: Gap{Max: 1025341 * time.Microsecond, Start: at(1796278493, 989583), Received: 19, Last: at(1796278495, 576939)},
		},
		{
			name: "window ends inside the drop",
			o:    gapped, from: at(1796278493, 500000), to: at(1796278494, 500000),
			want: Gap{Max: 460417 * time.Microsecond, Start: at(1796278493, 989583), Received: 9, Last: at(1796278493, 989583)},
		},
		{
			// Replies every ~56 ms, the longest 64.017 ms apart.
			name: "window after the drop",
			o:    gapped, from: at(1796278495, 50000), to: at(1796278495, 600000),
			want: Gap{Max: 14017 * time.Microsecond, Start: at(1796278495, 512922), Received: 10, Last: at(1796278495, 576939)},
		},
		{
			name: "no reply in the window",
			o:    gapped, from: at(1796278490, 0), to: at(1796278493, 0),
			want: Gap{Max: 3*time.Second - interval, Start: at(1796278490, 0)},
		},
		{
			name: "no timestamps (ping without -D)",
			o:    Parse(readTestdata(t, "count-loss.txt")), from: at(1796278490, 0), to: at(1796278491, 0),
			want: Gap{Max: time.Second - interval, Start: at(1796278490, 0)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, tt.o.Gap(tt.from, tt.to, interval)); diff != "" {
				t.Errorf("Gap (-want +got)\n%s", diff)
			}
		})
	}
}
