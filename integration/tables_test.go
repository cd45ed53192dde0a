package integration

import (
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

// What warren sends must reach the broker unchanged, and what the broker
// would answer by closing the connection must be refused first: field
// tables through RabbitMQ and back, and the inputs of issue 17.

// stillOpen checks that a refused call left the channel and the connection
// as they were: an RPC on the same channel works and neither has a cause.
func stillOpen(t *testing.T, ctx context.Context, c *warren.Client, ch warren.Channel, q, what string) {
	t.Helper()
	if _, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true}); err != nil {
		t.Fatalf("after %s: QueueDeclare on the same channel: got %v, want nil", what, err)
	}
	if err := ch.Err(); err != nil {
		t.Fatalf("after %s: channel.Err: got %v, want nil", what, err)
	}
	if err := c.Err(); err != nil {
		t.Fatalf("after %s: client.Err: got %v, want nil", what, err)
	}
}

// deep returns v nested n tables and arrays below the top-level table.
func deep(v any, n int) any {
	for i := 0; i < n; i++ {
		if i%2 == 0 {
			v = warren.Table{"n": v}
		} else {
			v = []any{v}
		}
	}
	return v
}

func TestHeaderOfEveryTypeRoundTripsThroughTheBroker(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, ch, q)
	pub, err := c.NewPublisher(ctx, warren.PublisherOptions{Channels: 1})
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	defer pub.Close(ctx)

	many := make(warren.Table, 8192) // the most an amqp091-go reader takes
	for i := range 8192 {
		many[strconv.Itoa(i)] = int32(i)
	}
	ts := time.Unix(1700000000, 500_000_000)
	// What an amqp091-go reader gets back for each Go value, type included.
	for _, tc := range []struct {
		name       string
		sent, want any
	}{
		{"bool", true, true},
		{"int8", int8(-5), int8(-5)},
		{"uint8", uint8(200), uint8(200)},
		{"int16", int16(-300), int16(-300)},
		{"uint16", uint16(60000), uint16(60000)},
		{"int32", int32(math.MinInt32), int32(math.MinInt32)},
		{"uint32", uint32(math.MaxUint32), uint32(math.MaxUint32)},
		{"int64", int64(math.MinInt64), int64(math.MinInt64)},
		{"int small", 5, int32(5)},
		{"int max int32", math.MaxInt32, int32(math.MaxInt32)},
		{"int min int32", math.MinInt32, int32(math.MinInt32)},
		{"int beyond int32", 5_000_000_000, int64(5_000_000_000)}, // issue 17, defect 7: read 705032704
		{"int max int32 + 1", math.MaxInt32 + 1, int64(math.MaxInt32 + 1)},
		{"int far below", -1 << 40, int64(-1 << 40)}, // issue 17, defect 7: read 0
		{"float32", float32(1.5), float32(1.5)},
		{"float32 max", float32(math.MaxFloat32), float32(math.MaxFloat32)},
		{"float64", 2.25, 2.25},
		{"float64 smallest", math.SmallestNonzeroFloat64, math.SmallestNonzeroFloat64},
		{"string", "héllo", "héllo"},
		{"string not UTF-8", "v\xff\xfe", "v\xff\xfe"}, // a long string: bytes, unchanged
		{"[]byte", []byte{0, 1, 0xff}, []byte{0, 1, 0xff}},
		{"Decimal", warren.Decimal{Scale: 2, Value: -12345}, warren.Decimal{Scale: 2, Value: -12345}},
		{"Decimal extremes", warren.Decimal{Scale: 255, Value: math.MinInt32}, warren.Decimal{Scale: 255, Value: math.MinInt32}},
		{"time", ts, time.Unix(1700000000, 0)}, // whole seconds
		{"nil", nil, nil},
		{"Table", warren.Table{"a": int32(1), "b": warren.Table{"c": "d", "big": 1 << 40}},
			warren.Table{"a": int32(1), "b": warren.Table{"c": "d", "big": int64(1 << 40)}}},
		{"[]any", []any{int32(1), "x", true, nil, 1 << 40, 7, warren.Table{"k": 5}},
			[]any{int32(1), "x", true, nil, int64(1 << 40), int32(7), warren.Table{"k": int32(5)}}},
		{"empty []any", []any{}, []any(nil)}, // read back nil
		{"32 deep", deep(int32(1), 32), deep(int32(1), 32)},
		{"8192 entries", many, many},
	} {
		for _, path := range []struct {
			name string
			pub  func(warren.Publishing) error
		}{
			{"Channel.Publish", func(p warren.Publishing) error { return ch.Publish(ctx, "", q, p) }},
			{"Publisher.Publish", func(p warren.Publishing) error { return pub.Publish(ctx, "", q, p) }},
		} {
			headers := warren.Table{"v": tc.sent}
			if err := path.pub(warren.Publishing{Headers: headers, Body: []byte(tc.name)}); err != nil {
				t.Errorf("%s via %s: %v", tc.name, path.name, err)
				continue
			}
			d := getOne(t, ctx, ch, q)
			if err := d.Ack(ctx); err != nil {
				t.Fatalf("Ack: %v", err)
			}
			if string(d.Body) != tc.name {
				t.Fatalf("%s via %s: got message %q", tc.name, path.name, d.Body)
			}
			got, ok := d.Headers["v"]
			if !ok {
				t.Errorf("%s via %s: header missing: %v", tc.name, path.name, d.Headers)
				continue
			}
			if want, isTime := tc.want.(time.Time); isTime {
				gt, ok := got.(time.Time)
				if !ok || !gt.Equal(want) {
					t.Errorf("%s via %s: got %#v (%T), want %v", tc.name, path.name, got, got, want)
				}
				continue
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("%s via %s: got %#v (%T), want %#v (%T)", tc.name, path.name, got, got, tc.want, tc.want)
			}
			if !reflect.DeepEqual(headers, warren.Table{"v": tc.sent}) {
				t.Errorf("%s via %s: the caller's headers were changed to %#v", tc.name, path.name, headers)
			}
		}
	}
	roundTrip(t, ctx, c)
}

