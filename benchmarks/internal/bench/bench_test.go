package bench

import (
	"context"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func TestBucketsCoverEveryValueInOrder(t *testing.T) {
	prev := -1
	for _, v := range []int64{0, 1, 31, 32, 63, 64, 65, 127, 128, 1000, 1 << 20, 1<<30 + 12345, 1 << 36} {
		i := bucketOf(v)
		if i < prev {
			t.Fatalf("bucketOf(%d) = %d, below the bucket of a smaller value (%d)", v, i, prev)
		}
		prev = i
		if hi := bucketHigh(i); hi < v || float64(hi-v) > 0.035*float64(v)+1 {
			t.Errorf("value %d: bucket %d tops out at %d, want within 3.5%% above it", v, i, hi)
		}
	}
}

func TestQuantilesAreWithinABucketOfTheExactOnes(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h Histogram
	vs := make([]int64, 100_000)
	for i := range vs {
		vs[i] = int64(rng.ExpFloat64() * 50_000)
		h.Record(vs[i])
	}
	slices.Sort(vs)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		exact := float64(vs[int(math.Ceil(q*float64(len(vs))))-1])
		got := h.Quantile(q)
		if got < exact || got > exact*1.035+1 {
			t.Errorf("q%.3f: got %.0f, want %.0f to 3.5%% above", q, got, exact)
		}
	}
	if h.Max() != vs[len(vs)-1] || h.Quantile(1) != float64(vs[len(vs)-1]) {
		t.Errorf("max: got %d and q1 %.0f, want %d", h.Max(), h.Quantile(1), vs[len(vs)-1])
	}
}

func TestMedianIgnoresNaN(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{math.NaN(), 5, 1}, 3},
	} {
		if got := Median(c.in); got != c.want {
			t.Errorf("Median(%v): got %v, want %v", c.in, got, c.want)
		}
	}
	if got := Median([]float64{math.NaN()}); !math.IsNaN(got) {
		t.Errorf("Median(NaN): got %v, want NaN", got)
	}
}

func TestCaseContendersOverrideTheSuites(t *testing.T) {
	var ran []string
	run := func(_ context.Context, who string) (Result, error) {
		ran = append(ran, who)
		return Result{"v": 2}, nil
	}
	s := &Suite{
		Name:       "s",
		Contenders: []string{"a", "b", "c"},
		Baseline:   "a",
		Cases: []*Case{
			{Name: "s/all", Metrics: []Metric{{Key: "v", Title: "v", Unit: Count}}, Run: run},
			{Name: "s/some", Metrics: []Metric{{Key: "v", Title: "v", Unit: Count}}, Run: run, Contenders: []string{"a", "c"}},
		},
	}
	rep, err := Run(context.Background(), []*Suite{s}, Options{Rounds: 1})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(ran, ","), "a,b,c,a,c"; got != want {
		t.Errorf("ran %s, want %s", got, want)
	}
	var out strings.Builder
	rep.Markdown(&out)
	some := out.String()[strings.Index(out.String(), "### s/some"):]
	if strings.Contains(some, "| b |") || strings.Contains(some, "b/a") || !strings.Contains(some, "| c/a | 1.00× |") {
		t.Errorf("s/some table shows b or lacks c/a:\n%s", some)
	}
}

func TestNotRunRowsPeerRatiosAndTargets(t *testing.T) {
	vals := map[string]float64{"raw": 100, "warren": 98, "peer": 80}
	m := Metric{Key: "v", Title: "v", Unit: Rate, Higher: true}
	s := &Suite{
		Name:       "s",
		Contenders: []string{"raw", "warren", "peer"},
		Baseline:   "raw",
		Subject:    "warren",
		Peers:      []string{"peer", "absent"},
		Cases: []*Case{{
			Name:    "s/c",
			Metrics: []Metric{m, {Key: "w", Title: "w", Unit: Count}},
			NotRun:  map[string]string{"absent": "cannot"},
			Run: func(_ context.Context, who string) (Result, error) {
				return Result{"v": vals[who], "w": 1}, nil
			},
		}},
	}
	s.Targets = func(r *Report) []Target {
		return []Target{
			RatioTarget(r, "warren ≥ 0.95× raw", "s/c", "warren", "raw", m, 0.95),
			RatioTarget(r, "warren ≥ 1× raw", "s/c", "warren", "raw", m, 1),
			RatioTarget(r, "never measured", "s/c", "warren", "absent", m, 1),
		}
	}
	rep, err := Run(context.Background(), []*Suite{s}, Options{Rounds: 3})
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	rep.TargetsMarkdown(&out)
	rep.Markdown(&out)
	for _, want := range []string{
		"| s | warren ≥ 0.95× raw | warren/raw 0.98× (98 /s vs 100 /s) | yes |",
		"| s | warren ≥ 1× raw | warren/raw 0.98× (98 /s vs 100 /s) | no |",
		"| s | never measured | warren/absent – (98 /s vs –) | no |",
		"| absent | not run: cannot | – |",
		"| peer/raw | 0.80× | 1.00× |",
		"| warren/peer | 1.23× | 1.00× |",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "warren/absent |") {
		t.Errorf("report has a ratio row for a contender that did not run:\n%s", out.String())
	}
}

func TestCeilingRowsAndShares(t *testing.T) {
	// Per round: raw 50, 40, 60; warren 55, 40, 54; ceiling 100, 80, 90.
	vals := map[string][]float64{"raw": {50, 40, 60}, "warren": {55, 40, 54}, "ceiling": {100, 80, 90}}
	round := map[string]int{}
	m := Metric{Key: "v", Title: "v", Unit: Rate, Higher: true}
	s := &Suite{
		Name:       "s",
		Contenders: []string{"raw", "warren", "ceiling"},
		Baseline:   "raw",
		Subject:    "warren",
		Cases: []*Case{
			{
				Name: "s/c", Metrics: []Metric{m}, Ceiling: "ceiling",
				Run: func(_ context.Context, who string) (Result, error) {
					v := vals[who][round[who]]
					round[who]++
					return Result{"v": v}, nil
				},
			},
			{
				Name: "s/none", Metrics: []Metric{m}, Contenders: []string{"raw", "warren"},
				Run: func(context.Context, string) (Result, error) { return Result{"v": 1}, nil },
			},
		},
	}
	rep, err := Run(context.Background(), []*Suite{s}, Options{Rounds: 3})
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	rep.CeilingMarkdown(&out)
	rep.Markdown(&out)
	// Shares per round: raw 50%, 50%, 66.7% (median 50%); warren 55%,
	// 50%, 60% (median 55%), not the ratio of medians (55/90).
	for _, want := range []string{
		"| s/c | ceiling (the ceiling) | 90 /s | 100% | |",
		"| s/c | raw | 50 /s | 50.0% | 50.0% – 66.7% |",
		"| s/c | warren | 54 /s | 55.0% | 50.0% – 60.0% |",
		"| raw/ceiling | 0.50× |",
		"| warren/ceiling | 0.55× |",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "| s/none |") || strings.Count(out.String(), "/ceiling |") != 2 {
		t.Errorf("a case without a ceiling has share rows, or the ceiling rows repeat:\n%s", out.String())
	}

	out.Reset()
	s.Cases = s.Cases[1:]
	rep.CeilingMarkdown(&out)
	if out.Len() != 0 {
		t.Errorf("no case has a ceiling, yet CeilingMarkdown wrote:\n%s", out.String())
	}
}
