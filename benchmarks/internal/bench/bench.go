// Package bench is the harness behind warrenbench: scenarios (Cases) grouped
// in Suites, each run for every contender, contenders interleaved
// (A B C A B C ...) over several rounds so that machine noise hits them
// alike, and a Markdown report of medians and per-round ratios against a
// baseline contender.
//
// A scenario family (pool leasing, publishing, confirms, consuming) is one
// Suite in its own package; cmd/warrenbench selects and runs them.
package bench

import (
	"context"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
)

// Unit says how a metric's values are written.
type Unit int

const (
	Nanos   Unit = iota // a duration in nanoseconds: "57.3 ns", "1.21 ms"
	Rate                // events per second: "4.21 M/s"
	Count               // a plain number: "0", "2.01"
	Percent             // a fraction in [0, 1], written as a percentage
)

// Metric describes one measured quantity of a Case.
type Metric struct {
	Key   string // key in Result
	Title string // column header
	Unit  Unit
	// Higher says larger is better (throughput); otherwise smaller is.
	Higher bool
}

// Result is one run of one Case for one contender: metric key to value.
// A missing or NaN value is written as "–".
type Result map[string]float64

// Case is one scenario.
type Case struct {
	Name    string   // "pool/contended-64": suite name, slash, case name
	Doc     string   // one line saying what is measured
	Metrics []Metric // table columns, in order
	// Contenders, if set, are the contenders this case runs, in order,
	// instead of all of the suite's; they must include the suite's
	// Baseline for the ratio rows.
	Contenders []string
	// NotRun lists contenders that cannot run this case, each with the
	// reason; the table shows them as rows without values.
	NotRun map[string]string
	// Ceiling, if set, is a contender that measures the most the broker
	// does in this case (e.g. many connections and channels at once) rather
	// than a client idiom. The case's table adds rows baseline/Ceiling and
	// subject/Ceiling, and CeilingMarkdown lists every contender's share of
	// it by the case's first metric.
	Ceiling string
	// Run measures contender once. It runs on the calling goroutine; it may
	// start others but must stop them before it returns.
	Run func(ctx context.Context, contender string) (Result, error)
}

// ContendersOf returns the contenders case c runs: its own if set, else
// the suite's.
func (s *Suite) ContendersOf(c *Case) []string {
	if c.Contenders != nil {
		return c.Contenders
	}
	return s.Contenders
}

// Suite is a family of scenarios sharing contenders and their setup.
type Suite struct {
	Name       string
	Doc        string   // a paragraph describing the suite, for the report
	Contenders []string // in the order they are run within a round
	Baseline   string   // the contender ratios are taken against
	// Subject and Peers, if set, add ratio rows Subject/peer for every
	// peer a case runs: warren against each other library, besides every
	// contender against the baseline.
	Subject string
	Peers   []string
	Cases   []*Case
	// Targets, if set, checks the aggregated results against goals.
	Targets func(r *Report) []Target
	// Close releases what the suite set up (pools, connections).
	Close func(ctx context.Context) error
}

// Target is one goal and whether a run met it.
type Target struct {
	Goal string
	Got  string
	Met  bool
}

// Options control a run.
type Options struct {
	Rounds int // measured rounds (>= 1)
	// Warmup runs one unrecorded round first.
	Warmup bool
	// Progress, if set, receives a line per run.
	Progress io.Writer
}

// Report holds every recorded Result of a run.
type Report struct {
	Suites  []*Suite
	Rounds  int
	Started time.Time
	Elapsed time.Duration
	results map[string]map[string][]Result // case name, contender, per round
}

