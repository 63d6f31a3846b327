//go:build conformance

package e2e

// `make conformance` (go test -tags conformance -run TestConformance): the
// upstream [sig-network] e2e specs that fit a cluster without a cloud
// provider, run against a 3-node kubelet lab; the table goes to
// docs/conformance.md. Built only with the tag: it takes far longer than
// `make test` can afford.

import (
	"context"
	"encoding/xml"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// Conformance focus and skip (regular expressions over spec names).
// Skipped: what needs a cloud provider (LoadBalancer, ESIPP), cluster DNS
// (the lab runs none), IPv6/dual-stack (the lab's pod network is IPv4 here),
// SCTP, and what upstream itself marks slow, serial or disruptive.
const (
	conformanceFocus = `\[sig-network\] (Networking Granular Checks|Services|Netpol|NetworkPolicy)`
	conformanceSkip  = `Feature:SCTPConnectivity|SCTP|LoadBalancer|ESIPP|DNS|dns|IPv6|Dual|\[Slow\]|\[Serial\]|\[Disruptive\]|Feature:ServiceCIDRs|Feature:Traffic`
)

type junitSuite struct {
	Cases []struct {
		Name    string    `xml:"name,attr"`
		Time    float64   `xml:"time,attr"`
		Skipped *struct{} `xml:"skipped"`
		Failure *struct {
			Message string `xml:"message,attr"`
			Text    string `xml:",chardata"`
		} `xml:"failure"`
		// Ginkgo reports an interrupted spec (the run's --ginkgo.timeout
		// reached) as an error; specs never started count as skipped.
		Error *struct {
			Message string `xml:"message,attr"`
		} `xml:"error"`
	} `xml:"testcase"`
}

func TestConformance(t *testing.T) {
	timeout := 150 * time.Minute
	if v := os.Getenv("WGMESH_CONFORMANCE_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("WGMESH_CONFORMANCE_TIMEOUT: %v", err)
		}
		timeout = d
	}
	l := newKubeletLab(t, 3, 0)
	ns, _ := l.Underlay()
	report := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), timeout+5*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "nsenter", "--net=/run/netns/"+ns, "--", filepath.Join(binDir, "e2e.test"),
		"--kubeconfig="+l.AdminKubeconfig(),
		"--ginkgo.focus="+conformanceFocus,
		"--ginkgo.skip="+conformanceSkip,
		"--ginkgo.no-color",
		"--ginkgo.timeout="+timeout.String(),
		"--report-dir="+report,
	)
	cmd.Dir = report
	out, runErr := cmd.CombinedOutput()
	took := time.Since(start).Round(time.Second)
	_ = os.WriteFile(filepath.Join(report, "e2e.log"), out, 0o644)
	data, err := os.ReadFile(filepath.Join(report, "junit_01.xml"))
	if err != nil {
		t.Fatalf("e2e.test (%v) wrote no junit report after %s:\n%s", runErr, took, tail(string(out), 60))
	}
	var suites struct {
		Suites []junitSuite `xml:"testsuite"`
	}
	if err := xml.Unmarshal(data, &suites); err != nil {
		t.Fatalf("parse junit: %v", err)
	}
	type row struct{ name, result, note string }
	var rows []row
	var passed, failed, skipped, unfinished int
	for _, s := range suites.Suites {
		for _, c := range s.Cases {
			switch {
			case c.Failure != nil:
				failed++
				msg := c.Failure.Message
				if strings.TrimSpace(msg) == "" {
					msg = c.Failure.Text
				}
				rows = append(rows, row{c.Name, "failed", firstLine(msg)})
			case c.Error != nil:
				unfinished++
				rows = append(rows, row{c.Name, "not finished", firstLine(c.Error.Message)})
			case c.Skipped != nil:
				skipped++
			default:
				passed++
				rows = append(rows, row{c.Name, "passed", fmt.Sprintf("%.0f s", c.Time)})
			}
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].name < rows[j].name })
	var b strings.Builder
	fmt.Fprintf(&b, "# Upstream [sig-network] e2e against the real-node lab\n\n")
	fmt.Fprintf(&b, "Written by `make conformance` (integration/e2e/conformance_test.go) on %s: `e2e.test` from\n", time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(&b, "k8s.io/kubernetes v1.37.2 against a 3-node `wgmesh-lab up --kubelet` (containerd 2.4.2 + runc,\n")
	fmt.Fprintf(&b, "kubelet and kube-proxy nftables v1.37.2, wgmesh from deploy/overlays/lab). Run time %s.\n\n", took)
	fmt.Fprintf(&b, "Focus: `%s`\n\nSkip: `%s`\n\n", conformanceFocus, conformanceSkip)
	fmt.Fprintf(&b, "**%d passed, %d failed, %d not finished, %d skipped** (skipped = outside the focus or matched by the skip;\n", passed, failed, unfinished, skipped)
	fmt.Fprintf(&b, "not finished = interrupted or never started when the run's time limit of %s was reached).\n\n", timeout)
	b.WriteString("| spec | result | time / failure |\n| --- | --- | --- |\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s |\n", strings.ReplaceAll(r.name, "|", "\\|"), r.result, strings.ReplaceAll(r.note, "|", "\\|"))
	}
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "docs", "conformance.md"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("conformance: %d passed, %d failed, %d not finished, %d skipped in %s; docs/conformance.md written", passed, failed, unfinished, skipped, took)
	if passed == 0 {
		t.Errorf("no spec passed (e2e.test: %v):\n%s", runErr, tail(string(out), 40))
	}
	if failed > 0 {
		t.Errorf("%d specs failed; see docs/conformance.md", failed)
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}
