package warren

import (
	"errors"
	"maps"
	"strings"
	"testing"
	"time"
)

func TestQueueOptionsArguments(t *testing.T) {
	quorum := QueueOptions{Durable: true, Type: QueueQuorum}
	with := func(o QueueOptions, f func(*QueueOptions)) QueueOptions { f(&o); return o }
	for _, tc := range []struct {
		name string
		opts QueueOptions
		want Table
	}{
		{"zero", QueueOptions{}, nil},
		{"args kept", QueueOptions{Args: Table{"x-custom": "v"}}, Table{"x-custom": "v"}},
		{"classic", QueueOptions{Type: QueueClassic}, Table{"x-queue-type": "classic"}},
		{"quorum with everything", with(quorum, func(o *QueueOptions) {
			o.DeliveryLimit = 5
			o.DeadLetterExchange = "dlx"
			o.DeadLetterRoutingKey = "poison"
			o.DeadLetterStrategy = DeadLetterAtLeastOnce
			o.Overflow = OverflowRejectPublish
			o.MaxLength = 1000
			o.MaxLengthBytes = 1 << 20
			o.MessageTTL = time.Minute
			o.Expires = time.Hour
			o.SingleActiveConsumer = true
			o.InitialGroupSize = 3
			o.Args = Table{"x-other": int32(1)}
		}), Table{
			"x-queue-type": "quorum", "x-delivery-limit": int64(5), "x-dead-letter-exchange": "dlx",
			"x-dead-letter-routing-key": "poison", "x-dead-letter-strategy": "at-least-once",
			"x-overflow": "reject-publish", "x-max-length": int64(1000), "x-max-length-bytes": int64(1 << 20),
			"x-message-ttl": int64(60000), "x-expires": int64(3600000), "x-single-active-consumer": true,
			"x-quorum-initial-group-size": int64(3), "x-other": int32(1),
		}},
		{"stream group size", QueueOptions{Durable: true, Type: QueueStream, InitialGroupSize: 2},
			Table{"x-queue-type": "stream", "x-initial-cluster-size": int64(2)}},
		{"classic reject-publish-dlx", QueueOptions{Overflow: OverflowRejectPublishDLX, DeadLetterExchange: "d"},
			Table{"x-overflow": "reject-publish-dlx", "x-dead-letter-exchange": "d"}},
		{"routing key with exchange in Args", QueueOptions{DeadLetterRoutingKey: "k", Args: Table{"x-dead-letter-exchange": ""}},
			Table{"x-dead-letter-routing-key": "k", "x-dead-letter-exchange": ""}},
		// The type and overflow may come through Args (code written
		// before the fields existed).
		{"quorum type in Args", QueueOptions{Durable: true, DeliveryLimit: 5, Args: Table{"x-queue-type": "quorum"}},
			Table{"x-queue-type": "quorum", "x-delivery-limit": int64(5)}},
		{"overflow in Args", with(quorum, func(o *QueueOptions) {
			o.DeadLetterStrategy = DeadLetterAtLeastOnce
			o.Args = Table{"x-overflow": "reject-publish"}
		}), Table{"x-queue-type": "quorum", "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}},
		// Passive: RabbitMQ ignores flags and arguments; so does warren.
		{"passive quorum", QueueOptions{Passive: true, Type: QueueQuorum, DeliveryLimit: -1}, nil},
		{"stream max bytes", QueueOptions{Durable: true, Type: QueueStream, MaxLengthBytes: 1 << 30},
			Table{"x-queue-type": "stream", "x-max-length-bytes": int64(1 << 30)}},
	} {
		got, err := tc.opts.arguments()
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !maps.Equal(got, tc.want) {
			t.Errorf("%s:\n got %v\nwant %v", tc.name, got, tc.want)
		}
	}
	args := Table{"x-custom": "v"}
	if _, err := (QueueOptions{Args: args, MaxLength: 1}).arguments(); err != nil || len(args) != 1 {
		t.Errorf("the caller's Args were modified: %v (%v)", args, err)
	}

	for _, tc := range []struct {
		name string
		opts QueueOptions
		why  string
	}{
		{"unknown type", QueueOptions{Type: "lazy"}, "unknown queue type"},
		{"quorum not durable", QueueOptions{Type: QueueQuorum}, "must be Durable"},
		{"quorum exclusive", with(quorum, func(o *QueueOptions) { o.Exclusive = true }), "must be Durable"},
		{"stream auto-delete", QueueOptions{Type: QueueStream, Durable: true, AutoDelete: true}, "must be Durable"},
		{"delivery limit on classic", QueueOptions{DeliveryLimit: 3}, "DeliveryLimit applies to quorum"},
		{"negative delivery limit", with(quorum, func(o *QueueOptions) { o.DeliveryLimit = -1 }), "negative"},
		{"field also in Args", with(quorum, func(o *QueueOptions) { o.DeliveryLimit = 2; o.Args = Table{"x-delivery-limit": 3} }), "both in Args"},
		{"type also in Args", with(quorum, func(o *QueueOptions) { o.Args = Table{"x-queue-type": "quorum"} }), "both in Args"},
		{"routing key without exchange", QueueOptions{DeadLetterRoutingKey: "k"}, "without a dead-letter exchange"},
		{"at-least-once without reject-publish", with(quorum, func(o *QueueOptions) { o.DeadLetterStrategy = DeadLetterAtLeastOnce }), "needs Overflow"},
		{"strategy on classic", QueueOptions{DeadLetterStrategy: DeadLetterAtMostOnce}, "applies to quorum"},
		{"unknown strategy", with(quorum, func(o *QueueOptions) { o.DeadLetterStrategy = "twice" }), "unknown DeadLetterStrategy"},
		{"unknown overflow", QueueOptions{Overflow: "spill"}, "unknown Overflow"},
		{"reject-publish-dlx on quorum", with(quorum, func(o *QueueOptions) { o.Overflow = OverflowRejectPublishDLX }), "applies to classic"},
		{"negative max length", QueueOptions{MaxLength: -1}, "negative"},
		{"ttl below a millisecond", QueueOptions{MessageTTL: time.Microsecond}, "milliseconds"},
		{"negative ttl", QueueOptions{MessageTTL: -time.Second}, "milliseconds"},
		{"expires fractional", QueueOptions{Expires: 1500 * time.Microsecond}, "milliseconds"},
		{"group size on classic", QueueOptions{InitialGroupSize: 3}, "applies to quorum and stream"},
		{"quorum in Args not durable", QueueOptions{Args: Table{"x-queue-type": "quorum"}}, "must be Durable"},
		{"delivery limit with classic in Args", QueueOptions{DeliveryLimit: 1, Args: Table{"x-queue-type": "classic"}}, "applies to quorum"},
		{"stream max length", QueueOptions{Durable: true, Type: QueueStream, MaxLength: 10}, "MaxLength applies to classic and quorum"},
		{"stream ttl", QueueOptions{Durable: true, Type: QueueStream, MessageTTL: time.Second}, "MessageTTL applies to classic and quorum"},
		{"stream overflow", QueueOptions{Durable: true, Type: QueueStream, Overflow: OverflowDropHead}, "Overflow applies to classic and quorum"},
		{"stream dead-lettering", QueueOptions{Durable: true, Type: QueueStream, DeadLetterExchange: "d"}, "DeadLetterExchange applies to classic and quorum"},
		{"stream SAC", QueueOptions{Durable: true, Type: QueueStream, SingleActiveConsumer: true}, "SingleActiveConsumer applies"},
		{"stream expires", QueueOptions{Durable: true, Type: QueueStream, Expires: time.Hour}, "Expires applies"},
	} {
		_, err := tc.opts.arguments()
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("%s: err = %v, want ErrInvalidArgument saying %q", tc.name, err, tc.why)
		}
	}
}

func TestQueueOptionsArgumentsReportsEveryProblem(t *testing.T) {
	_, err := QueueOptions{Type: QueueQuorum, MaxLength: -1, Overflow: "spill"}.arguments()
	if !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("err = %v", err)
	}
	// The durability check comes first and stops there (nothing else is
	// worth checking of a queue that cannot be declared)...
	if !strings.Contains(err.Error(), "must be Durable") {
		t.Fatalf("err = %v", err)
	}
	// ...the argument checks all report.
	_, err = QueueOptions{MaxLength: -1, Overflow: "spill", DeliveryLimit: 2}.arguments()
	for _, want := range []string{"MaxLength -1 is negative", `unknown Overflow "spill"`, "DeliveryLimit applies to quorum"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want it to say %q", err, want)
		}
	}
}