// FIXED BUG (issue 17, defect 7): a Go int outside the int32 range was
// sent as 32 bits; the broker acked and every consumer read 705032704 for
// 5_000_000_000 and 0 for -1<<40.
func TestWideIntHeaderReachesAConsumerUnchanged(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, ch, q)
	if err := ch.SetMode(ctx, warren.ModeConfirm); err != nil {
		t.Fatal(err)
	}
	headers := warren.Table{"n": 5_000_000_000, "m": -1 << 40}
	if err := ch.Publish(ctx, "", q, warren.Publishing{Headers: headers}); err != nil {
		t.Fatalf("Publish: got %v, want an ack", err)
	}
	got := make(chan warren.Table, 1)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- c.Consume(cctx, q, func(_ context.Context, d *warren.Delivery) error {
			select {
			case got <- d.Headers:
			default:
			}
			return nil
		}, warren.ConsumeOptions{})
	}()
	select {
	case h := <-got:
		if h["n"] != int64(5_000_000_000) || h["m"] != int64(-1<<40) {
			t.Errorf("the consumer read n=%#v m=%#v, want int64(5000000000) and int64(-1099511627776)", h["n"], h["m"])
		}
	case err := <-done:
		t.Fatalf("Consume ended: %v", err)
	case <-ctx.Done():
		t.Fatal("no delivery")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Consume: got %v, want context.Canceled", err)
	}
	if headers["n"] != 5_000_000_000 || headers["m"] != -1<<40 {
		t.Errorf("the caller's headers were changed to %#v", headers)
	}
}

