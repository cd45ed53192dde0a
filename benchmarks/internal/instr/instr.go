// Package instr is what the programs of make bench-instr share: their
// flags, the message they publish, and the measurement each one prints.
//
// Each program (one per scenario and library, in the packages below this
// one) sets up its connection, then runs its loop over -n messages and
// prints one JSON line on stdout: the number of messages and the
// runtime.MemStats deltas (Mallocs, TotalAlloc) of the loop alone. The
// driver, benchmarks/cmd/instrbench, runs each program under callgrind at
// two message counts and differences both the instruction totals and these
// deltas, so that start-up, set-up and tear-down cancel.
package instr

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"time"
)

// Params are the flags every program takes; a program uses those its
// scenario needs.
type Params struct {
	URL      string        // -url, default $AMQP_URL or the local broker
	Queue    string        // -queue: an existing queue, made and deleted by the driver
	N        int           // -n: messages in the measured loop
	Body     int           // -body: body size in bytes
	Window   int           // -window: outstanding confirms
	Callers  int           // -callers: goroutines sharing one publisher
	Prefetch int           // -prefetch: basic.qos prefetch count
	Timeout  time.Duration // -timeout: the whole program's limit
}

// Run is a set-up program: Loop handles p.N messages, Close tears down.
type Run struct {
	Loop  func(ctx context.Context) error
	Close func(ctx context.Context) error
}

// Result is the line a program prints on stdout.
type Result struct {
	N       int    `json:"n"`
	Mallocs uint64 `json:"mallocs"` // heap objects allocated during the loop
	Bytes   uint64 `json:"bytes"`   // heap bytes allocated during the loop
}

// DefaultURL is the broker the programs talk to unless AMQP_URL or -url
// names another.
const DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// Main parses the flags, calls setup, measures the loop and prints its
// Result; on any error it prints it on stderr and exits with status 1.
func Main(setup func(ctx context.Context, p Params) (*Run, error)) {
	if err := run(setup); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[0], err)
		os.Exit(1)
	}
}

func run(setup func(ctx context.Context, p Params) (*Run, error)) error {
	url := os.Getenv("AMQP_URL")
	if url == "" {
		url = DefaultURL
	}
	var p Params
	flag.StringVar(&p.URL, "url", url, "broker URL")
	flag.StringVar(&p.Queue, "queue", "", "queue to publish to or consume from (must exist)")
	flag.IntVar(&p.N, "n", 1000, "messages in the measured loop")
	flag.IntVar(&p.Body, "body", 128, "body size in bytes")
	flag.IntVar(&p.Window, "window", 256, "outstanding confirms")
	flag.IntVar(&p.Callers, "callers", 64, "goroutines sharing the publisher")
	flag.IntVar(&p.Prefetch, "prefetch", 300, "basic.qos prefetch count")
	flag.DurationVar(&p.Timeout, "timeout", 10*time.Minute, "limit for the whole program")
	flag.Parse()
	switch {
	case p.Queue == "":
		return errors.New("-queue is required")
	case p.N <= 0 || p.Body < 0 || p.Window <= 0 || p.Callers <= 0 || p.Prefetch <= 0:
		return fmt.Errorf("-n, -window, -callers and -prefetch must be positive and -body not negative: %+v", p)
	}

	ctx, cancel := context.WithTimeout(context.Background(), p.Timeout)
	defer cancel()
	r, err := setup(ctx, p)
	if err != nil {
		return fmt.Errorf("set-up: %w", err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	loopErr := r.Loop(ctx)
	runtime.ReadMemStats(&after)
	if err := errors.Join(loopErr, r.Close(ctx)); err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(Result{
		N:       p.N,
		Mallocs: after.Mallocs - before.Mallocs,
		Bytes:   after.TotalAlloc - before.TotalAlloc,
	})
}

// Body returns a body of n bytes, a to z repeated.
func Body(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}
