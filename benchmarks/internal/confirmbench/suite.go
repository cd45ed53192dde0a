// Package confirmbench compares publishing with publisher confirms through
// warren with the raw amqp091-go idioms and with go-rabbitmq's confirm
// Publisher: waiting for each confirm, a window of deferred confirmations on
// one channel, and many goroutines each publishing and waiting (warren's
// Publisher, go-rabbitmq's Publisher) against the best hand-written
// single-channel idiom.
package confirmbench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/warrenmq/warren/benchmarks/internal/bench"
	"github.com/warrenmq/warren/benchmarks/internal/peers"
)

// Contender names. The publisher-64 case also runs warren's Publisher with a
// fixed channel count, named by PublisherName (warren-1ch, warren-2ch, warren-8ch).
const (
	Raw        = "raw"            // amqp091-go, one confirm channel on its own connection
	Warren     = "warren"         // warren: a confirm Channel, or a Publisher with default options
	GoRabbitMQ = peers.GoRabbitMQ // go-rabbitmq: one Publisher WithPublisherOptionsConfirm
	// Ceiling is raw amqp091-go on several connections with several confirm
	// channels each, a goroutine per channel with a sliding window: the
	// broker's confirm ceiling on this machine, run in the publisher case
	// only.
	Ceiling = "ceiling"
)

// PublisherName is the contender name of a warren Publisher with n channels.
func PublisherName(n int) string { return fmt.Sprintf("warren-%dch", n) }

// Options configure the confirms suite. Zero fields take the defaults noted.
type Options struct {
	// BrokerURL is the RabbitMQ every contender publishes to. Required.
	BrokerURL string
	// Contenders to run (default all: Raw, Warren, GoRabbitMQ, then the
	// Publisher channel variants); a case runs those of them it has.
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
	// CeilingConnections and CeilingChannels shape contender Ceiling:
	// that many connections, each with that many confirm channels, each
	// channel publishing from its own goroutine with a sliding window of
	// Window unconfirmed messages (default 2 × 2, the best of the shapes
	// measured; see DefaultCeilingConnections).
	CeilingConnections, CeilingChannels int
}