// FIXED BUG (issue 17, defect 6): QueueDeclare(ctx, "q-\xff\xfe", ...)
// went out, and RabbitMQ closed the whole connection (501 FRAME_ERROR
// "Malformed UTF-8 in shortstr"). Every short string of every call is
// refused before anything is sent; the connection stays open.
func TestShortStringsThatAreNotUTF8AreRefusedAndTheConnectionStaysOpen(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, ch, q)
	pub, err := c.NewPublisher(ctx, warren.PublisherOptions{Channels: 1})
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	defer pub.Close(ctx)
	const bad = "q-\xff\xfe"
	publish := func(f func(m *warren.Message)) error {
		m := warren.Message{Key: q, Publishing: warren.Publishing{Body: []byte("refused")}}
		f(&m)
		return ch.PublishMessage(ctx, m)
	}
	consume := func(queue string, opts warren.ConsumeOptions) error {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return c.Consume(cctx, queue, func(context.Context, *warren.Delivery) error { return nil }, opts)
	}
	for _, tc := range []struct {
		what string
		do   func() error
	}{
		{"QueueDeclare name", func() error { _, err := ch.QueueDeclare(ctx, bad, warren.QueueOptions{Durable: true}); return err }},
		{"QueueDeclare passive name", func() error {
			_, err := ch.QueueDeclare(ctx, bad, warren.QueueOptions{Passive: true})
			return err
		}},
		{"QueueDeclare argument key", func() error {
			_, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Durable: true, Args: warren.Table{bad: int32(1)}})
			return err
		}},
		{"QueueDeclare nested argument key", func() error {
			_, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Durable: true, Args: warren.Table{"x-n": warren.Table{bad: 1}}})
			return err
		}},
		{"QueueDeclare DeadLetterExchange", func() error {
			_, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Durable: true, DeadLetterExchange: bad})
			return err
		}},
		{"QueueDelete", func() error { _, err := ch.QueueDelete(ctx, bad, warren.QueueDeleteOptions{}); return err }},
		{"QueuePurge", func() error { _, err := ch.QueuePurge(ctx, bad); return err }},
		{"QueueBind queue", func() error { return ch.QueueBind(ctx, bad, "k", "amq.direct", nil) }},
		{"QueueBind key", func() error { return ch.QueueBind(ctx, q, bad, "amq.direct", nil) }},
		{"QueueBind exchange", func() error { return ch.QueueBind(ctx, q, "k", bad, nil) }},
		{"QueueBind argument key", func() error { return ch.QueueBind(ctx, q, "k", "amq.direct", warren.Table{bad: 1}) }},
		{"QueueUnbind key", func() error { return ch.QueueUnbind(ctx, q, bad, "amq.direct", nil) }},
		{"ExchangeDeclare name", func() error {
			return ch.ExchangeDeclare(ctx, bad, warren.ExchangeDirect, warren.ExchangeOptions{AutoDelete: true})
		}},
		{"ExchangeDeclare type", func() error {
			return ch.ExchangeDeclare(ctx, uniqueName(t, "x-"), "di\xffrect", warren.ExchangeOptions{AutoDelete: true})
		}},
		{"ExchangeDeclare argument key", func() error {
			return ch.ExchangeDeclare(ctx, uniqueName(t, "x-"), warren.ExchangeDirect, warren.ExchangeOptions{AutoDelete: true, Args: warren.Table{bad: "v"}})
		}},
		{"ExchangeDelete", func() error { return ch.ExchangeDelete(ctx, bad, warren.ExchangeDeleteOptions{}) }},
		{"ExchangeBind source", func() error { return ch.ExchangeBind(ctx, "amq.fanout", "k", bad, nil) }},
		{"ExchangeUnbind destination", func() error { return ch.ExchangeUnbind(ctx, bad, "k", "amq.direct", nil) }},
		{"Get", func() error { _, _, err := ch.Get(ctx, bad, warren.GetOptions{}); return err }},
		{"Consume queue", func() error { return consume(bad, warren.ConsumeOptions{}) }},
		{"Consume tag", func() error { return consume(q, warren.ConsumeOptions{Tag: bad}) }},
		{"Consume argument key", func() error { return consume(q, warren.ConsumeOptions{Args: warren.Table{bad: int32(1)}}) }},
		{"Publish exchange", func() error { return publish(func(m *warren.Message) { m.Exchange = bad }) }},
		{"Publish routing key", func() error { return publish(func(m *warren.Message) { m.Key = bad }) }},
		{"Publish content type", func() error { return publish(func(m *warren.Message) { m.ContentType = bad }) }},
		{"Publish content encoding", func() error { return publish(func(m *warren.Message) { m.ContentEncoding = bad }) }},
		{"Publish correlation id", func() error { return publish(func(m *warren.Message) { m.CorrelationId = bad }) }},
		{"Publish reply-to", func() error { return publish(func(m *warren.Message) { m.ReplyTo = bad }) }},
		{"Publish expiration", func() error { return publish(func(m *warren.Message) { m.Expiration = "1\xff" }) }},
		{"Publish message id", func() error { return publish(func(m *warren.Message) { m.MessageId = bad }) }},
		{"Publish type", func() error { return publish(func(m *warren.Message) { m.Type = bad }) }},
		{"Publish user id", func() error { return publish(func(m *warren.Message) { m.UserId = bad }) }},
		{"Publish app id", func() error { return publish(func(m *warren.Message) { m.AppId = bad }) }},
		{"Publish header key", func() error { return publish(func(m *warren.Message) { m.Headers = warren.Table{bad: "v"} }) }},
		{"Publish nested header key", func() error {
			return publish(func(m *warren.Message) { m.Headers = warren.Table{"a": []any{warren.Table{bad: "v"}}} })
		}},
		{"Publisher routing key", func() error { return pub.Publish(ctx, "", bad, warren.Publishing{}) }},
		{"Publisher message id", func() error { return pub.Publish(ctx, "", q, warren.Publishing{MessageId: bad}) }},
		{"Tx publish routing key", func() error {
			return c.Tx(ctx, func(tx *warren.Tx) error { return tx.Publish(ctx, "", bad, warren.Publishing{}) })
		}},
	} {
		err := tc.do()
		wantInvalid(t, tc.what, err)
		if err != nil && strings.Contains(err.Error(), "\xff") {
			t.Errorf("%s: the error %q carries the raw bytes", tc.what, err)
		}
		stillOpen(t, ctx, c, ch, q, tc.what)
	}
	// Nothing refused reached the queue.
	if d, ok, err := ch.Get(ctx, q, warren.GetOptions{AutoAck: true}); err != nil || ok {
		body := ""
		if d != nil {
			body = string(d.Body)
		}
		t.Errorf("Get: got ok=%v body=%q err=%v, want an empty queue", ok, body, err)
	}
	roundTrip(t, ctx, c)
}