func TestQueueOptionsRefusedBeforeSending(t *testing.T) {
	v310, v43 := parseBrokerVersion("3.10.8"), parseBrokerVersion("4.3.6")
	for _, tc := range []struct {
		name string
		opts QueueOptions
		v    brokerVersion
		want string // "" when accepted
	}{
		{"zero: transient non-exclusive", QueueOptions{}, v310, "neither Durable nor Exclusive"},
		{"auto-delete is still transient", QueueOptions{AutoDelete: true}, v43, "neither Durable nor Exclusive"},
		{"server-named transient", QueueOptions{Args: Table{"x-expires": int32(1000)}}, v43, "neither Durable nor Exclusive"},
		{"durable", QueueOptions{Durable: true}, v43, ""},
		{"exclusive", QueueOptions{Exclusive: true}, v43, ""},
		{"opted in", QueueOptions{AllowTransient: true}, v43, ""},
		{"passive", QueueOptions{Passive: true}, v43, ""},
		{"master locator on 4.3", QueueOptions{Durable: true, Args: Table{"x-queue-master-locator": "min-masters"}}, v43, `"x-queue-master-locator" was removed in RabbitMQ 4.0`},
		{"master locator on 3.10", QueueOptions{Durable: true, Args: Table{"x-queue-master-locator": "min-masters"}}, v310, ""},
		{"ha policy on 4.3", QueueOptions{Durable: true, Args: Table{"x-ha-policy": "all"}}, v43, `"x-ha-policy" was removed`},
		{"queue version 1 on 4.3", QueueOptions{Durable: true, Args: Table{"x-queue-version": int32(1)}}, v43, "x-queue-version 1"},
		{"queue version 2 on 4.3", QueueOptions{Durable: true, Args: Table{"x-queue-version": int32(2)}}, v43, ""},
		{"queue version 1 on 3.10", QueueOptions{Durable: true, Args: Table{"x-queue-version": int32(1)}}, v310, ""},
		{"unknown broker version", QueueOptions{Durable: true, Args: Table{"x-queue-master-locator": "x"}}, brokerVersion{}, ""},
	} {
		err := tc.opts.refused(tc.v)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: got %v, want accepted", tc.name, err)
		case tc.want != "" && (!errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: got %v, want ErrInvalidArgument saying %q", tc.name, err, tc.want)
		}
	}
}

