package policy

import "testing"

func TestSelector(t *testing.T) {
	labels := map[string]string{"app": "web", "tier": "front", "empty": ""}
	tests := []struct {
		name  string
		sel   Selector
		match bool
		str   string
	}{
		{"empty matches all", Selector{}, true, ""},
		{"matchLabels", Selector{MatchLabels: map[string]string{"app": "web", "tier": "front"}}, true, "app=web,tier=front"},
		{"matchLabels miss", Selector{MatchLabels: map[string]string{"app": "db"}}, false, "app=db"},
		{"matchLabels empty value", Selector{MatchLabels: map[string]string{"empty": ""}}, true, "empty="},
		{"in", Selector{Expressions: []Requirement{{Key: "app", Operator: OpIn, Values: []string{"db", "web"}}}}, true, "app in (db,web)"},
		{"in missing key", Selector{Expressions: []Requirement{{Key: "x", Operator: OpIn, Values: []string{"a"}}}}, false, "x in (a)"},
		{"notin", Selector{Expressions: []Requirement{{Key: "app", Operator: OpNotIn, Values: []string{"web"}}}}, false, "app notin (web)"},
		{"notin missing key matches", Selector{Expressions: []Requirement{{Key: "x", Operator: OpNotIn, Values: []string{"a"}}}}, true, "x notin (a)"},
		{"exists", Selector{Expressions: []Requirement{{Key: "tier", Operator: OpExists}}}, true, "tier"},
		{"does not exist", Selector{Expressions: []Requirement{{Key: "tier", Operator: OpDoesNotExist}}}, false, "!tier"},
		{"labels and expressions all must hold", Selector{MatchLabels: map[string]string{"app": "web"},
			Expressions: []Requirement{{Key: "tier", Operator: OpIn, Values: []string{"back"}}}}, false, "app=web,tier in (back)"},
		{"unknown operator never matches", Selector{Expressions: []Requirement{{Key: "app", Operator: "Like", Values: []string{"w"}}}}, false, "app like (w)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.sel.Matches(labels); got != tt.match {
				t.Errorf("Matches = %v, want %v", got, tt.match)
			}
			if got := tt.sel.String(); got != tt.str {
				t.Errorf("String = %q, want %q", got, tt.str)
			}
		})
	}
}

func TestSelectorValidate(t *testing.T) {
	bad := []Selector{
		{Expressions: []Requirement{{Key: "a", Operator: OpIn}}},
		{Expressions: []Requirement{{Key: "a", Operator: OpNotIn}}},
		{Expressions: []Requirement{{Key: "a", Operator: OpExists, Values: []string{"x"}}}},
		{Expressions: []Requirement{{Key: "a", Operator: OpDoesNotExist, Values: []string{"x"}}}},
		{Expressions: []Requirement{{Key: "a", Operator: "Gt", Values: []string{"1"}}}},
		{Expressions: []Requirement{{Operator: OpExists}}},
	}
	for _, s := range bad {
		if err := s.Validate(); err == nil {
			t.Errorf("%+v: Validate accepted it", s)
		}
	}
	if err := (Selector{MatchLabels: map[string]string{"a": "b"}, Expressions: []Requirement{{Key: "c", Operator: OpExists}}}).Validate(); err != nil {
		t.Errorf("valid selector: %v", err)
	}
}
