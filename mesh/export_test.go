package mesh

import "testing"

// CountParses counts, until the test ends, how often each Node is parsed.
// The test must not run in parallel with others: the hook is global.
func CountParses(t *testing.T) map[string]int {
	t.Helper()
	counts := map[string]int{}
	parseHook = func(name string) { counts[name]++ }
	t.Cleanup(func() { parseHook = nil })
	return counts
}
