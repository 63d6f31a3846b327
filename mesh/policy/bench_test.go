package policy_test

import (
	"testing"

	"github.com/wgmesh/wgmesh/mesh/policy"
	"github.com/wgmesh/wgmesh/mesh/policy/policytest"
)

// The budget: 1000 pods and 200 policies; one update is one full
// compile. BenchmarkCompile/spread has 100 of the pods on this node (10
// nodes), BenchmarkCompile/all-local puts all 1000 here (worst case).
var shapes = []struct {
	name  string
	shape policytest.Shape
}{
	{"spread", policytest.Shape{Pods: 1000, Policies: 200, Nodes: 10, Namespaces: 20}},
	{"all-local", policytest.Shape{Pods: 1000, Policies: 200, Nodes: 1, Namespaces: 20}},
}

func BenchmarkCompile(b *testing.B) {
	for _, s := range shapes {
		b.Run(s.name, func(b *testing.B) {
			in := policytest.Cluster(s.shape)
			b.ReportAllocs()
			var rs policy.Ruleset
			for b.Loop() {
				rs = policy.Compile(in)
			}
			b.ReportMetric(float64(len(rs.Targets)), "targets")
		})
	}
}

func TestSyntheticClusterIsolatesPods(t *testing.T) {
	// Guards the benchmark against measuring an empty ruleset.
	for _, s := range shapes {
		rs := policy.Compile(policytest.Cluster(s.shape))
		rules := 0
		for _, tg := range rs.Targets {
			if tg.Ingress != nil {
				rules += len(tg.Ingress.Rules)
			}
			if tg.Egress != nil {
				rules += len(tg.Egress.Rules)
			}
		}
		if len(rs.Targets) < s.shape.Pods/s.shape.Nodes/2 || rules == 0 || len(rs.Problems) != 0 || len(rs.Conflicts) != 0 {
			t.Errorf("%s: %d targets, %d rules, %d problems, %d conflicts", s.name, len(rs.Targets), rules, len(rs.Problems), len(rs.Conflicts))
		}
		t.Logf("%s: %d targets, %d rules", s.name, len(rs.Targets), rules)
	}
}
