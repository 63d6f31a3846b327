package policy

import (
	"fmt"
	"slices"
	"strings"
)

// Operator is a label selector requirement's operator.
type Operator string

// The operators of metav1.LabelSelectorRequirement.
const (
	OpIn           Operator = "In"
	OpNotIn        Operator = "NotIn"
	OpExists       Operator = "Exists"
	OpDoesNotExist Operator = "DoesNotExist"
)

// Requirement is one matchExpressions entry.
type Requirement struct {
	Key      string
	Operator Operator
	Values   []string
}

// Selector is a metav1.LabelSelector: all MatchLabels and all Expressions
// must hold. The zero Selector matches everything.
type Selector struct {
	MatchLabels map[string]string
	Expressions []Requirement
}

// Empty reports whether s matches everything.
func (s Selector) Empty() bool { return len(s.MatchLabels) == 0 && len(s.Expressions) == 0 }

// Validate checks the operators and their value counts the way the API
// server does; an invalid selector must not silently match nothing (or
// everything).
func (s Selector) Validate() error {
	for _, r := range s.Expressions {
		switch r.Operator {
		case OpIn, OpNotIn:
			if len(r.Values) == 0 {
				return fmt.Errorf("selector %s %s needs values: %w", r.Key, r.Operator, ErrInvalid)
			}
		case OpExists, OpDoesNotExist:
			if len(r.Values) != 0 {
				return fmt.Errorf("selector %s %s takes no values: %w", r.Key, r.Operator, ErrInvalid)
			}
		default:
			return fmt.Errorf("selector operator %q: %w", r.Operator, ErrInvalid)
		}
		if r.Key == "" {
			return fmt.Errorf("selector requirement without key: %w", ErrInvalid)
		}
	}
	return nil
}

// Matches reports whether labels satisfy s. An invalid requirement never
// matches (Validate reports it).
func (s Selector) Matches(labels map[string]string) bool { return s.matcher().matches(labels) }

// matcher is a selector prepared for matching many label sets: ranging
// over a map on every call costs more than the lookups themselves.
type matcher struct {
	labels [][2]string
	exprs  []Requirement
}

func (s Selector) matcher() matcher {
	m := matcher{exprs: s.Expressions}
	for k, v := range s.MatchLabels {
		m.labels = append(m.labels, [2]string{k, v})
	}
	return m
}

func (m matcher) matches(labels map[string]string) bool {
	for _, kv := range m.labels {
		if got, ok := labels[kv[0]]; !ok || got != kv[1] {
			return false
		}
	}
	for _, r := range m.exprs {
		v, ok := labels[r.Key]
		switch r.Operator {
		case OpIn:
			if !ok || !slices.Contains(r.Values, v) {
				return false
			}
		case OpNotIn:
			if ok && slices.Contains(r.Values, v) {
				return false
			}
		case OpExists:
			if !ok {
				return false
			}
		case OpDoesNotExist:
			if ok {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// String renders s like kubectl does ("app=web,tier in (a,b)"); "" for the
// empty selector.
func (s Selector) String() string {
	var parts []string
	keys := make([]string, 0, len(s.MatchLabels))
	for k := range s.MatchLabels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		parts = append(parts, k+"="+s.MatchLabels[k])
	}
	for _, r := range s.Expressions {
		switch r.Operator {
		case OpExists:
			parts = append(parts, r.Key)
		case OpDoesNotExist:
			parts = append(parts, "!"+r.Key)
		default:
			parts = append(parts, fmt.Sprintf("%s %s (%s)", r.Key, strings.ToLower(string(r.Operator)), strings.Join(r.Values, ",")))
		}
	}
	return strings.Join(parts, ",")
}
