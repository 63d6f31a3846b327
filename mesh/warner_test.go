package mesh

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestOnceWarner: a problem is fresh when it appears or changes, not while
// it persists; clearing it makes its return fresh again; ForgetExcept drops
// the subjects that recovered.
func TestOnceWarner(t *testing.T) {
	var w onceWarner
	for i, step := range []struct {
		subject, issue string
		fresh          bool
	}{
		{"a", "broken", true},
		{"a", "broken", false},
		{"b", "broken", true}, // subjects are independent
		{"a", "worse", true},
		{"a", "", false}, // clearing is a change but nothing to report
		{"a", "", false},
		{"a", "worse", true},
	} {
		if got := w.Fresh(step.subject, step.issue); got != step.fresh {
			t.Errorf("step %d: Fresh(%q, %q) = %v, want %v", i, step.subject, step.issue, got, step.fresh)
		}
	}
	if !w.Note("b", "") || w.Note("b", "") {
		t.Error("Note(b, \"\") should report the change once")
	}
	w.Fresh("c", "x")
	w.Fresh("d", "y")
	if diff := cmp.Diff([]string{"c", "d"}, w.ForgetExcept(map[string]bool{"a": true})); diff != "" {
		t.Errorf("ForgetExcept (-want +got):\n%s", diff)
	}
	if w.Fresh("a", "worse") {
		t.Error("kept subject a forgot its problem")
	}
	if !w.Fresh("c", "x") {
		t.Error("forgotten subject c still remembers its problem")
	}
}
