package bench

import (
	"math"
	"slices"
	"time"
)

// Series is one figure measured several times: the raw values in run order
// and their median, which is what the report shows.
type Series struct {
	Values []float64 `json:"values"`
	Median float64   `json:"median"`
}

// Add appends a value and recomputes the median.
func (s *Series) Add(v float64) {
	s.Values = append(s.Values, v)
	s.Median = Median(s.Values)
}

// N is the number of runs.
func (s *Series) N() int {
	if s == nil {
		return 0
	}
	return len(s.Values)
}

// Median returns the median of v (the mean of the two middle values for an
// even count); NaN for an empty slice.
func Median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// Percentile returns the q-quantile (0 ≤ q ≤ 1) of sorted durations by the
// nearest-rank method: the smallest value with at least q of the samples at
// or below it. The input must be sorted.
func Percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(q * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// Micros converts a duration to float microseconds.
func Micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// Millis converts a duration to float milliseconds.
func Millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