// The default shape of contender Ceiling, chosen by measuring (2 shared
// cores, RabbitMQ 3.10.8 on the same machine, 128 B bodies, one queue, 1 s
// passes). The machine was loaded by other work throughout (load average 5
// to 19), so single passes spread ±50 % and more; what follows is all there
// is. First with window's batches of 256 per channel: two warrenbench runs
// per shape, -scenario publisher-64 -contenders raw,warren,ceiling -rounds
// 5 (load 5-8), median msg/s: 2×2 20.7k and 22.0k, 4×4 33.1k and 35.9k, 8×4
// 26.5k and 22.4k; two runs of a throwaway program interleaving the shapes
// in each of 9 rounds (load 8-11), median msg/s (median per-round ratio to
// one channel): 1×1 18.2k and 16.4k, 2×2 20.0k (1.06×) and 19.0k (1.21×),
// 4×4 17.3k (1.05×) and 20.5k (0.94×), 8×4 16.9k (0.90×) and 16.4k
// (0.96×), 4×8 18.2k (1.05×) and 17.8k (1.10×). Then in the full make bench
// run (load 10-20) that 4×4 ceiling fell below one channel (7.7k vs raw's
// 9.9k). Sliding windows of 256 (slidingWindow) instead, interleaved in 7
// rounds (load 15-17), per-round ratio to one channel's batch window (raw's
// idiom): 1×1 sliding 1.84× and 0.75×, 2×1 1.09×, 2×2 1.44× and 1.20×, 4×4
// 1.07× and 1.06× (4×4 batches 0.94×), 8×4 1.03× and 0.97×. So: sliding
// windows, and 2×2, ahead in both sliding runs. On two cores, into one
// queue, the broker is the bound and more channels mostly add broker work
// per message; no shape is far ahead of one channel.
const (
	DefaultCeilingConnections = 2
	DefaultCeilingChannels    = 2
)

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
	if o.CeilingConnections == 0 {
		o.CeilingConnections = DefaultCeilingConnections
	}
	if o.CeilingChannels == 0 {
		o.CeilingChannels = DefaultCeilingChannels
	}
}

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
	sel, err := peers.Select("confirms", opts.Contenders, append(append([]string{Raw, Warren, GoRabbitMQ}, pubNames[1:]...), Ceiling))
	if err != nil {
		return nil, err
	}
	selected := sel.Names
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
	s := &bench.Suite{
		Name: "confirms",
		Doc: fmt.Sprintf("Publishing with publisher confirms, %d-byte transient bodies, to the default exchange into one "+
			"exclusive queue with no consumer, purged after every pass from a separate connection (the purge must "+
			"remove exactly the messages acked, so every message was routed). raw: amqp091-go %s, one confirm "+
			"channel on its own connection. warren: a confirm Channel, or a Publisher, on one Client; every "+
			"channel is opened and put in confirm mode before the rounds. go-rabbitmq %s: one Conn and one "+
			"Publisher made WithPublisherOptionsConfirm (its documented way to get confirmations), publishing with "+
			"PublishWithDeferredConfirmWithContext and waiting with the returned DeferredConfirmation's WaitContext. "+
			"%s Each pass publishes for %v and counts the messages confirmed. %s Calls that take "+
			"a context get the run's cancellable one (signal.NotifyContext), as an application's would.",
			opts.BodySize, bench.ModuleVersion("github.com/rabbitmq/amqp091-go"),
			bench.ModuleVersion("github.com/wagslane/go-rabbitmq"), peers.AmqpxDoc, opts.Duration, bench.MsgMetricsDoc),
		Contenders: selected,
		Baseline:   sel.Baseline,
		Subject:    Warren,
		Peers:      []string{GoRabbitMQ},
		Close:      f.close,
	}
	run := func(fn func(who string) (bench.Loop, int)) func(context.Context, string) (bench.Result, error) {
		return func(ctx context.Context, who string) (bench.Result, error) {
			l, g := fn(who)
			return f.trial(ctx, opts.Duration, g, l)
		}
	}
	// byContender runs the loop of the named contender on one goroutine.
	byContender := func(loops map[string]bench.Loop) func(context.Context, string) (bench.Result, error) {
		return run(func(who string) (bench.Loop, int) { return loops[who], 1 })
	}
	rawWindow := window(opts.Window, f.raw.publish)
	add := func(c *bench.Case) {
		if len(c.Contenders) > 0 {
			c.Metrics = bench.MsgMetrics
			c.NotRun = sel.NotRun
			s.Cases = append(s.Cases, c)
		}
	}
	add(&bench.Case{
		Name: "confirms/wait-each-1",
		Doc: "One goroutine publishes and waits for each confirm. raw: PublishWithDeferredConfirmWithContext, " +
			"then DeferredConfirmation.WaitContext. warren: Channel.Publish on a channel in ModeConfirm (returns " +
			"once the broker acked). go-rabbitmq: Publisher.PublishWithDeferredConfirmWithContext, then WaitContext.",
		Contenders: pick(Raw, Warren, GoRabbitMQ),
		Run: byContender(map[string]bench.Loop{
			Raw: waitEach(f.raw.publish), Warren: f.warren.waitEach, GoRabbitMQ: waitEach(f.goRabbit.publish)}),
	})
	add(&bench.Case{
		Name: fmt.Sprintf("confirms/window-%d", opts.Window),
		Doc: fmt.Sprintf("One goroutine, one channel: publish %d messages, then wait for all %d confirms, repeat. "+
			"raw: PublishWithDeferredConfirmWithContext, then DeferredConfirmation.WaitContext. warren: "+
			"Channel.PublishDeferred, then Confirmation.Wait. go-rabbitmq: PublishWithDeferredConfirmWithContext, "+
			"then WaitContext.",
			opts.Window, opts.Window),
		Contenders: pick(Raw, Warren, GoRabbitMQ),
		Run: byContender(map[string]bench.Loop{
			Raw: rawWindow, Warren: f.warren.window, GoRabbitMQ: window(opts.Window, f.goRabbit.publish)}),
	})
	pubCase := fmt.Sprintf("confirms/publisher-%d", opts.Goroutines)
	add(&bench.Case{
		Name: pubCase,
		Doc: fmt.Sprintf("%d goroutines each publish and wait for the confirm in a loop, so at most %d messages are "+
			"unconfirmed at a time. %s: they share the warren Publisher of PublisherOptions{} (defaults: up to 4 "+
			"channels filled in order, window 256) and call Publisher.Publish; %s: the same with Channels set "+
			"to the number in the name. go-rabbitmq: they share one Publisher (one channel) and call "+
			"PublishWithDeferredConfirmWithContext, then WaitContext. raw (baseline): amqp091-go's best "+
			"hand-written idiom, the window-%d loop above, one goroutine on one channel. %s (not a client idiom: "+
			"the broker's confirm ceiling): raw amqp091-go on %d connections with %d confirm channels each, one "+
			"goroutine per channel keeping a sliding window of %d unconfirmed messages (it waits for the oldest "+
			"confirm before publishing past %d, and for the rest when the pass ends), %d unconfirmed at most; the rows "+
			"raw/%s and %s/%s are the single-channel idiom's and the Publisher's shares of it.",
			opts.Goroutines, opts.Goroutines, Warren, joinNames(pubNames[1:]), opts.Window,
			Ceiling, opts.CeilingConnections, opts.CeilingChannels, opts.Window, opts.Window,
			opts.CeilingConnections*opts.CeilingChannels*opts.Window, Ceiling, Warren, Ceiling),
		Contenders: pick(append(append([]string{Raw, Warren, GoRabbitMQ}, pubNames[1:]...), Ceiling)...),
		Ceiling:    Ceiling,
		Run: run(func(who string) (bench.Loop, int) {
			switch who {
			case Raw:
				return rawWindow, 1
			case GoRabbitMQ:
				return waitEach(f.goRabbit.publish), opts.Goroutines
			case Ceiling:
				return f.ceiling.loop(opts.Window), f.ceiling.goroutines()
			}
			return f.warren.publisherLoop(who), opts.Goroutines
		}),
	})
	if len(s.Cases) == 0 {
		_ = f.close(ctx)
		return nil, errors.New("no confirms case runs the selected contenders")
	}
	if sel.Has(Raw, Warren) {
		s.Targets = func(r *bench.Report) []bench.Target { return targets(r, s, pubCase) }
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
// hand-written idiom and against go-rabbitmq's Publisher (case pubCase),
// and warren's client CPU per message against raw's in every case.
func targets(r *bench.Report, s *bench.Suite, pubCase string) []bench.Target {
	ts := []bench.Target{
		bench.RatioTarget(r, pubCase+": warren's Publisher (defaults) moves ≥ 1.00× the msg/s of raw amqp091-go's window idiom",
			pubCase, Warren, Raw, bench.MsgRate, 1),
		bench.RatioTarget(r, pubCase+": warren's Publisher (defaults) moves ≥ 1.05× the msg/s of raw amqp091-go's window idiom (issue 22)",
			pubCase, Warren, Raw, bench.MsgRate, 1.05),
	}
	if slices.Contains(s.Contenders, GoRabbitMQ) {
		ts = append(ts, bench.RatioTarget(r, pubCase+": warren's Publisher (defaults) ahead of go-rabbitmq's Publisher (≥ 1.00×)",
			pubCase, Warren, GoRabbitMQ, bench.MsgRate, 1))
	}
	return append(ts, bench.CPUTargets(r, s, Warren, Raw, 1.15)...)
}
