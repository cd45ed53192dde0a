package integration

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

func TestChannelIDsAreSequentialAndMatchTheBrokersView(t *testing.T) {
	b := brokertest.Need(t, broker)
	needPrivate(t, b)
	ctx := testCtx(t, time.Minute)
	name := uniqueName(t, "warren-it-")
	c := dial(t, b.URL, warren.WithName(name))

	chans := make(map[uint16]warren.Channel)
	var ids []int
	for i := 1; i <= 5; i++ {
		ch := openChannel(t, ctx, c)
		if got := ch.ID(); got != uint16(i) {
			t.Fatalf("channel %d: got ID %d, want %d", i, got, i)
		}
		chans[ch.ID()] = ch
		ids = append(ids, int(ch.ID()))
	}
	pid := mustConnectionPid(t, b, name)
	agree := func(want []int) func() string {
		return func() string {
			if got := brokerChannelNumbers(t, b, pid); !slices.Equal(got, want) {
				return fmt.Sprintf("broker lists channel numbers %v, want warren's IDs %v", got, want)
			}
			return ""
		}
	}
	eventually(t, ctx, "broker's view of the first 5 channels", agree(ids))

	if err := chans[2].Close(ctx); err != nil {
		t.Fatalf("Close channel 2: got %v, want nil", err)
	}
	ch := openChannel(t, ctx, c)
	// amqp091-go's allocator moves on from the last id it handed out and
	// reuses a released id only after wrapping around (DESIGN.md item 8).
	if got := ch.ID(); got != 6 {
		t.Errorf("channel opened after closing channel 2: got ID %d, want 6", got)
	}
	ids = []int{1, 3, 4, 5, int(ch.ID())}
	slices.Sort(ids)
	eventually(t, ctx, "broker's view after closing channel 2 and opening another", agree(ids))
	if got := c.OpenChannels(); got != 5 {
		t.Errorf("OpenChannels: got %d, want 5", got)
	}
}

func TestChannelMaxRefusesOneChannelTooManyAndLeavesTheConnectionWorking(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL, warren.WithChannelMax(3))
	if got := c.ChannelMax(); got != 3 {
		t.Fatalf("ChannelMax: got %d, want 3", got)
	}
	var chans []warren.Channel
	for range 3 {
		chans = append(chans, openChannel(t, ctx, c))
	}

	extra, err := c.Channel(ctx)
	if err == nil {
		extra.Close(ctx)
		t.Fatalf("4th Channel with channel_max 3: got channel %d and nil error, want ErrChannelMax", extra.ID())
	}
	if !errors.Is(err, warren.ErrChannelMax) {
		t.Errorf("4th Channel: errors.Is(err, ErrChannelMax) = false, want true; err = %v", err)
	}
	var cme *warren.ChannelMaxError
	if !errors.As(err, &cme) {
		t.Errorf("4th Channel: got %T (%v), want *warren.ChannelMaxError", err, err)
	} else if cme.Max != 3 {
		t.Errorf("4th Channel: got ChannelMaxError.Max %d, want 3", cme.Max)
	}

	for _, ch := range chans {
		if _, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true, AutoDelete: true}); err != nil {
			t.Errorf("QueueDeclare on channel %d after the refused open: got %v, want nil", ch.ID(), err)
		}
	}
	if err := c.Err(); err != nil {
		t.Errorf("client.Err after the refused open: got %v, want nil", err)
	}
	if got := c.OpenChannels(); got != 3 {
		t.Errorf("OpenChannels: got %d, want 3", got)
	}
}

func TestConcurrentUseOfOneChannelIsReportedAndNeverGarblesTheWire(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, time.Minute)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, ch, q)

	const runFor = 1500 * time.Millisecond
	var (
		published  atomic.Int64 // publishes that returned nil
		declared   atomic.Int64 // declares that returned nil
		concurrent atomic.Int64 // calls refused with ErrConcurrentUse
		calls      atomic.Int64
	)
	stop := time.Now().Add(runFor)
	// worker runs op until stop and returns its first error other than
	// ErrConcurrentUse.
	worker := func(op func() error, onOK func()) error {
		for time.Now().Before(stop) && ctx.Err() == nil {
			calls.Add(1)
			err := op()
			switch {
			case err == nil:
				if onOK != nil {
					onOK()
				}
			case errors.Is(err, warren.ErrConcurrentUse):
				concurrent.Add(1)
			default:
				return err
			}
			// Let the other goroutine in even with GOMAXPROCS=1, so that
			// both operations really interleave.
			runtime.Gosched()
		}
		return nil
	}
	body := []byte("concurrent")
	var g errgroup.Group
	g.Go(func() error {
		return worker(func() error {
			return ch.Publish(ctx, "", q, warren.Publishing{Body: body})
		}, func() { published.Add(1) })
	})
	g.Go(func() error {
		return worker(func() error {
			_, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true})
			return err
		}, func() { declared.Add(1) })
	})
	if err := g.Wait(); err != nil {
		t.Errorf("concurrent call: got %v, want nil or ErrConcurrentUse", err)
	}
	t.Logf("%d calls: %d publishes and %d declares succeeded, %d refused with ErrConcurrentUse",
		calls.Load(), published.Load(), declared.Load(), concurrent.Load())
	if concurrent.Load() == 0 {
		t.Errorf("ErrConcurrentUse: got 0 in %d overlapping calls, want at least 1", calls.Load())
	}
	if published.Load() == 0 || declared.Load() == 0 {
		t.Errorf("successful calls: got %d publishes and %d declares, want both above 0 (the operations must really interleave)",
			published.Load(), declared.Load())
	}
	if err := c.Err(); err != nil {
		t.Fatalf("client.Err after concurrent use: got %v, want nil", err)
	}
	if err := ch.Err(); err != nil {
		t.Fatalf("channel.Err after concurrent use: got %v, want nil", err)
	}
	// Every publish that returned nil reached the queue intact: nothing was
	// garbled or lost on the wire.
	want := int(published.Load())
	eventually(t, ctx, "queue holds every successful publish", func() string {
		qs, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true})
		if err != nil {
			t.Fatalf("QueueDeclare passive after concurrent use: got %v, want nil", err)
		}
		if qs.Messages != want {
			return fmt.Sprintf("queue holds %d messages, want %d", qs.Messages, want)
		}
		return ""
	})
	if err := c.Err(); err != nil {
		t.Errorf("client.Err at the end: got %v, want nil", err)
	}
}
