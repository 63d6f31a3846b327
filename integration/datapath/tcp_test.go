package datapath

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
)

type (
	tcpConfig = netnstest.StreamConfig
	tcpResult = netnstest.StreamResult
)

const stallThreshold = netnstest.StallThreshold

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
		if !strings.Contains(sink.Output(), netnstest.SinkListening) {
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
