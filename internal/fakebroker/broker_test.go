package fakebroker_test

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	fb "github.com/warrenmq/warren/internal/fakebroker"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestArgsRoundTripThroughArgReader(t *testing.T) {
	table := map[string]any{
		"bool": true, "str": "s", "long": int64(-7), "int": int32(9), "bytes": []byte{1, 2},
		"nested": map[string]any{"x": "y"},
	}
	b := new(fb.Args).Octet(1).Short(2).Long(3).LongLong(4).ShortStr("five").LongStr("six").
		Bits(true, false, true).Table(table).Bytes()
	r := fb.NewArgReader(b)
	if r.Octet() != 1 || r.Short() != 2 || r.Long() != 3 || r.LongLong() != 4 || r.ShortStr() != "five" || r.LongStr() != "six" {
		t.Fatalf("scalars did not round-trip: %v", r.Err())
	}
	if !r.Bit() || r.Bit() || !r.Bit() {
		t.Fatalf("bits did not round-trip")
	}
	got := r.Table()
	if err := r.Err(); err != nil || len(r.Rest()) != 0 {
		t.Fatalf("table: err %v, %d bytes left", err, len(r.Rest()))
	}
	if !reflect.DeepEqual(got, table) {
		t.Fatalf("table: got %v, want %v", got, table)
	}
	if r.Octet(); !errors.Is(r.Err(), fb.ErrShort) {
		t.Fatalf("reading past the end: got %v, want ErrShort", r.Err())
	}
}

func TestReadFrameChecksTheEndOctetAndTheSize(t *testing.T) {
	f := fb.MethodFrame(3, fb.ChannelOpen, new(fb.Args).ShortStr("").Bytes())
	got, err := fb.ReadFrame(bytes.NewReader(f.Encode()), 1024)
	if err != nil || got.Type != fb.FrameMethod || got.Channel != 3 || !bytes.Equal(got.Payload, f.Payload) {
		t.Fatalf("ReadFrame: got %+v, %v; want %+v", got, err, f)
	}
	bad := f.Encode()
	bad[len(bad)-1] = 0
	if _, err := fb.ReadFrame(bytes.NewReader(bad), 1024); !errors.Is(err, fb.ErrFrameEnd) {
		t.Fatalf("bad end octet: got %v, want ErrFrameEnd", err)
	}
	if _, err := fb.ReadFrame(bytes.NewReader(f.Encode()), 2); err == nil {
		t.Fatalf("oversized frame: got nil error")
	}
}

// The handshake, Serve and the publish bookkeeping against amqp091-go
// itself, independently of warren.
func TestServeAgreesWithAmqp091Go(t *testing.T) {
	var tuned [3]uint64
	var headers map[string]any
	b := fb.Start(t, fb.Config{ChannelMax: 7, FrameMax: 8192, Heartbeat: 3}, func(c *fb.Conn) {
		tuned = [3]uint64{uint64(c.TunedChannelMax), uint64(c.TunedFrameMax), uint64(c.TunedHeartbeat)}
		for {
			m, err := c.Next()
			if err != nil {
				return
			}
			if m.ID == fb.BasicPublish {
				headers, _ = m.Headers()
				if m.Tag != 1 || string(m.Body) != "hello" {
					t.Errorf("publish: tag %d body %q, want 1 and hello", m.Tag, m.Body)
				}
			}
			if c.Answer(m) != nil {
				return
			}
		}
	})
	conn, err := amqp.DialConfig(b.URL(), amqp.Config{Heartbeat: 10 * time.Second})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("Channel: %v", err)
	}
	if q, err := ch.QueueDeclare("", false, false, false, false, nil); err != nil || q.Name != "amq.gen-fake" {
		t.Fatalf("QueueDeclare: %v, %v", q, err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("Confirm: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dc, err := ch.PublishWithDeferredConfirm("", "q", false, false, amqp.Publishing{Headers: amqp.Table{"k": int64(5)}, Body: []byte("hello")})
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if ok, err := dc.WaitContext(ctx); !ok || err != nil {
		t.Fatalf("confirm: acked %v, %v; want an ack", ok, err)
	}
	if err := ch.Close(); err != nil {
		t.Fatalf("channel Close: %v", err)
	}
	if err := conn.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	b.Close()
	if tuned != [3]uint64{7, 8192, 3} {
		t.Errorf("tune-ok: got channel_max, frame_max, heartbeat %v; want [7 8192 3]", tuned)
	}
	if headers["k"] != int64(5) {
		t.Errorf("publish headers: got %v, want k=5", headers)
	}
}
