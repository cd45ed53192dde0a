package bench

import (
	"fmt"
	"math"
	"slices"
)

// RatioTarget checks one ratio goal: the median per-round ratio of metric m
// in case caseName, who over base, at least limit when larger is better
// (m.Higher), at most limit otherwise. An unmeasured ratio is not met.
func RatioTarget(r *Report, goal, caseName, who, base string, m Metric, limit float64) Target {
	ratio := r.ratio(caseName, who, base, m)
	met := ratio <= limit
	if m.Higher {
		met = ratio >= limit
	}
	return Target{
		Goal: goal,
		Got: fmt.Sprintf("%s/%s %s (%s vs %s)", who, base, formatRatio(ratio),
			Format(m.Unit, r.Median(caseName, who, m.Key)), Format(m.Unit, r.Median(caseName, base, m.Key))),
		Met: met && !math.IsNaN(ratio),
	}
}

// CPUTargets checks, for every case of s that runs both who and base, that
// who's client CPU time per message is at most limit times base's.
func CPUTargets(r *Report, s *Suite, who, base string, limit float64) []Target {
	var ts []Target
	for _, c := range s.Cases {
		if cs := s.ContendersOf(c); !slices.Contains(cs, who) || !slices.Contains(cs, base) {
			continue
		}
		goal := fmt.Sprintf("%s: client CPU per message, %s ≤ %.2f× %s", c.Name, who, limit, base)
		ts = append(ts, RatioTarget(r, goal, c.Name, who, base, CPUPerMsg, limit))
	}
	return ts
}
