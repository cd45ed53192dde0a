package poolbench

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/warrenmq/warren/benchmarks/internal/bench"
)

var epoch = time.Now()

// now is a monotonic clock in nanoseconds (a vDSO read on Linux).
func now() int64 { return int64(time.Since(epoch)) }

// spin keeps the CPU busy for d, like a goroutine decoding or encoding
// between two leases.
func spin(d time.Duration) {
	end := now() + int64(d)
	for now() < end {
	}
}

// StallThreshold is the hand-off time counted as a stall: two orders of
// magnitude above a goroutine switch, a tenth of the ~1 ms that puddle's
// issue #46 reports.
const StallThreshold = 100 * time.Microsecond

// maxID bounds resource ids: warren's are channel numbers (uint16).
const maxID = 1 << 16

// worker is one goroutine of a contended trial. Its hooks do nothing in an
// untimed trial beyond counting, so a throughput pass measures the pool.
type worker struct {
	stop  *atomic.Bool
	timed bool
	hold  time.Duration // time.Sleep while holding the lease (0: none)
	work  time.Duration // CPU spin after Release (0: none)
	ops   int64

	// Timed trials only.
	relAt []atomic.Int64   // by resource id: when it was last released
	lat   *bench.Histogram // Acquire latency
	gap   *bench.Histogram // hand-off: resource released to waiter running with it
}

func (w *worker) begin() int64 {
	if !w.timed {
		return 0
	}
	return now()
}

// acquired records the Acquire that began at t0 and returned resource id.
// If the resource was released after t0, it was handed over to this
// Acquire while it waited: the time from that release until now is the
// hand-off, during which the resource was free and nobody used it.
func (w *worker) acquired(t0 int64, id int) {
	if !w.timed {
		return
	}
	t := now()
	w.lat.Record(t - t0)
	if r := w.relAt[id].Load(); r > t0 {
		w.gap.Record(t - r)
	}
}

func (w *worker) holdIt() {
	if w.hold > 0 {
		time.Sleep(w.hold)
	}
}

func (w *worker) releasing(id int) {
	if w.timed {
		w.relAt[id].Store(now())
	}
}

func (w *worker) released() {
	w.ops++
	if w.work > 0 {
		spin(w.work)
	}
}

// serialTrial measures Acquire+Release on one goroutine for about d:
// ns/op, allocs/op and B/op.
func serialTrial(c contender, d time.Duration) (bench.Result, error) {
	// Calibrate: grow n until a run takes 20 ms, then scale to d.
	n := 1000
	for {
		t0 := time.Now()
		if err := c.serial(n); err != nil {
			return nil, err
		}
		el := time.Since(t0)
		if el >= 20*time.Millisecond {
			n = int(float64(n) * float64(d) / float64(el))
			break
		}
		n *= 4
	}
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	t0 := time.Now()
	err := c.serial(n)
	el := time.Since(t0)
	runtime.ReadMemStats(&m1)
	if err != nil {
		return nil, err
	}
	return bench.Result{
		"ns_op":     float64(el.Nanoseconds()) / float64(n),
		"allocs_op": float64(m1.Mallocs-m0.Mallocs) / float64(n),
		"bytes_op":  float64(m1.TotalAlloc-m0.TotalAlloc) / float64(n),
	}, nil
}

// parallelSpec is one contended trial.
type parallelSpec struct {
	goroutines int
	d          time.Duration
	timed      bool
	hold, work time.Duration
}

// parallelTrial runs spec.goroutines workers against c for about spec.d.
// Untimed it reports throughput, ns/op and allocs/op; timed it reports the
// Acquire latency and hand-off distributions as well.
func parallelTrial(c contender, spec parallelSpec) (bench.Result, error) {
	var (
		stop  atomic.Bool
		relAt []atomic.Int64
		start = make(chan struct{})
		g     errgroup.Group
	)
	if spec.timed {
		relAt = make([]atomic.Int64, maxID)
	}
	ws := make([]*worker, spec.goroutines)
	for i := range ws {
		ws[i] = &worker{stop: &stop, timed: spec.timed, hold: spec.hold, work: spec.work, relAt: relAt}
		if spec.timed {
			ws[i].lat = &bench.Histogram{Threshold: int64(StallThreshold)}
			ws[i].gap = &bench.Histogram{Threshold: int64(StallThreshold)}
		}
	}
	for _, w := range ws {
		g.Go(func() error {
			<-start
			err := c.loop(w)
			if err != nil {
				stop.Store(true) // the first error ends the trial
			}
			return err
		})
	}
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	t0 := time.Now()
	close(start)
	time.Sleep(spec.d)
	stop.Store(true)
	runErr := g.Wait()
	el := time.Since(t0)
	runtime.ReadMemStats(&m1)
	if runErr != nil {
		return nil, runErr
	}

	var ops int64
	for _, w := range ws {
		ops += w.ops
	}
	if ops == 0 {
		return nil, fmt.Errorf("no Acquire+Release completed in %v", el)
	}
	r := bench.Result{
		"ops_s":     float64(ops) / el.Seconds(),
		"ns_op":     float64(el.Nanoseconds()) / float64(ops),
		"allocs_op": float64(m1.Mallocs-m0.Mallocs) / float64(ops),
	}
	if spec.timed {
		lat := &bench.Histogram{Threshold: int64(StallThreshold)}
		gap := &bench.Histogram{Threshold: int64(StallThreshold)}
		for _, w := range ws {
			lat.Merge(w.lat)
			gap.Merge(w.gap)
		}
		r["acq_p50"] = lat.Quantile(0.50)
		r["acq_p99"] = lat.Quantile(0.99)
		r["acq_max"] = float64(lat.Max())
		r["acq_mean"] = lat.Mean()
		r["hand_p50"] = gap.Quantile(0.50)
		r["hand_p99"] = gap.Quantile(0.99)
		r["hand_max"] = float64(gap.Max())
		r["hand_stalls"] = gap.OverShare()
		r["handoffs"] = float64(gap.Count()) / float64(ops)
	}
	return r, nil
}
