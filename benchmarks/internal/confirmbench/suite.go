// Package confirmbench compares publishing with publisher confirms through
// warren with the raw amqp091-go idioms: waiting for each confirm, a window
// of deferred confirmations on one channel, and warren's Publisher shared by
// many goroutines against the best hand-written single-channel idiom.
package confirmbench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/warrenmq/warren/benchmarks/internal/bench"
)

// Contender names. The publisher-64 case also runs warren's Publisher with a
// fixed channel count, named by PublisherName (warren-1ch, warren-2ch, warren-8ch).
const (
	Raw    = "raw"    // amqp091-go, one confirm channel on its own connection
	Warren = "warren" // warren: a confirm Channel, or a Publisher with default options
)

// PublisherName is the contender name of a warren Publisher with n channels.
func PublisherName(n int) string { return fmt.Sprintf("warren-%dch", n) }

// Options configure the confirms suite. Zero fields take the defaults noted.
type Options struct {
	// BrokerURL is the RabbitMQ every contender publishes to. Required.
	BrokerURL string
	// Contenders to run (default all: Raw, Warren, then the Publisher
	// channel variants); a case runs those of them it has.
	Contenders []string
	// Duration of each measured pass (default 1 s).
	Duration time.Duration
	// Window of unconfirmed messages in the windowed idiom (default 256).
	Window int
	// Goroutines calling Publisher.Publish in the publisher case (default 64).
	Goroutines int
	// PublisherChannels are the extra Publisher contenders of the publisher
	// case, one per channel count (default 1, 2 and 8; the default
	// Publisher, contender Warren, has up to 4).
	PublisherChannels []int
	// BodySize is the size of every message body (default 128 bytes).
	BodySize int
}

func (o *Options) defaults() {
	if o.Duration == 0 {
		o.Duration = time.Second
	}
	if o.Window == 0 {
		o.Window = 256
	}
	if o.Goroutines == 0 {
		o.Goroutines = 64
	}
	if o.PublisherChannels == nil {
		o.PublisherChannels = []int{1, 2, 8}
	}
	if o.BodySize == 0 {
		o.BodySize = 128
	}
}

var (
	mRate   = bench.Metric{Key: "msg_s", Title: "msg/s", Unit: bench.Rate, Higher: true}
	mAllocs = bench.Metric{Key: "allocs_msg", Title: "allocs/msg", Unit: bench.Count}
	mCPU    = bench.Metric{Key: "cpu_msg", Title: "CPU/msg", Unit: bench.Nanos}
	mBytes  = bench.Metric{Key: "bytes_msg", Title: "B/msg", Unit: bench.Count}
	metrics = []bench.Metric{mRate, mAllocs, mCPU, mBytes}
)