func TestParseBrokerVersion(t *testing.T) {
	for in, want := range map[string]brokerVersion{
		"4.3.6": {4, 3, 6}, "3.10.8": {3, 10, 8}, "4.3.0-rc.1": {4, 3, 0}, "4.1": {4, 1, 0},
		"": {}, "x.y": {}, "4": {},
	} {
		if got := parseBrokerVersion(in); got != want {
			t.Errorf("parseBrokerVersion(%q) = %v, want %v", in, got, want)
		}
	}
	if !parseBrokerVersion("4.3.6").atLeast(4, 3) || parseBrokerVersion("4.2.9").atLeast(4, 3) || (brokerVersion{}).atLeast(0, 0) {
		t.Error("atLeast: wrong")
	}
}

func TestTTLsAreBoundedByTheBrokersTenYears(t *testing.T) {
	tenYears := time.Duration(maxExpiration) * time.Millisecond
	for _, o := range []QueueOptions{{Exclusive: true, MessageTTL: tenYears}, {Exclusive: true, Expires: tenYears}} {
		if _, err := o.arguments(); err != nil {
			t.Errorf("%+v: got %v, want accepted (measured on 3.10.8)", o, err)
		}
	}
	for _, o := range []QueueOptions{{Exclusive: true, MessageTTL: tenYears + time.Millisecond}, {Exclusive: true, Expires: tenYears + time.Millisecond}} {
		if _, err := o.arguments(); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%+v: got %v, want ErrInvalidArgument (the broker's 406 value_too_large)", o, err)
		}
	}
	if err := (QueueOptions{Durable: true, Args: Table{"x-queue-version": "2"}}).refused(parseBrokerVersion("4.3.6")); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("x-queue-version as a string on 4.3: got %v, want refused", err)
	}
}
