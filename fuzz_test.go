package warren_test

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/warrenmq/warren"
	fb "github.com/warrenmq/warren/internal/fakebroker"
)

// What the client has in flight when the hostile bytes arrive, and how the
// broker goes on; the fuzzer picks the bits of mode.
const (
	hostileConfirm    = 1 << iota // a confirm channel with a mandatory publish awaiting its answer
	hostileDeclare                // a queue.declare awaiting its reply
	hostileEOF                    // the broker closes the socket after the bytes (else it answers what follows)
	hostileChannelMax             // channel_max 1: the next channel reuses id 1
	hostileSmallFrame             // frame_max 4096
)

// Bounds of one round. Every call the client makes is bounded by a ctx; a
// round still running after hostileHang has hung.
const (
	hostileWait  = 20 * time.Millisecond  // each call once the bytes are sent
	hostileClose = 250 * time.Millisecond // Client.Close, and WithCloseTimeout
	hostileHang  = 15 * time.Second
)

// FuzzClientAgainstHostileBroker lets the fuzzer choose the bytes a broker
// sends once the handshake is done and the client has a channel open (and,
// per mode, a publish and an RPC awaiting an answer). Whatever the bytes,
// nothing may panic, every call must return within its bound, Client.Close
// must be bounded, every Confirmation must be resolved to one of its four
// outcomes once Close has returned, and no goroutine may be left behind.
//
// The seeds in testdata run with every `go test`. To fuzz (-timeout 0: go
// test's default 10 m timeout would otherwise end a 10 m run):
//
//	go test -run '^$' -fuzz FuzzClientAgainstHostileBroker -fuzztime 10m -parallel 1 -timeout 0 .
//
// This target found an amqp091-go v1.16.0 bug: a basic.ack or basic.nack
// with multiple set and a huge delivery tag makes confirms.Multiple count up
// to the tag one by one on its reader, holding its lock: the connection is
// wedged and Client.Close hangs. warren's wire guard now drops any confirm
// for a tag never published (Client.Stats().StrayConfirms counts it); the
// reproducer in testdata (ack-multiple-huge-tag) checks that.
func FuzzClientAgainstHostileBroker(f *testing.F) {
	f.Fuzz(func(t *testing.T, mode byte, data []byte) {
		baseline := goleak.IgnoreCurrent() // what earlier rounds left is theirs to answer for
		t.Cleanup(func() { goleak.VerifyNone(t, baseline) })
		hostileRound(t, mode, data)
	})
}

func hostileRound(t *testing.T, mode byte, data []byte) {
	cfg := fb.Config{}
	if mode&hostileChannelMax != 0 {
		cfg.ChannelMax = 1
	}
	if mode&hostileSmallFrame != 0 {
		cfg.FrameMax = 4096
	}
	b := fb.Start(t, cfg, hostileScript(mode, data))
	ctx, cancel := context.WithTimeout(context.Background(), hostileHang)
	defer cancel()
	client, err := warren.Dial(ctx, b.URL(), warren.WithCloseTimeout(hostileClose))
	if err != nil {
		t.Fatalf("Dial: %v", err) // the bytes come after the handshake
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		hostileClient(t, client, mode)
	}()
	select {
	case <-done:
	case <-time.After(hostileHang):
		t.Fatalf("the round hung for %v:\n%s", hostileHang, stacks())
	}
}

// hostileScript answers the client's setup, holds back the answers to the
// publish and the RPC, sends data, and then either closes the socket or
// answers whatever comes.
func hostileScript(mode byte, data []byte) func(*fb.Conn) {
	return func(c *fb.Conn) {
		pending := 1 // channel.open
		if mode&hostileConfirm != 0 {
			pending += 2 // confirm.select, basic.publish
		}
		if mode&hostileDeclare != 0 {
			pending++
		}
		for pending > 0 {
			m, err := c.Next()
			if err != nil {
				return
			}
			switch m.ID {
			case fb.ChannelOpen, fb.ConfirmSelect:
				pending--
			case fb.BasicPublish, fb.QueueDeclare:
				pending--
				continue // unanswered
			}
			if c.Answer(m) != nil {
				return
			}
		}
		if c.SendRaw(data) != nil || mode&hostileEOF != 0 {
			return
		}
		_ = c.Serve()
	}
}

// hostileClient plays the client's side of a round and checks what must hold
// whatever the broker sent.
func hostileClient(t *testing.T, client *warren.Client, mode byte) {
	wait := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), hostileWait)
	}
	var conf *warren.Confirmation
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	ch, err := client.Channel(ctx)
	if err == nil && mode&hostileConfirm != 0 {
		if err = ch.SetMode(ctx, warren.ModeConfirm); err == nil {
			conf, err = ch.PublishDeferred(ctx, warren.Message{Exchange: "ex", Key: "k", Mandatory: true,
				Publishing: warren.Publishing{Body: []byte("hostile")}})
		}
	}
	cancel()
	if err == nil && mode&hostileDeclare != 0 {
		ctx, cancel := wait()
		_, _ = ch.QueueDeclare(ctx, "q", warren.QueueOptions{Durable: true}) // the broker sends its bytes meanwhile
		cancel()
	}
	if conf != nil {
		ctx, cancel := wait()
		_ = conf.Wait(ctx)
		cancel()
	}
	if err == nil && client.Err() == nil {
		// Whatever the bytes did, a connection that is still up must work.
		ctx, cancel := wait()
		if ch2, err := client.Channel(ctx); err == nil {
			_, _ = ch2.QueueDeclare(ctx, "q2", warren.QueueOptions{Durable: true})
			_ = ch2.Close(ctx)
		}
		_ = ch.Close(ctx)
		cancel()
	}

	start := time.Now()
	ctx, cancel = context.WithTimeout(context.Background(), hostileClose)
	_ = client.Close(ctx)
	cancel()
	if took := time.Since(start); took > hostileClose+time.Second {
		t.Errorf("Client.Close took %v, bound %v", took, hostileClose)
	}
	select {
	case <-client.Done():
	default:
		t.Errorf("Client.Done not closed after Close")
	}
	if client.Err() == nil {
		t.Errorf("client.Err() = nil after Close")
	}
	if conf == nil {
		return
	}
	select {
	case <-conf.Done():
	default:
		t.Fatalf("publish %d unresolved after Client.Close", conf.DeliveryTag())
	}
	var (
		ne *warren.NackedError
		ue *warren.UnroutableError
		oe *warren.OutcomeUnknownError
	)
	if err := conf.Wait(context.Background()); err != nil && !errors.As(err, &ne) && !errors.As(err, &ue) && !errors.As(err, &oe) {
		t.Errorf("publish resolved to %v (%T), not one of the four outcomes", err, err)
	}
}

// stacks returns every goroutine's stack, for hang reports.
func stacks() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}
