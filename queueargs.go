package warren

import (
	"errors"
	"fmt"
	"time"
)

// QueueType is a RabbitMQ queue type, the x-queue-type argument.
type QueueType string

const (
	QueueDefault QueueType = ""        // the broker's default (classic, unless configured otherwise)
	QueueClassic QueueType = "classic" // a single node's queue
	QueueQuorum  QueueType = "quorum"  // replicated with Raft: the queue type for data safety on a cluster
	QueueStream  QueueType = "stream"  // an append-only replicated log
)

// Values of QueueOptions.Overflow and QueueOptions.DeadLetterStrategy.
const (
	OverflowDropHead         = "drop-head"
	OverflowRejectPublish    = "reject-publish"
	OverflowRejectPublishDLX = "reject-publish-dlx"

	DeadLetterAtMostOnce  = "at-most-once"
	DeadLetterAtLeastOnce = "at-least-once"
)

// arguments returns the queue.declare arguments: Args with the fields that
// have their own names added, or why they cannot be declared. A passive
// declaration only checks that the queue exists: RabbitMQ ignores its flags
// and arguments, and so does warren.
func (o QueueOptions) arguments() (Table, error) {
	if o.Passive {
		return o.Args, nil
	}
	// The type and overflow in effect: a field, or else the same
	// argument set in Args.
	typ := o.Type
	if s, ok := o.Args["x-queue-type"].(string); ok && typ == QueueDefault {
		typ = QueueType(s)
	}
	overflow := o.Overflow
	if s, ok := o.Args["x-overflow"].(string); ok && overflow == "" {
		overflow = s
	}
	replicated := typ == QueueQuorum || typ == QueueStream
	switch o.Type {
	case QueueDefault, QueueClassic, QueueQuorum, QueueStream:
	default:
		return nil, fmt.Errorf("%w: unknown queue type %q", ErrInvalidArgument, o.Type)
	}
	if replicated && (!o.Durable || o.Exclusive || o.AutoDelete) {
		return nil, fmt.Errorf("%w: a %s queue must be Durable, and neither Exclusive nor AutoDelete", ErrInvalidArgument, typ)
	}
	set := make(Table, len(o.Args)+4)
	for k, v := range o.Args {
		set[k] = v
	}
	put := func(key string, v any) error {
		if _, dup := o.Args[key]; dup {
			return fmt.Errorf("%w: argument %q is set both in Args and by its QueueOptions field", ErrInvalidArgument, key)
		}
		set[key] = v
		return nil
	}
	onlyFor := func(field string, ok bool, types string) error {
		if !ok {
			return fmt.Errorf("%w: %s applies to %s queues, not %q", ErrInvalidArgument, field, types, typ)
		}
		return nil
	}
	// notStream: RabbitMQ 3.10 refuses these arguments on a stream (406).
	notStream := func(field string) error { return onlyFor(field, typ != QueueStream, "classic and quorum") }
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if o.Type != QueueDefault {
		add(put("x-queue-type", string(o.Type)))
	}
	if o.DeliveryLimit != 0 {
		add(onlyFor("DeliveryLimit", typ == QueueQuorum, "quorum"))
		add(nonNegative("DeliveryLimit", int64(o.DeliveryLimit)))
		add(put("x-delivery-limit", int64(o.DeliveryLimit)))
	}
	if o.DeadLetterExchange != "" {
		add(notStream("DeadLetterExchange"))
		add(shortstrField("DeadLetterExchange", o.DeadLetterExchange))
		add(put("x-dead-letter-exchange", o.DeadLetterExchange))
	}
	if o.DeadLetterRoutingKey != "" {
		if _, inArgs := o.Args["x-dead-letter-exchange"]; o.DeadLetterExchange == "" && !inArgs {
			add(fmt.Errorf("%w: DeadLetterRoutingKey without a dead-letter exchange (for the default exchange, set Args \"x-dead-letter-exchange\": \"\")", ErrInvalidArgument))
		}
		add(notStream("DeadLetterRoutingKey"))
		add(shortstrField("DeadLetterRoutingKey", o.DeadLetterRoutingKey))
		add(put("x-dead-letter-routing-key", o.DeadLetterRoutingKey))
	}
	switch o.DeadLetterStrategy {
	case "":
	case DeadLetterAtMostOnce, DeadLetterAtLeastOnce:
		add(onlyFor("DeadLetterStrategy", typ == QueueQuorum, "quorum"))
		if o.DeadLetterStrategy == DeadLetterAtLeastOnce && overflow != OverflowRejectPublish {
			// RabbitMQ silently falls back to at-most-once otherwise.
			add(fmt.Errorf("%w: DeadLetterStrategy %q needs Overflow %q", ErrInvalidArgument, DeadLetterAtLeastOnce, OverflowRejectPublish))
		}
		add(put("x-dead-letter-strategy", o.DeadLetterStrategy))
	default:
		add(fmt.Errorf("%w: unknown DeadLetterStrategy %q", ErrInvalidArgument, o.DeadLetterStrategy))
	}
	if o.MaxLength != 0 {
		add(notStream("MaxLength"))
		add(nonNegative("MaxLength", o.MaxLength))
		add(put("x-max-length", o.MaxLength))
	}
	if o.MaxLengthBytes != 0 {
		add(nonNegative("MaxLengthBytes", o.MaxLengthBytes))
		add(put("x-max-length-bytes", o.MaxLengthBytes))
	}
	switch o.Overflow {
	case "":
	case OverflowDropHead, OverflowRejectPublish:
		add(notStream("Overflow"))
		add(put("x-overflow", o.Overflow))
	case OverflowRejectPublishDLX:
		add(onlyFor("Overflow "+OverflowRejectPublishDLX, !replicated, "classic"))
		add(put("x-overflow", o.Overflow))
	default:
		add(fmt.Errorf("%w: unknown Overflow %q", ErrInvalidArgument, o.Overflow))
	}
	if o.MessageTTL != 0 {
		add(notStream("MessageTTL"))
		add(millis("MessageTTL", o.MessageTTL, 0))
		add(put("x-message-ttl", o.MessageTTL.Milliseconds()))
	}
	if o.Expires != 0 {
		add(notStream("Expires"))
		add(millis("Expires", o.Expires, time.Millisecond))
		add(put("x-expires", o.Expires.Milliseconds()))
	}
	if o.SingleActiveConsumer {
		add(notStream("SingleActiveConsumer"))
		add(put("x-single-active-consumer", true))
	}
	if o.InitialGroupSize != 0 {
		add(onlyFor("InitialGroupSize", replicated, "quorum and stream"))
		add(nonNegative("InitialGroupSize", int64(o.InitialGroupSize)))
		key := "x-quorum-initial-group-size"
		if typ == QueueStream {
			key = "x-initial-cluster-size"
		}
		add(put(key, int64(o.InitialGroupSize)))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...) // every problem at once
	}
	if len(set) == 0 {
		return nil, nil
	}
	return set, nil
}