// Run runs every case of every suite for every contender, interleaving
// contenders within each case and cases within each round.
func Run(ctx context.Context, suites []*Suite, opts Options) (*Report, error) {
	if opts.Rounds < 1 {
		return nil, fmt.Errorf("bench: %d rounds, want at least 1", opts.Rounds)
	}
	rep := &Report{Suites: suites, Rounds: opts.Rounds, Started: time.Now(), results: map[string]map[string][]Result{}}
	first := 1
	if opts.Warmup {
		first = 0
	}
	for round := first; round <= opts.Rounds; round++ {
		for _, s := range suites {
			for _, c := range s.Cases {
				for _, who := range s.ContendersOf(c) {
					if err := ctx.Err(); err != nil {
						return nil, err
					}
					start := time.Now()
					res, err := c.Run(ctx, who)
					if err != nil {
						return nil, fmt.Errorf("%s, %s, round %d: %w", c.Name, who, round, err)
					}
					if opts.Progress != nil {
						tag := fmt.Sprintf("round %d/%d", round, opts.Rounds)
						if round == 0 {
							tag = "warm-up"
						}
						fmt.Fprintf(opts.Progress, "%-12s %-24s %-10s %6.2fs  %s\n", tag, c.Name, who,
							time.Since(start).Seconds(), brief(c.Metrics, res))
					}
					if round == 0 {
						continue
					}
					m := rep.results[c.Name]
					if m == nil {
						m = map[string][]Result{}
						rep.results[c.Name] = m
					}
					m[who] = append(m[who], res)
				}
			}
		}
	}
	rep.Elapsed = time.Since(rep.Started)
	return rep, nil
}

// brief writes the first three metrics of res for progress lines.
func brief(ms []Metric, res Result) string {
	var parts []string
	for i, m := range ms {
		if i == 3 {
			break
		}
		parts = append(parts, m.Title+" "+Format(m.Unit, res[m.Key]))
	}
	return strings.Join(parts, ", ")
}

// Values returns the per-round values of one metric.
func (r *Report) Values(caseName, contender, key string) []float64 {
	var vs []float64
	for _, res := range r.results[caseName][contender] {
		v, ok := res[key]
		if !ok {
			v = math.NaN()
		}
		vs = append(vs, v)
	}
	return vs
}

// Median returns the median over rounds of one metric, NaN if unknown.
func (r *Report) Median(caseName, contender, key string) float64 {
	return Median(r.Values(caseName, contender, key))
}

// Ratio returns the median over rounds of contender's value divided by
// baseline's value in the same round: pairs measured seconds apart, so slow
// drift of the machine cancels. NaN when no round has both values non-zero.
func (r *Report) Ratio(caseName, contender, baseline, key string) float64 {
	return r.ratio(caseName, contender, baseline, Metric{Key: key})
}

// ratio is Ratio for metric m: the median of ratios.
func (r *Report) ratio(caseName, contender, baseline string, m Metric) float64 {
	return Median(r.ratios(caseName, contender, baseline, m))
}

// ratios returns the per-round ratios of metric m, contender over
// baseline, leaving out rounds without both values or with a zero
// baseline. Count values that print as 0.00 count as 0, so a ratio of two
// near-zero allocation rates is not reported.
func (r *Report) ratios(caseName, contender, baseline string, m Metric) []float64 {
	a := r.Values(caseName, contender, m.Key)
	b := r.Values(caseName, baseline, m.Key)
	var rs []float64
	for i := range min(len(a), len(b)) {
		x, y := a[i], b[i]
		if m.Unit == Count {
			x, y = zeroSmall(x), zeroSmall(y)
		}
		if y != 0 && !math.IsNaN(x) && !math.IsNaN(y) {
			rs = append(rs, x/y)
		}
	}
	return rs
}

func zeroSmall(v float64) float64 {
	if math.Abs(v) < 0.005 {
		return 0
	}
	return v
}

