package poolbench

import (
	"context"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenmq/warren/internal/brokertest"
)

// These benchmarks are the pool scenarios in go test form, for profiling
// one contender at a time:
//
//	go test -run '^$' -bench 'Pool/uncontended/warren' -cpu 2 -cpuprofile cpu.out ./internal/poolbench
//
// cmd/warrenbench is the comparison: it interleaves contenders over rounds.

var broker *brokertest.Broker

func TestMain(m *testing.M) {
	os.Exit(brokertest.RunMain(m, &broker, brokertest.Options{TryLocalDefault: true}))
}

// contenders sets up every contender for b, skipping warren without a broker.
func contenders(b *testing.B) map[string]contender {
	b.Helper()
	ctx := context.Background()
	cs := map[string]contender{}
	for _, name := range []string{Warren, Chanpool, Puddle} {
		var (
			c   contender
			err error
		)
		switch name {
		case Warren:
			if broker == nil {
				continue
			}
			c, err = newWarren(ctx, broker.URL, 8)
		case Chanpool:
			c, err = newCore(ctx, 8)
		case Puddle:
			c, err = newPuddle(ctx, 8)
		}
		if err != nil {
			b.Fatalf("%s: %v", name, err)
		}
		cs[name] = c
		b.Cleanup(func() {
			if err := c.close(ctx); err != nil {
				b.Errorf("%s: close: %v", name, err)
			}
		})
	}
	return cs
}

func BenchmarkPool(b *testing.B) {
	cs := contenders(b)
	names := []string{Warren, Chanpool, Puddle}
	b.Run("uncontended", func(b *testing.B) {
		for _, name := range names {
			c, ok := cs[name]
			if !ok {
				continue
			}
			b.Run(name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if err := c.serial(1); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	})
	for _, g := range []int{64, 1024} {
		b.Run("contended-"+strconv.Itoa(g), func(b *testing.B) {
			for _, name := range names {
				c, ok := cs[name]
				if !ok {
					continue
				}
				b.Run(name, func(b *testing.B) {
					b.ReportAllocs()
					benchParallel(b, c, g)
				})
			}
		})
	}
}

// benchParallel runs b.N Acquire+Release pairs on g goroutines.
func benchParallel(b *testing.B, c contender, g int) {
	var left atomic.Int64
	left.Store(int64(b.N))
	var wg sync.WaitGroup
	b.ResetTimer()
	for range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left.Add(-1) >= 0 {
				if err := c.serial(1); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// The primitives warren's lease and Release are made of, for sizing the
// suggestions in BENCHMARKS.md.
func BenchmarkPrimitive(b *testing.B) {
	b.Run("atomic.Uint64.Add", func(b *testing.B) {
		var v atomic.Uint64
		for b.Loop() {
			v.Add(1)
		}
	})
	b.Run("atomic.Uint64.CompareAndSwap", func(b *testing.B) {
		var v atomic.Uint64
		for b.Loop() {
			x := v.Load()
			v.CompareAndSwap(x, x+1)
		}
	})
	b.Run("sync.Mutex.Lock+Unlock", func(b *testing.B) {
		var mu sync.Mutex
		for b.Loop() {
			mu.Lock()
			mu.Unlock() //lint:ignore SA2001 the pair is what is measured
		}
	})
	b.Run("select-recv-default", func(b *testing.B) {
		c := make(chan error, 1)
		n := 0
		for b.Loop() {
			select {
			case <-c:
				n++
			default:
			}
		}
		_ = n
	})
	b.Run("len(chan)", func(b *testing.B) {
		c := make(chan error, 1)
		n := 0
		for b.Loop() {
			if len(c) != 0 {
				n++
			}
		}
		_ = n
	})
	b.Run("time.Since", func(b *testing.B) {
		t := time.Now()
		var d time.Duration
		for b.Loop() {
			d += time.Since(t)
		}
		_ = d
	})
}