// shortstrField refuses an exchange name or routing key that AMQP cannot
// carry as one (see shortstrProblem). RabbitMQ would take it in the
// argument, a long string, and then dead-letter to nowhere.
func shortstrField(field, s string) error {
	if p := shortstrProblem(s); p != "" {
		return fmt.Errorf("%w: %s %s", ErrInvalidArgument, field, p)
	}
	return nil
}

// removedArgs are queue arguments of features RabbitMQ 4.0 removed
// (classic queue mirroring and its master locator): a 4.x broker answers
// them with 541 INTERNAL_ERROR, which closes the whole connection.
var removedArgs = []string{"x-queue-master-locator", "x-ha-policy", "x-ha-nodes", "x-ha-params"}

// refused returns why a declaration of these options would cost more than
// the channel on broker v, or nil: a deprecated queue kind that RabbitMQ
// 4.3 denies with a connection close, or an argument a 4.x broker answers
// the same way or refuses. A passive declaration sends no flags or
// arguments that matter, and is never refused.
func (o QueueOptions) refused(v brokerVersion) error {
	if o.Passive {
		return nil
	}
	var errs []error
	typ := o.Type
	if s, ok := o.Args["x-queue-type"].(string); ok && typ == QueueDefault {
		typ = QueueType(s)
	}
	if !o.Durable && !o.Exclusive && !o.AllowTransient && (typ == QueueDefault || typ == QueueClassic) {
		errs = append(errs, fmt.Errorf("%w: a queue that is neither Durable nor Exclusive (transient, non-exclusive) is a deprecated RabbitMQ feature (transient_nonexcl_queues) that RabbitMQ 4.3 denies by default, and a broker that denies it closes the whole connection (541); make it Durable (with Expires or AutoDelete to clean up) or Exclusive, or set AllowTransient", ErrInvalidArgument))
	}
	if v.atLeast(4, 0) {
		for _, k := range removedArgs {
			if _, ok := o.Args[k]; ok {
				errs = append(errs, fmt.Errorf("%w: argument %q was removed in RabbitMQ 4.0 (this broker is %s and would close the connection)", ErrInvalidArgument, k, v))
			}
		}
		if qv, set := o.Args["x-queue-version"]; set {
			if n, ok := tableInt(qv); !ok || n != 2 {
				errs = append(errs, fmt.Errorf("%w: x-queue-version %v (%T): RabbitMQ 4.x (this broker is %s) takes only the integer 2 (version 2 classic queues)", ErrInvalidArgument, qv, qv, v))
			}
		}
	}
	return errors.Join(errs...)
}

// tableInt reads an integer table value of any width.
func tableInt(v any) (int64, bool) {
	switch n := v.(type) {
	case int:
		return int64(n), true
	case int8:
		return int64(n), true
	case int16:
		return int64(n), true
	case int32:
		return int64(n), true
	case int64:
		return n, true
	case uint8:
		return int64(n), true
	case uint16:
		return int64(n), true
	case uint32:
		return int64(n), true
	}
	return 0, false
}

func nonNegative(field string, v int64) error {
	if v < 0 {
		return fmt.Errorf("%w: %s %d is negative", ErrInvalidArgument, field, v)
	}
	return nil
}

// millis checks that d is a whole number of milliseconds, at least least
// and at most ten years (RabbitMQ answers more with a 406, value_too_large,
// as it does for a message's Expiration).
func millis(field string, d, least time.Duration) error {
	if d < least || d%time.Millisecond != 0 || d.Milliseconds() > maxExpiration {
		return fmt.Errorf("%w: %s %v: must be a whole number of milliseconds from %v to ten years", ErrInvalidArgument, field, d, least)
	}
	return nil
}