// Median returns the median of the non-NaN values in vs, NaN if none.
func Median(vs []float64) float64 {
	var xs []float64
	for _, v := range vs {
		if !math.IsNaN(v) {
			xs = append(xs, v)
		}
	}
	if len(xs) == 0 {
		return math.NaN()
	}
	slices.Sort(xs)
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

// Spread returns min and max of the non-NaN values in vs.
func Spread(vs []float64) (lo, hi float64) {
	lo, hi = math.NaN(), math.NaN()
	for _, v := range vs {
		if math.IsNaN(v) {
			continue
		}
		if math.IsNaN(lo) || v < lo {
			lo = v
		}
		if math.IsNaN(hi) || v > hi {
			hi = v
		}
	}
	return lo, hi
}

// Format writes v in unit u.
func Format(u Unit, v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "–"
	}
	switch u {
	case Nanos:
		switch a := math.Abs(v); {
		case a >= 1e9:
			return fmt.Sprintf("%.2f s", v/1e9)
		case a >= 1e6:
			return fmt.Sprintf("%.2f ms", v/1e6)
		case a >= 1e4:
			return fmt.Sprintf("%.1f µs", v/1e3)
		case a >= 1e3:
			return fmt.Sprintf("%.2f µs", v/1e3)
		default:
			return fmt.Sprintf("%.1f ns", v)
		}
	case Rate:
		switch a := math.Abs(v); {
		case a >= 1e6:
			return fmt.Sprintf("%.2f M/s", v/1e6)
		case a >= 1e3:
			return fmt.Sprintf("%.1f k/s", v/1e3)
		default:
			return fmt.Sprintf("%.0f /s", v)
		}
	case Percent:
		switch {
		case v == 0:
			return "0%"
		case v < 0.001:
			return fmt.Sprintf("%.3f%%", v*100)
		default:
			return fmt.Sprintf("%.1f%%", v*100)
		}
	default:
		if v == math.Trunc(v) && math.Abs(v) < 1e15 {
			return fmt.Sprintf("%.0f", v)
		}
		return fmt.Sprintf("%.2f", v)
	}
}

// formatRatio writes a ratio as "1.23×".
func formatRatio(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "–"
	}
	return fmt.Sprintf("%.2f×", v)
}

// Markdown writes the report: per case, a table of medians per contender,
// rows of median per-round ratios against the baseline, then the targets.
func (r *Report) Markdown(w io.Writer) {
	for _, s := range r.Suites {
		fmt.Fprintf(w, "## %s\n\n", s.Name)
		if s.Doc != "" {
			fmt.Fprintf(w, "%s\n\n", s.Doc)
		}
		fmt.Fprintf(w, "Medians of %d interleaved rounds; ratio rows are the median of per-round ratios against %s.\n\n", r.Rounds, s.Baseline)
		for _, c := range s.Cases {
			fmt.Fprintf(w, "### %s\n\n%s\n\n", c.Name, c.Doc)
			head := []string{"contender"}
			for _, m := range c.Metrics {
				head = append(head, m.Title)
			}
			fmt.Fprintf(w, "| %s |\n|%s\n", strings.Join(head, " | "), strings.Repeat("---|", len(head)))
			contenders := s.ContendersOf(c)
			for _, who := range contenders {
				row := []string{who}
				for _, m := range c.Metrics {
					row = append(row, Format(m.Unit, r.Median(c.Name, who, m.Key)))
				}
				fmt.Fprintf(w, "| %s |\n", strings.Join(row, " | "))
			}
			for _, who := range slices.Sorted(maps.Keys(c.NotRun)) {
				row := []string{who, "not run: " + c.NotRun[who]}
				for range c.Metrics[1:] {
					row = append(row, "–")
				}
				fmt.Fprintf(w, "| %s |\n", strings.Join(row, " | "))
			}
			ratioRow := func(who, base string) {
				if who == base || !slices.Contains(contenders, who) || !slices.Contains(contenders, base) {
					return
				}
				row := []string{who + "/" + base}
				for _, m := range c.Metrics {
					row = append(row, formatRatio(r.ratio(c.Name, who, base, m)))
				}
				fmt.Fprintf(w, "| %s |\n", strings.Join(row, " | "))
			}
			for _, who := range contenders {
				ratioRow(who, s.Baseline)
			}
			for _, peer := range s.Peers {
				if peer != s.Baseline {
					ratioRow(s.Subject, peer)
				}
			}
			if c.Ceiling != "" {
				ratioRow(s.Baseline, c.Ceiling)
				if s.Subject != s.Baseline {
					ratioRow(s.Subject, c.Ceiling)
				}
			}
			if len(c.Metrics) > 0 && r.Rounds > 1 {
				m := c.Metrics[0]
				var parts []string
				for _, who := range contenders {
					lo, hi := Spread(r.Values(c.Name, who, m.Key))
					parts = append(parts, fmt.Sprintf("%s %s – %s", who, Format(m.Unit, lo), Format(m.Unit, hi)))
				}
				fmt.Fprintf(w, "\nSpread of %s over the rounds (min – max): %s.\n", m.Title, strings.Join(parts, "; "))
			}
			fmt.Fprintln(w)
		}
	}
}