// FIXED BUG (issue 17, defect 8): a NaN or infinite float in a table went
// out, and RabbitMQ closed the whole connection (541 INTERNAL_ERROR; for
// queue.declare arguments it reset the socket).
func TestNonFiniteFloatsAreRefusedAndTheConnectionStaysOpen(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, ch, q)
	for _, v := range []any{math.NaN(), math.Inf(1), math.Inf(-1), float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))} {
		for _, tbl := range []warren.Table{{"f": v}, {"a": []any{1.5, v}}, {"n": warren.Table{"m": warren.Table{"f": v}}}} {
			what := func(call string) string { return fmt.Sprintf("%s with %v", call, tbl) }
			wantInvalid(t, what("Publish"), ch.Publish(ctx, "", q, warren.Publishing{Headers: tbl}))
			stillOpen(t, ctx, c, ch, q, what("Publish"))
			_, err := ch.QueueDeclare(ctx, uniqueName(t, ""), warren.QueueOptions{Exclusive: true, Args: tbl})
			wantInvalid(t, what("QueueDeclare"), err)
			stillOpen(t, ctx, c, ch, q, what("QueueDeclare"))
			wantInvalid(t, what("QueueBind"), ch.QueueBind(ctx, q, "k", "amq.headers", tbl))
			stillOpen(t, ctx, c, ch, q, what("QueueBind"))
		}
	}
	if d, ok, err := ch.Get(ctx, q, warren.GetOptions{AutoAck: true}); err != nil || ok {
		t.Errorf("Get: got ok=%v err=%v (%v), want an empty queue", ok, err, d)
	}
	roundTrip(t, ctx, c)
}