// NewSuite dials the broker for every selected contender, declares the
// queue and returns the suite. Call its Close when done.
func NewSuite(ctx context.Context, opts Options) (*bench.Suite, error) {
	opts.defaults()
	if opts.BrokerURL == "" {
		return nil, errors.New("no broker URL")
	}
	pubNames := []string{Warren}
	for _, n := range opts.PublisherChannels {
		pubNames = append(pubNames, PublisherName(n))
	}
	all := append([]string{Raw}, pubNames...)
	selected := all
	if len(opts.Contenders) > 0 {
		for _, name := range opts.Contenders {
			if !slices.Contains(all, name) {
				return nil, fmt.Errorf("confirms contender %s: unknown (have %v)", name, all)
			}
		}
		selected = opts.Contenders
	}
	pick := func(names ...string) []string {
		var out []string
		for _, name := range selected {
			if slices.Contains(names, name) {
				out = append(out, name)
			}
		}
		return out
	}

	f, err := newFixture(ctx, opts, selected)
	if err != nil {
		return nil, err
	}
	baseline := Raw
	if !slices.Contains(selected, Raw) {
		baseline = selected[0]
	}
	s := &bench.Suite{
		Name: "confirms",
		Doc: fmt.Sprintf("Publishing with publisher confirms, %d-byte transient bodies, to the default exchange into one "+
			"exclusive queue with no consumer, purged after every pass from a separate connection (the purge must "+
			"remove exactly the messages acked, so every message was routed). raw: amqp091-go %s, one confirm "+
			"channel on its own connection. warren: a confirm Channel, or a Publisher, on one Client; every "+
			"channel is opened and put in confirm mode before the rounds. Each pass publishes for %v and counts "+
			"the messages confirmed; allocs/msg and B/msg are runtime.MemStats deltas over the pass divided by "+
			"the messages, CPU/msg is this process's user+system CPU (getrusage) over the pass divided by the "+
			"messages (the broker's CPU is not included, but it shares the same cores). Calls that take a context "+
			"get the run's cancellable one (signal.NotifyContext), as an application's would.",
			opts.BodySize, bench.ModuleVersion("github.com/rabbitmq/amqp091-go"), opts.Duration),
		Contenders: selected,
		Baseline:   baseline,
		Close:      f.close,
	}
	run := func(fn func(ctx context.Context, who string) (loop, int)) func(context.Context, string) (bench.Result, error) {
		return func(ctx context.Context, who string) (bench.Result, error) {
			l, g := fn(ctx, who)
			return f.trial(ctx, opts.Duration, g, l)
		}
	}
	add := func(c *bench.Case) {
		if len(c.Contenders) > 0 {
			s.Cases = append(s.Cases, c)
		}
	}
	add(&bench.Case{
		Name: "confirms/wait-each-1",
		Doc: "One goroutine publishes and waits for each confirm. raw: PublishWithDeferredConfirmWithContext, " +
			"then DeferredConfirmation.WaitContext. warren: Channel.Publish on a channel in ModeConfirm (returns " +
			"once the broker acked).",
		Metrics:    metrics,
		Contenders: pick(Raw, Warren),
		Run: run(func(ctx context.Context, who string) (loop, int) {
			if who == Raw {
				return f.raw.waitEach, 1
			}
			return f.warren.waitEach, 1
		}),
	})
	add(&bench.Case{
		Name: fmt.Sprintf("confirms/window-%d", opts.Window),
		Doc: fmt.Sprintf("One goroutine, one channel: publish %d messages, then wait for all %d confirms, repeat. "+
			"raw: PublishWithDeferredConfirm, then DeferredConfirmation.Wait. warren: Channel.PublishDeferred, "+
			"then Confirmation.Wait.", opts.Window, opts.Window),
		Metrics:    metrics,
		Contenders: pick(Raw, Warren),
		Run: run(func(ctx context.Context, who string) (loop, int) {
			if who == Raw {
				return f.raw.window, 1
			}
			return f.warren.window, 1
		}),
	})
	pubCase := fmt.Sprintf("confirms/publisher-%d", opts.Goroutines)
	add(&bench.Case{
		Name: pubCase,
		Doc: fmt.Sprintf("%d goroutines share one warren Publisher, each calling Publisher.Publish in a loop; a call "+
			"returns once its message is confirmed, so at most %d messages are unconfirmed at a time. %s: the "+
			"Publisher of PublisherOptions{} (defaults: up to 4 channels filled in order, window 256); %s: the same with Channels set to "+
			"the number in the name. raw (baseline): amqp091-go's best hand-written idiom, the window-%d loop "+
			"above, one goroutine on one channel.",
			opts.Goroutines, opts.Goroutines, Warren, joinNames(pubNames[1:]), opts.Window),
		Metrics:    metrics,
		Contenders: pick(append([]string{Raw}, pubNames...)...),
		Run: run(func(ctx context.Context, who string) (loop, int) {
			if who == Raw {
				return f.raw.window, 1
			}
			return f.warren.publisherLoop(who), opts.Goroutines
		}),
	})
	if len(s.Cases) == 0 {
		_ = f.close(ctx)
		return nil, errors.New("no confirms case runs the selected contenders")
	}
	if slices.Contains(selected, Raw) && slices.Contains(selected, Warren) {
		s.Targets = func(r *bench.Report) []bench.Target { return targets(r, pubCase) }
	}
	return s, nil
}

func joinNames(names []string) string {
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1]
}

// targets checks the Publisher shared by many goroutines against the best
// hand-written idiom (case pubCase).
func targets(r *bench.Report, pubCase string) []bench.Target {
	ratio := r.Ratio(pubCase, Warren, Raw, mRate.Key)
	return []bench.Target{{
		Goal: pubCase + ": warren's Publisher (defaults) moves at least as many msg/s as raw amqp091-go's window idiom",
		Got: fmt.Sprintf("warren/raw %.2f× (%s vs %s)", ratio,
			bench.Format(bench.Rate, r.Median(pubCase, Warren, mRate.Key)),
			bench.Format(bench.Rate, r.Median(pubCase, Raw, mRate.Key))),
		Met: ratio >= 1,
	}}
}
