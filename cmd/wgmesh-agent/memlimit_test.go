package main

import (
	"math"
	"runtime/debug"
	"testing"
)

func TestApplyMemoryLimit(t *testing.T) {
	orig := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(orig) })
	tests := []struct {
		name string
		env  map[string]string
		want int64
	}{
		{"unset: default", nil, defaultMemoryLimit},
		{"set: the runtime's own value stays", map[string]string{"GOMEMLIMIT": "off"}, math.MaxInt64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			debug.SetMemoryLimit(math.MaxInt64)
			applyMemoryLimit(func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok })
			if got := debug.SetMemoryLimit(-1); got != tt.want {
				t.Errorf("memory limit %d, want %d", got, tt.want)
			}
		})
	}
}
