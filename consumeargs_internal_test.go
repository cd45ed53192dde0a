package warren

import (
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// rabbit returns a session whose connection reports RabbitMQ version v.
func rabbit(v string) *session {
	return &session{conn: &amqp.Connection{Properties: amqp.Table{"product": "RabbitMQ", "version": v}}}
}

func TestConsumeArgsBuildsTheArgumentsToSend(t *testing.T) {
	since := time.Date(2024, 5, 6, 7, 8, 9, 500_000_000, time.UTC)
	for _, tc := range []struct {
		name string
		a    consumerArgs
		want Table
	}{
		{"nothing", consumerArgs{}, nil},
		{"caller's args", consumerArgs{Args: Table{"x-custom": "v"}}, Table{"x-custom": "v"}},
		{"priority", consumerArgs{Priority: -3}, Table{"x-priority": int32(-3)}},
		{"priority at the int32 bounds", consumerArgs{Priority: math.MaxInt32}, Table{"x-priority": int32(math.MaxInt32)}},
		{"ack timeout", consumerArgs{AckTimeout: 90 * time.Second}, Table{"x-consumer-timeout": int64(90000)}},
		{"first", consumerArgs{Stream: StreamFirst(), Prefetch: 10}, Table{"x-stream-offset": "first"}},
		{"last", consumerArgs{Stream: StreamLast(), Prefetch: 10}, Table{"x-stream-offset": "last"}},
		{"next", consumerArgs{Stream: StreamNext(), Prefetch: 10}, Table{"x-stream-offset": "next"}},
		{"offset 0", consumerArgs{Stream: StreamAt(0), Prefetch: 1}, Table{"x-stream-offset": int64(0)}},
		{"offset", consumerArgs{Stream: StreamAt(42), Prefetch: 1}, Table{"x-stream-offset": int64(42)}},
		{"since, to the second", consumerArgs{Stream: StreamSince(since), Prefetch: 1}, Table{"x-stream-offset": since.Truncate(time.Second)}},
		{"age", consumerArgs{Stream: StreamAge(2 * time.Hour), Prefetch: 1}, Table{"x-stream-offset": "7200s"}},
		{"offset in Args", consumerArgs{Args: Table{"x-stream-offset": "first"}, Prefetch: 1}, Table{"x-stream-offset": "first"}},
		{"all with others", consumerArgs{Priority: 5, Stream: StreamFirst(), Prefetch: 1, Args: Table{"x-other": true}},
			Table{"x-priority": int32(5), "x-stream-offset": "first", "x-other": true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			caller := Table(nil)
			if tc.a.Args != nil {
				caller = make(Table, len(tc.a.Args))
				for k, v := range tc.a.Args {
					caller[k] = v
				}
			}
			got, err := rabbit("4.3.6").consumeArgs("basic.consume", "q", "tag", tc.a)
			if err != nil {
				t.Fatalf("consumeArgs: got error %v, want nil", err)
			}
			if len(got) != len(tc.want) || (len(tc.want) > 0 && !reflect.DeepEqual(got, tc.want)) {
				t.Errorf("consumeArgs: got %#v, want %#v", got, tc.want)
			}
			if !reflect.DeepEqual(tc.a.Args, caller) {
				t.Errorf("the caller's Args changed: got %#v, want %#v", tc.a.Args, caller)
			}
		})
	}
}

func TestConsumeArgsRefusesBadSettingsBeforeSending(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version string
		a       consumerArgs
		want    []string // every problem is in the one error
	}{
		{"priority above int32", "4.3.6", consumerArgs{Priority: math.MaxInt32 + 1}, []string{"Priority"}},
		{"priority below int32", "4.3.6", consumerArgs{Priority: math.MinInt32 - 1}, []string{"Priority"}},
		{"priority twice", "4.3.6", consumerArgs{Priority: 1, Args: Table{"x-priority": int32(2)}}, []string{"x-priority is set both"}},
		{"ack timeout twice", "4.3.6", consumerArgs{AckTimeout: time.Second, Args: Table{"x-consumer-timeout": int64(5)}}, []string{"x-consumer-timeout is set both"}},
		{"negative ack timeout", "4.3.6", consumerArgs{AckTimeout: -time.Second}, []string{"AckTimeout"}},
		{"ack timeout below a millisecond", "4.3.6", consumerArgs{AckTimeout: 1500 * time.Microsecond}, []string{"AckTimeout"}},
		{"ack timeout on 3.10", "3.10.8", consumerArgs{AckTimeout: time.Minute}, []string{"3.11.15"}},
		{"negative offset", "4.3.6", consumerArgs{Stream: StreamAt(-1), Prefetch: 1}, []string{"offset -1"}},
		{"timestamp before 1970", "4.3.6", consumerArgs{Stream: StreamSince(time.Unix(-10, 0)), Prefetch: 1}, []string{"before 1970"}},
		{"age under a second", "4.3.6", consumerArgs{Stream: StreamAge(500 * time.Millisecond), Prefetch: 1}, []string{"age"}},
		{"age not whole seconds", "4.3.6", consumerArgs{Stream: StreamAge(1500 * time.Millisecond), Prefetch: 1}, []string{"age"}},
		{"offset twice", "4.3.6", consumerArgs{Stream: StreamFirst(), Prefetch: 1, Args: Table{"x-stream-offset": "last"}}, []string{"x-stream-offset is set both"}},
		{"stream with AutoAck", "4.3.6", consumerArgs{Stream: StreamFirst(), AutoAck: true, Prefetch: 1}, []string{"manual acknowledgements"}},
		{"stream without prefetch", "4.3.6", consumerArgs{Stream: StreamFirst()}, []string{"prefetch"}},
		{"offset in Args without prefetch", "4.3.6", consumerArgs{Args: Table{"x-stream-offset": "first"}}, []string{"prefetch"}},
		{"every problem at once", "4.3.6", consumerArgs{Priority: math.MaxInt32 + 1, Stream: StreamAt(-5), AutoAck: true},
			[]string{"Priority", "offset -5", "manual acknowledgements", "prefetch"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := rabbit(tc.version).consumeArgs("basic.consume", "q", "tag", tc.a)
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("consumeArgs: got %#v, %v; want ErrInvalidArgument", got, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("consumeArgs: got %q, want it to mention %q", err, w)
				}
			}
		})
	}
}

func TestConsumeArgsChecksTheQueueAndTagNames(t *testing.T) {
	long := strings.Repeat("x", 256)
	s := rabbit("4.3.6")
	if _, err := s.consumeArgs("basic.consume", long, "tag", consumerArgs{}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("queue name of 256 bytes: got %v, want ErrInvalidArgument", err)
	}
	if _, err := s.consumeArgs("basic.consume", "q", long, consumerArgs{}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("consumer tag of 256 bytes: got %v, want ErrInvalidArgument", err)
	}
}

func TestChannelConsumeOfTheZeroChannelIsRefused(t *testing.T) {
	var ch Channel
	if _, err := ch.Consume(t.Context(), "q", ChannelConsumeOptions{}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("Consume on the zero Channel: got %v, want ErrInvalidArgument", err)
	}
	if err := ch.Cancel(t.Context(), "tag"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("Cancel on the zero Channel: got %v, want ErrInvalidArgument", err)
	}
}
