package mesh

import "slices"

// onceWarner remembers the problem last reported per subject, so that a
// problem that persists is reported once, when it appears or changes, and
// not again on every resync pass.
type onceWarner struct {
	last map[string]string
}

// Note records issue as subject's current problem ("" for none) and
// reports whether it differs from the one recorded before.
func (w *onceWarner) Note(subject, issue string) (changed bool) {
	prev := w.last[subject]
	if issue == "" {
		delete(w.last, subject)
	} else {
		if w.last == nil {
			w.last = map[string]string{}
		}
		w.last[subject] = issue
	}
	return prev != issue
}

// Fresh records issue like Note and reports whether it is a problem not
// reported yet for subject: the caller reports it exactly then.
func (w *onceWarner) Fresh(subject, issue string) bool {
	return w.Note(subject, issue) && issue != ""
}

// ForgetExcept clears the problem of every subject not in keep and returns
// those subjects, sorted.
func (w *onceWarner) ForgetExcept(keep map[string]bool) []string {
	var gone []string
	for s := range w.last {
		if !keep[s] {
			gone = append(gone, s)
			delete(w.last, s)
		}
	}
	slices.Sort(gone)
	return gone
}

// Subjects of the problems with our own Node, each reported once.
const (
	ownSubjectListed    = "listed"    // own Node missing or its pod CIDRs unusable
	ownSubjectEndpoint  = "endpoint"  // no endpoint to publish
	ownSubjectRotate    = "rotate"    // a rotation request we cannot act on
	ownSubjectKeepalive = "keepalive" // a bad own keepalive annotation
)
