package vagrant

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// runCheck runs check.sh against testdata/fakevm: fake ssh, k3s kubectl,
// tcpdump, ip and wg standing in for three VMs, so the script's own logic
// (loops, quoting through ssh, parsing, verdicts) runs for real. extraEnv
// steers the fakes into failure modes.
func runCheck(t *testing.T, extraEnv ...string) (string, error) {
	t.Helper()
	fakes, err := filepath.Abs("testdata/fakevm")
	if err != nil {
		t.Fatal(err)
	}
	state, sysfs, build := t.TempDir(), t.TempDir(), t.TempDir()
	nics := map[string][]string{"wg1": {"eth0", "eth1"}, "wg2": {"eth0", "eth1", "eth2"}, "wg3": {"eth0", "eth1"}}
	for host, ifs := range nics {
		for _, i := range ifs {
			if err := os.MkdirAll(filepath.Join(sysfs, host, i, "device"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		// Virtual interfaces have no device: never captured.
		if err := os.MkdirAll(filepath.Join(sysfs, host, "wgmesh0"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("./check.sh")
	cmd.Env = append(os.Environ(),
		"PATH="+fakes+string(os.PathListSeparator)+os.Getenv("PATH"),
		"FAKE_STATE="+state, "FAKE_SYSFS="+sysfs,
		"WGMESH_SSH_CONFIG="+filepath.Join(build, "ssh-config"), "WGMESH_BUILD_DIR="+build,
		"WGMESH_VM_TMP="+t.TempDir())
	cmd.Env = append(cmd.Env, extraEnv...)
	out, err := cmd.CombinedOutput()
	if b, _ := os.ReadFile(filepath.Join(state, "unexpected")); len(b) > 0 {
		t.Errorf("check.sh ran commands the fakes do not know:\n%s", b)
	}
	return string(out), err
}

var summary = regexp.MustCompile(`(?m)^vagrant-test: (\d+) passed, (\d+) failed$`)

func TestCheckScriptPassesOnAHealthyMesh(t *testing.T) {
	out, err := runCheck(t)
	if err != nil {
		t.Fatalf("check.sh failed on a healthy fake mesh: %v\n%s", err, out)
	}
	m := summary.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no summary line:\n%s", out)
	}
	if n, _ := strconv.Atoi(m[1]); n < 40 || m[2] != "0" {
		t.Errorf("summary %q, want >= 40 passed, 0 failed:\n%s", m[0], out)
	}
	for _, want := range []string{
		"PASS: one Ready agent per node (3/3)",
		"PASS: pod probe-a-3 on wg3 has 10.244.2.10 in the node's podCIDR 10.244.2.0/24",
		"PASS: ping matrix (first): every pod reaches every other pod",
		"PASS: iperf3 wg3 -> wg1 pod to pod: 912 Mbit/s",
		"PASS: iperf3 server on wg1 saw the client's pod IP 10.244.2.10 (no NAT)",
		"PASS: wg2/eth2: 0 of 20 frames carry a pod address",
		"PASS: wg2/eth2 (203.0.113.254/24): 7 WireGuard UDP frames",
		"PASS: wg1/eth1: between nodes only WireGuard UDP",
		"PASS: agent on wg2 kept its key across the restart",
		"INFO: pod traffic probe-a-1 -> probe-a-2 across the agent restart: 3.33333% packet loss",
		"PASS: rolling restart of every agent completed",
		"PASS: ping matrix (after rolling restart)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// Management NICs are captured too, but only underlay NICs must carry
	// WireGuard; virtual interfaces are never captured.
	if !strings.Contains(out, "PASS: wg1/eth0: no ICMP echo") || strings.Contains(out, "wgmesh0:") {
		t.Errorf("captured the wrong interfaces:\n%s", out)
	}
}

// Every failure mode the suite exists for must fail it, with a message that
// says what went wrong.
func TestCheckScriptFailsWhenTheMeshIsBroken(t *testing.T) {
	tests := []struct {
		name string
		env  []string
		want string
	}{
		{"plaintext pod packets on the wire", []string{"FAKE_LEAK=1"}, "FAIL: wg1/eth1: 3 frames carry a pod address"},
		{"pod traffic NATed", []string{"FAKE_NAT=1"}, "FAIL: iperf3 server on wg2 did not see 10.244.0.10"},
		{"key lost across restart", []string{"FAKE_NEW_KEY=1"}, "FAIL: agent on wg2 changed key"},
		{"unreachable pod", []string{"FAKE_UNREACHABLE=10.244.2.11", "WGMESH_CONVERGE_SECONDS=1"}, "FAIL: ping matrix (first): 5 pairs unreachable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runCheck(t, tt.env...)
			if err == nil {
				t.Fatalf("check.sh passed:\n%s", out)
			}
			if !strings.Contains(out, tt.want) {
				t.Errorf("output lacks %q:\n%s", tt.want, out)
			}
			if m := summary.FindStringSubmatch(out); m == nil || m[2] == "0" {
				t.Errorf("summary does not count the failure:\n%s", out)
			}
		})
	}
}