// TargetsMarkdown writes every suite's targets as one table, "" when no
// suite has any.
func (r *Report) TargetsMarkdown(w io.Writer) {
	var rows []string
	for _, s := range r.Suites {
		if s.Targets == nil {
			continue
		}
		for _, t := range s.Targets(r) {
			met := "no"
			if t.Met {
				met = "yes"
			}
			rows = append(rows, fmt.Sprintf("| %s | %s | %s | %s |", s.Name, t.Goal, t.Got, met))
		}
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "## Targets\n\n| family | goal | measured (medians; ratios are medians of per-round ratios) | met |\n|---|---|---|---|\n")
	fmt.Fprintf(w, "%s\n\n", strings.Join(rows, "\n"))
}

// CeilingMarkdown writes, for every case with a Ceiling contender, each
// other contender's share of it: the median of per-round ratios of the
// case's first metric, and their range. Nothing when no case has one.
func (r *Report) CeilingMarkdown(w io.Writer) {
	var rows []string
	for _, s := range r.Suites {
		for _, c := range s.Cases {
			contenders := s.ContendersOf(c)
			if c.Ceiling == "" || len(c.Metrics) == 0 || !slices.Contains(contenders, c.Ceiling) {
				continue
			}
			m := c.Metrics[0]
			rows = append(rows, fmt.Sprintf("| %s | %s (the ceiling) | %s | 100%% | |", c.Name, c.Ceiling,
				Format(m.Unit, r.Median(c.Name, c.Ceiling, m.Key))))
			for _, who := range contenders {
				if who == c.Ceiling {
					continue
				}
				lo, hi := Spread(r.ratios(c.Name, who, c.Ceiling, m))
				rows = append(rows, fmt.Sprintf("| %s | %s | %s | %s | %s – %s |", c.Name, who,
					Format(m.Unit, r.Median(c.Name, who, m.Key)), Format(Percent, r.ratio(c.Name, who, c.Ceiling, m)),
					Format(Percent, lo), Format(Percent, hi)))
			}
		}
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "## Share of the broker's ceiling\n\n"+
		"Each contender's median of the case's first metric, and its share of the ceiling contender's measured "+
		"in the same rounds: the median of per-round ratios, and their range.\n\n"+
		"| case | contender | median | share of the ceiling | per-round range |\n|---|---|---|---|---|\n")
	fmt.Fprintf(w, "%s\n\n", strings.Join(rows, "\n"))
}

// RoundsText writes every recorded value of every case, one line per case,
// contender and metric, for checking the spread behind a median.
func (r *Report) RoundsText(w io.Writer) {
	for _, s := range r.Suites {
		for _, c := range s.Cases {
			for _, who := range s.ContendersOf(c) {
				for _, m := range c.Metrics {
					var parts []string
					for _, v := range r.Values(c.Name, who, m.Key) {
						parts = append(parts, Format(m.Unit, v))
					}
					fmt.Fprintf(w, "%-24s %-10s %-14s %s\n", c.Name, who, m.Title, strings.Join(parts, "  "))
				}
			}
		}
	}
}