// Values RabbitMQ would take and then misread, or answer by closing the
// channel or the connection, are refused; the connection stays open.
func TestOtherInputsThatCostTheConnectionOrCorruptAreRefused(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, ch, q)
	for _, tc := range []struct {
		what string
		do   func() error
	}{
		// 503 COMMAND_INVALID, the connection closes.
		{"ExchangeDeclare of type Direct", func() error {
			return ch.ExchangeDeclare(ctx, uniqueName(t, "x-"), "Direct", warren.ExchangeOptions{AutoDelete: true})
		}},
		{"ExchangeDeclare of type \"\"", func() error {
			return ch.ExchangeDeclare(ctx, uniqueName(t, "x-"), "", warren.ExchangeOptions{AutoDelete: true})
		}},
		// 406 PRECONDITION_FAILED, the channel closes.
		{"Publish with Expiration abc", func() error { return ch.Publish(ctx, "", q, warren.Publishing{Expiration: "abc"}) }},
		{"Publish with Expiration -1", func() error { return ch.Publish(ctx, "", q, warren.Publishing{Expiration: "-1"}) }},
		{"Publish with Expiration 1.5", func() error { return ch.Publish(ctx, "", q, warren.Publishing{Expiration: "1.5"}) }},
		// Taken, and read by every other client billions of years ahead.
		{"Publish with a Timestamp before 1970", func() error {
			return ch.Publish(ctx, "", q, warren.Publishing{Timestamp: time.Unix(-100, 0)})
		}},
		{"Publish with a header time before 1970", func() error {
			return ch.Publish(ctx, "", q, warren.Publishing{Headers: warren.Table{"t": time.Unix(-100, 0)}})
		}},
		// amqp091-go cannot encode them (it would tear the connection down).
		{"Publish with a uint64 header", func() error {
			return ch.Publish(ctx, "", q, warren.Publishing{Headers: warren.Table{"u": uint64(1)}})
		}},
		{"Publish with a map[string]any header", func() error {
			return ch.Publish(ctx, "", q, warren.Publishing{Headers: warren.Table{"m": map[string]any{"a": 1}}})
		}},
		// Taken by RabbitMQ, then every amqp091-go consumer of the message
		// loses its connection.
		{"Publish with headers nested 33 deep", func() error {
			return ch.Publish(ctx, "", q, warren.Publishing{Headers: warren.Table{"d": deep(int32(1), 33)}})
		}},
		// 501 FRAME_ERROR, the connection closes.
		{"Publish with headers over frame_max", func() error {
			return ch.Publish(ctx, "", q, warren.Publishing{Headers: warren.Table{"p": strings.Repeat("p", 200_000)}})
		}},
		{"QueueDeclare with arguments over frame_max", func() error {
			_, err := ch.QueueDeclare(ctx, uniqueName(t, ""), warren.QueueOptions{Exclusive: true, Args: warren.Table{"x-p": strings.Repeat("p", 200_000)}})
			return err
		}},
	} {
		wantInvalid(t, tc.what, tc.do())
		stillOpen(t, ctx, c, ch, q, tc.what)
	}
	if d, ok, err := ch.Get(ctx, q, warren.GetOptions{AutoAck: true}); err != nil || ok {
		t.Errorf("Get: got ok=%v err=%v (%v), want an empty queue", ok, err, d)
	}
	roundTrip(t, ctx, c)
}

// The largest content header the connection's frame_max allows (131072
// here: a payload of 131064 bytes) is sent and taken by RabbitMQ; one byte
// more is refused.
func TestTheLargestHeaderFrameGoesThroughAndOneByteMoreIsRefused(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL, warren.WithFrameSize(131072))
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, ch, q)
	// Content header payload: class, weight, body size, flags (14), the
	// headers table's length (4), key "pad" (1+3), long string (1+4+n).
	n := 131072 - 8 - 14 - 4 - 4 - 5
	msg := func(n int) warren.Publishing {
		return warren.Publishing{Headers: warren.Table{"pad": strings.Repeat("p", n)}, Body: []byte("big")}
	}
	wantInvalid(t, "a header frame one byte over", ch.Publish(ctx, "", q, msg(n+1)))
	stillOpen(t, ctx, c, ch, q, "a header frame one byte over")
	if err := ch.Publish(ctx, "", q, msg(n)); err != nil {
		t.Fatalf("Publish of the largest header frame: got %v, want nil", err)
	}
	d := getOne(t, ctx, ch, q)
	if s, _ := d.Headers["pad"].(string); len(s) != n || string(d.Body) != "big" {
		t.Errorf("got a %d-byte header and body %q, want %d bytes and \"big\"", len(s), d.Body, n)
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	stillOpen(t, ctx, c, ch, q, "the largest header frame")
}
