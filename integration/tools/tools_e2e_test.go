//go:build tools

package tools

// e2e.test is the test binary of k8s.io/kubernetes/test/e2e; importing it from a
// test file of this module keeps its test-only dependencies in go.mod/go.sum.
import _ "k8s.io/kubernetes/test/e2e"
