package warren

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// StreamOffset says where a consumer of a stream queue starts reading: the
// consumer argument x-stream-offset. The zero value sends nothing, so the
// broker's default applies (next: only messages published from now on).
//
// A stream consumer needs manual acknowledgements and a prefetch (the
// broker refuses AutoAck and an unbounded prefetch on a stream): warren
// refuses both before sending when a StreamOffset is set, or x-stream-offset
// is in the consumer's Args.
type StreamOffset struct {
	kind   streamKind
	offset int64
	at     time.Time
	age    time.Duration
}

type streamKind uint8

const (
	streamDefault streamKind = iota
	streamFirst
	streamLast
	streamNext
	streamOffset
	streamTimestamp
	streamAge
)

// StreamFirst starts at the first message the stream still holds.
func StreamFirst() StreamOffset { return StreamOffset{kind: streamFirst} }

// StreamLast starts at the last chunk of messages written to the stream.
func StreamLast() StreamOffset { return StreamOffset{kind: streamLast} }

// StreamNext starts after the last message written: only new messages.
func StreamNext() StreamOffset { return StreamOffset{kind: streamNext} }

// StreamAt starts at the message with this offset (0 is the first message
// ever written; an offset the stream no longer holds starts at its first).
func StreamAt(offset int64) StreamOffset { return StreamOffset{kind: streamOffset, offset: offset} }

// StreamSince starts at the first chunk written at or after t (to the
// second: AMQP timestamps have no finer resolution).
func StreamSince(t time.Time) StreamOffset { return StreamOffset{kind: streamTimestamp, at: t} }

// StreamAge starts at the messages written within d of now (a whole number
// of seconds, sent as the interval "<n>s").
func StreamAge(d time.Duration) StreamOffset { return StreamOffset{kind: streamAge, age: d} }

// IsZero reports whether o is the zero StreamOffset (nothing sent).
func (o StreamOffset) IsZero() bool { return o.kind == streamDefault }

// String returns the offset as RabbitMQ's docs write it.
func (o StreamOffset) String() string {
	switch o.kind {
	case streamFirst:
		return "first"
	case streamLast:
		return "last"
	case streamNext:
		return "next"
	case streamOffset:
		return fmt.Sprintf("offset %d", o.offset)
	case streamTimestamp:
		return "timestamp " + o.at.UTC().Format(time.RFC3339)
	case streamAge:
		return "age " + o.age.String()
	}
	return "default"
}

// value is what x-stream-offset carries, or a reason o cannot be sent.
func (o StreamOffset) value() (any, error) {
	switch o.kind {
	case streamFirst:
		return "first", nil
	case streamLast:
		return "last", nil
	case streamNext:
		return "next", nil
	case streamOffset:
		if o.offset < 0 {
			return nil, fmt.Errorf("offset %d is negative", o.offset)
		}
		return o.offset, nil
	case streamTimestamp:
		if o.at.Before(time.Unix(0, 0)) {
			return nil, errors.New("timestamp before 1970")
		}
		return o.at.Truncate(time.Second), nil
	case streamAge:
		if o.age < time.Second || o.age%time.Second != 0 {
			return nil, fmt.Errorf("age %v: must be a positive whole number of seconds", o.age)
		}
		return fmt.Sprintf("%ds", int64(o.age/time.Second)), nil
	}
	return nil, nil
}

// consumerArgs are the settings of one basic.consume besides the queue,
// shared by every way warren consumes.
type consumerArgs struct {
	Exclusive  bool
	AutoAck    bool
	Priority   int
	Stream     StreamOffset
	AckTimeout time.Duration
	Args       Table
	// Prefetch is the channel's prefetch count (basic.qos), 0 for none or
	// unknown: a stream consumer needs one.
	Prefetch int
}

// consumeArgs checks a basic.consume's queue, tag and settings against the
// broker and returns the arguments table to send (a copy when warren adds
// to it: the caller's Args are never changed). Every problem is reported
// at once, before anything is sent.
func (c *session) consumeArgs(op, queue, tag string, a consumerArgs) (Table, error) {
	var errs []error
	bad := func(format string, v ...any) {
		errs = append(errs, fmt.Errorf("%w: %s: "+format, append([]any{ErrInvalidArgument, op}, v...)...))
	}
	if a.Priority < math.MinInt32 || a.Priority > math.MaxInt32 {
		bad("Priority %d outside the 32-bit range of x-priority", a.Priority)
	}
	if _, dup := a.Args["x-priority"]; dup && a.Priority != 0 {
		bad("x-priority is set both in Args and by Priority")
	}
	if a.AckTimeout < 0 || a.AckTimeout%time.Millisecond != 0 {
		bad("AckTimeout %v: must be a positive whole number of milliseconds", a.AckTimeout)
	}
	if _, dup := a.Args["x-consumer-timeout"]; dup && a.AckTimeout != 0 {
		bad("x-consumer-timeout is set both in Args and by AckTimeout")
	}
	if a.AckTimeout > 0 {
		if v := c.broker(); v.known() && !v.atLeastPatch(3, 11, 15) {
			bad("AckTimeout: RabbitMQ %s ignores a consumer's x-consumer-timeout (3.11.15 and later honour it); set consumer_timeout on the broker instead", v)
		}
	}
	offset, err := a.Stream.value()
	if err != nil {
		bad("StreamOffset: %v", err)
	}
	_, inArgs := a.Args["x-stream-offset"]
	if inArgs && !a.Stream.IsZero() {
		bad("x-stream-offset is set both in Args and by StreamOffset")
	}
	if inArgs || !a.Stream.IsZero() {
		if a.AutoAck {
			bad("a stream consumer needs manual acknowledgements: RabbitMQ refuses AutoAck on a stream queue (406)")
		}
		if a.Prefetch <= 0 {
			bad("a stream consumer needs a prefetch count (basic.qos) above 0: RabbitMQ refuses an unbounded one on a stream queue (406)")
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	raw := a.Args
	if a.Priority != 0 || a.AckTimeout > 0 || offset != nil {
		raw = make(Table, len(a.Args)+3)
		for k, v := range a.Args {
			raw[k] = v
		}
		if a.Priority != 0 {
			raw["x-priority"] = int32(a.Priority)
		}
		if a.AckTimeout > 0 {
			raw["x-consumer-timeout"] = a.AckTimeout.Milliseconds()
		}
		if offset != nil {
			raw["x-stream-offset"] = offset
		}
	}
	// Checked with what warren added: the frame must fit as sent.
	return c.checkMethod(op, methodFixed, raw, "queue", queue, "consumer tag", tag)
}
