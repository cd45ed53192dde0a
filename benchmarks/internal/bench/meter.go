package bench

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
)

// The metrics of every scenario that moves messages through a broker, in
// the column order of their tables.
var (
	MsgRate      = Metric{Key: "msg_s", Title: "msg/s", Unit: Rate, Higher: true}
	AllocsPerMsg = Metric{Key: "allocs_msg", Title: "allocs/msg", Unit: Count}
	CPUPerMsg    = Metric{Key: "cpu_msg", Title: "CPU/msg", Unit: Nanos}
	BytesPerMsg  = Metric{Key: "bytes_msg", Title: "B/msg", Unit: Count}
	MsgMetrics   = []Metric{MsgRate, AllocsPerMsg, CPUPerMsg, BytesPerMsg}
)

// MsgMetricsDoc says how MsgMetrics are measured, for suite docs.
const MsgMetricsDoc = "allocs/msg and B/msg are runtime.MemStats deltas over the timed part divided by the messages; " +
	"CPU/msg is this process's user+system CPU time (getrusage) over it divided by the messages: the client's " +
	"cost, every goroutine of the library included (the broker's CPU is not, but it shares the same cores)."

// Meter measures one timed part of a pass: wall time, allocations and
// process CPU time.
type Meter struct {
	m0, m1   runtime.MemStats
	ru0, ru1 syscall.Rusage
	t0       time.Time
	el       time.Duration
}

// StartMeter collects garbage (so the previous pass's garbage is not
// charged to this one) and starts measuring.
func StartMeter() *Meter {
	m := &Meter{}
	runtime.GC()
	runtime.ReadMemStats(&m.m0)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &m.ru0)
	m.t0 = time.Now()
	return m
}

// Stop ends the measurement.
func (m *Meter) Stop() {
	m.el = time.Since(m.t0)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &m.ru1)
	runtime.ReadMemStats(&m.m1)
}

// Elapsed returns the wall time between StartMeter and Stop.
func (m *Meter) Elapsed() time.Duration { return m.el }

// Result returns MsgMetrics for msgs messages (> 0) moved while measuring.
func (m *Meter) Result(msgs int64) Result {
	cpu := m.ru1.Utime.Nano() + m.ru1.Stime.Nano() - m.ru0.Utime.Nano() - m.ru0.Stime.Nano()
	n := float64(msgs)
	return Result{
		MsgRate.Key:      n / m.el.Seconds(),
		AllocsPerMsg.Key: float64(m.m1.Mallocs-m.m0.Mallocs) / n,
		BytesPerMsg.Key:  float64(m.m1.TotalAlloc-m.m0.TotalAlloc) / n,
		CPUPerMsg.Key:    float64(cpu) / n,
	}
}

// Loop is one goroutine's share of a timed pass: it works until stop is set
// and returns how many messages it completed.
type Loop func(ctx context.Context, stop *atomic.Bool) (int64, error)

// RunLoops runs loop on g goroutines, released together, for about d (less
// if ctx ends or a loop fails, which stops the others), and measures from
// the release until every goroutine has returned. It returns MsgMetrics over
// the messages all loops completed, and that count; the first loop error,
// or an error if no message was completed.
func RunLoops(ctx context.Context, d time.Duration, g int, loop Loop) (Result, int64, error) {
	var (
		stop   atomic.Bool
		start  = make(chan struct{})
		counts = make([]int64, g)
	)
	// gctx ends when ctx does or a loop fails; the loops themselves get
	// ctx and stop on the flag, so that a failure ends a pass the same way
	// its timer does.
	eg, gctx := errgroup.WithContext(ctx)
	for i := range g {
		eg.Go(func() error {
			<-start
			n, err := loop(ctx, &stop)
			counts[i] = n
			if err != nil {
				stop.Store(true)
			}
			return err
		})
	}
	m := StartMeter()
	close(start)
	timer := time.NewTimer(d)
	select {
	case <-timer.C:
	case <-gctx.Done():
	}
	timer.Stop()
	stop.Store(true)
	runErr := eg.Wait()
	m.Stop()

	var msgs int64
	for _, n := range counts {
		msgs += n
	}
	switch {
	case runErr != nil:
		return nil, msgs, runErr
	case msgs == 0:
		return nil, 0, fmt.Errorf("no message completed in %v", m.Elapsed())
	}
	return m.Result(msgs), msgs, nil
}
