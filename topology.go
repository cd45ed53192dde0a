package warren

import (
	"context"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Table is an AMQP field table (arguments, headers). warren checks every
// table before anything is sent, at every depth, and refuses
// (ErrInvalidArgument) what the wire cannot carry unchanged and what
// would cost the connection.
//
// The value types, and what a reader gets back (amqp091-go, after a round
// trip through RabbitMQ):
//
//   - bool, int8, uint8 (byte), int16, uint16, int32, uint32, int64,
//     float32, float64, string, []byte, Decimal, nil, Table and []any:
//     the same type and value. A string is a long string: any bytes, UTF-8
//     or not, arrive unchanged.
//   - int: an int32 if the value fits in 32 bits, else an int64. (amqp091-go
//     alone writes every int as 32 bits, truncated; warren sends a copy of
//     the table with such an int as an int64, and allocates only then.)
//   - time.Time: whole seconds (the fraction is dropped), in the reader's
//     local time zone. Times before 1970 are refused: the AMQP timestamp is
//     unsigned.
//   - an empty []any comes back as a nil []any; a nil []byte as an empty
//     []byte{}, and a nil Table as an empty Table{} (AMQP has no null
//     strings or tables, only empty ones).
//
// Refused: uint, uint64 and uintptr (send an int64, or a uint32), other
// slice and map types ([]string: use []any; map[string]any: use Table),
// any other type; NaN and ±Inf (RabbitMQ closes the connection); keys that
// are not AMQP short strings (over 255 bytes, or not UTF-8); tables and
// arrays nested more than 32 deep, or of more than 8192 entries (amqp091-go
// consumers cannot read them back and lose their connection); and a table
// that makes its frame larger than the connection's frame_max.
type Table = amqp.Table

// Decimal is the AMQP decimal table value, Value × 10^-Scale. Every Scale
// and Value goes through RabbitMQ unchanged.
type Decimal = amqp.Decimal

// Queue is the broker's answer to a queue declaration.
type Queue = amqp.Queue

// Exchange kinds built into RabbitMQ.
const (
	ExchangeDirect  = "direct"
	ExchangeFanout  = "fanout"
	ExchangeTopic   = "topic"
	ExchangeHeaders = "headers"
)

// ExchangeOptions are the flags of exchange.declare. The zero value declares
// a transient, non-auto-deleted, public exchange.
type ExchangeOptions struct {
	Durable    bool  // survives a broker restart
	AutoDelete bool  // deleted when its last binding is removed
	Internal   bool  // cannot be published to directly, only bound
	Passive    bool  // only check that it exists (404 NOT_FOUND if not)
	Args       Table // optional arguments, e.g. "alternate-exchange"
}

// QueueOptions are the flags and arguments of queue.declare.
//
// A queue must be Durable or Exclusive, unless AllowTransient says
// otherwise: the zero value (a transient, non-exclusive classic queue) is a
// deprecated RabbitMQ feature (transient_nonexcl_queues) that RabbitMQ 4.3
// denies by default (some builds, such as Debian's, still permit it), and
// a broker that denies it closes the whole connection (541), so warren
// refuses it before sending. For a temporary queue, use Exclusive (deleted
// with the connection) or Durable with Expires (deleted once unused).
//
// Arguments of features RabbitMQ 4.0 removed are refused before sending
// when the broker reports 4.0 or later, which would close the connection
// (x-queue-master-locator, x-ha-*) or the channel (x-queue-version other
// than 2); older brokers get them as given. x-queue-mode is accepted and
// ignored by RabbitMQ 3.12 and later (every classic queue is lazy).
//
// The common x- arguments have fields of their own (zero: not set); warren
// turns them into the arguments table and refuses, before anything is sent,
// combinations RabbitMQ would refuse by closing the channel (a quorum queue
// that is not durable, a delivery limit on a classic queue...). A quorum
// queue that dead-letters poison messages:
//
//	warren.QueueOptions{
//		Durable:            true,
//		Type:               warren.QueueQuorum,
//		DeliveryLimit:      5,
//		DeadLetterExchange: "dlx",
//	}
type QueueOptions struct {
	Durable    bool  // survives a broker restart
	AutoDelete bool  // deleted when its last consumer goes away
	Exclusive  bool  // used only by this connection, deleted when it closes
	Passive    bool  // only check that it exists (404 NOT_FOUND if not); every other field is then ignored
	Args       Table // other arguments; one also set by a field below is refused

	// AllowTransient declares a queue that is neither Durable nor
	// Exclusive, a deprecated feature (transient_nonexcl_queues) that
	// RabbitMQ 4.3 denies by default: only for brokers known to permit it.
	AllowTransient bool

	// Type is x-queue-type. Quorum and stream queues are replicated across
	// a cluster's nodes and must be Durable, neither Exclusive nor
	// AutoDelete.
	Type QueueType

	// DeliveryLimit (quorum) is x-delivery-limit: how many failed
	// deliveries a message may have (see Delivery.DeliveryCount) before it
	// is dead-lettered, or dropped without a DeadLetterExchange. A reject
	// with requeue or a consumer lost before acking is a failure on every
	// RabbitMQ version; a nack with requeue only up to 4.2. RabbitMQ 4.x
	// applies a limit of 20 when none is set; 3.x none.
	DeliveryLimit int
	// DeadLetterExchange (x-dead-letter-exchange) receives messages that
	// are rejected without requeue, expire, overflow or reach the delivery
	// limit; DeadLetterRoutingKey (x-dead-letter-routing-key) replaces
	// their routing key. (The default exchange, "", cannot be named by the
	// field: set Args{"x-dead-letter-exchange": ""} for it.)
	DeadLetterExchange   string
	DeadLetterRoutingKey string
	// DeadLetterStrategy (quorum) is x-dead-letter-strategy: DeadLetterAtMostOnce
	// (RabbitMQ's default) or DeadLetterAtLeastOnce, which RabbitMQ honours
	// only with Overflow OverflowRejectPublish (warren requires it).
	DeadLetterStrategy string
	// MaxLength (x-max-length, messages) and MaxLengthBytes
	// (x-max-length-bytes) bound the queue; Overflow (x-overflow) says what
	// happens beyond: OverflowDropHead (default), OverflowRejectPublish
	// (publishes are nacked), OverflowRejectPublishDLX (classic only).
	MaxLength      int64
	MaxLengthBytes int64
	Overflow       string
	// MessageTTL (x-message-ttl) expires messages older than this;
	// Expires (x-expires) deletes the queue after it has been unused this
	// long. Both have millisecond precision; zero means not set (a TTL of
	// zero goes in Args).
	MessageTTL time.Duration
	Expires    time.Duration
	// SingleActiveConsumer (x-single-active-consumer): one consumer at a
	// time gets messages, the others wait as standbys.
	SingleActiveConsumer bool
	// InitialGroupSize (quorum, stream) is x-quorum-initial-group-size
	// (x-initial-cluster-size for streams): on how many of the cluster's
	// nodes the queue is replicated (default: the broker's).
	InitialGroupSize int
}

// ExchangeDeleteOptions are the flags of exchange.delete.
type ExchangeDeleteOptions struct {
	IfUnused bool // only delete if it has no bindings (406 otherwise)
}

// QueueDeleteOptions are the flags of queue.delete.
type QueueDeleteOptions struct {
	IfUnused bool // only delete if it has no consumers (406 otherwise)
	IfEmpty  bool // only delete if it holds no messages (406 otherwise)
}

// QosOptions are the settings of basic.qos.
type QosOptions struct {
	// PrefetchCount is how many unacknowledged deliveries the broker may
	// send to each consumer started on the channel afterwards, 0..65535;
	// 0 means unlimited.
	PrefetchCount int
	// PrefetchSize must be 0: RabbitMQ does not implement a prefetch in
	// bytes and answers anything else by closing the whole connection
	// (540 NOT_IMPLEMENTED), so warren refuses it before sending.
	PrefetchSize int
	// Global asks RabbitMQ to share PrefetchCount among all the channel's
	// consumers instead of giving each its own.
	//
	// Deprecated: global QoS is a deprecated RabbitMQ feature. From
	// RabbitMQ 4.3 the broker accepts the flag but applies the limit per
	// consumer, not what the caller asked for, so warren refuses Global
	// before sending when the broker reports 4.3 or later; older brokers
	// get it as today. Use a per-consumer PrefetchCount.
	Global bool
}

// ExchangeDeclare declares an exchange of the given kind: one of the
// Exchange constants, or a plugin's type, named "x-..." by convention.
// Any other kind is refused (ErrInvalidArgument): RabbitMQ answers an
// unknown type by closing the whole connection (503 COMMAND_INVALID), as
// it does for an "x-..." type whose plugin it lacks. A passive declaration
// does not look at the kind.
func (ch Channel) ExchangeDeclare(ctx context.Context, name, kind string, opts ExchangeOptions) error {
	const op = "exchange.declare"
	if err := checkKind(op, kind, opts.Passive); err != nil {
		return err
	}
	args, err := ch.checkMethod(op, methodFixed, opts.Args, "exchange", name, "exchange type", kind)
	if err != nil {
		return err
	}
	return ch.call(ctx, op, func() error {
		if opts.Passive {
			return ch.s.ch.ExchangeDeclarePassive(name, kind, opts.Durable, opts.AutoDelete, opts.Internal, false, args)
		}
		return ch.s.ch.ExchangeDeclare(name, kind, opts.Durable, opts.AutoDelete, opts.Internal, false, args)
	})
}

// ExchangeDelete deletes an exchange.
func (ch Channel) ExchangeDelete(ctx context.Context, name string, opts ExchangeDeleteOptions) error {
	const op = "exchange.delete"
	if err := checkNames(op, "exchange", name); err != nil {
		return err
	}
	return ch.call(ctx, op, func() error {
		return ch.s.ch.ExchangeDelete(name, opts.IfUnused, false)
	})
}

// ExchangeBind routes messages from exchange source to exchange destination
// when their routing key matches key.
func (ch Channel) ExchangeBind(ctx context.Context, destination, key, source string, args Table) error {
	const op = "exchange.bind"
	args, err := ch.checkMethod(op, methodFixed, args, "destination", destination, "routing key", key, "source", source)
	if err != nil {
		return err
	}
	return ch.call(ctx, op, func() error {
		return ch.s.ch.ExchangeBind(destination, key, source, false, args)
	})
}

// ExchangeUnbind removes a binding made by ExchangeBind.
func (ch Channel) ExchangeUnbind(ctx context.Context, destination, key, source string, args Table) error {
	const op = "exchange.unbind"
	args, err := ch.checkMethod(op, methodFixed, args, "destination", destination, "routing key", key, "source", source)
	if err != nil {
		return err
	}
	return ch.call(ctx, op, func() error {
		return ch.s.ch.ExchangeUnbind(destination, key, source, false, args)
	})
}

// QueueDeclare declares a queue. An empty name asks the broker to generate
// one, returned in Queue.Name.
func (ch Channel) QueueDeclare(ctx context.Context, name string, opts QueueOptions) (Queue, error) {
	const op = "queue.declare"
	if err := checkNames(op, "queue", name); err != nil {
		return Queue{}, err
	}
	args, err := opts.arguments()
	if err == nil && name == "" && !opts.Passive && (opts.Type == QueueQuorum || opts.Type == QueueStream) {
		err = fmt.Errorf("%w: a %s queue needs a name (the broker names only classic queues)", ErrInvalidArgument, opts.Type)
	}
	if err == nil && ch.s != nil {
		err = opts.refused(ch.s.c.broker())
	}
	if err != nil {
		return Queue{}, fmt.Errorf("warren: %s %q: %w", op, name, err)
	}
	args, err = ch.checkMethod(op, methodFixed, args, "queue", name)
	if err != nil {
		return Queue{}, err
	}
	var q Queue
	err = ch.call(ctx, op, func() (err error) {
		if opts.Passive {
			q, err = ch.s.ch.QueueDeclarePassive(name, opts.Durable, opts.AutoDelete, opts.Exclusive, false, args)
		} else {
			q, err = ch.s.ch.QueueDeclare(name, opts.Durable, opts.AutoDelete, opts.Exclusive, false, args)
		}
		return err
	})
	if err != nil {
		return Queue{}, err // an abandoned call's goroutine may still write q
	}
	return q, nil
}

// QueueDelete deletes a queue and returns how many messages it held.
func (ch Channel) QueueDelete(ctx context.Context, name string, opts QueueDeleteOptions) (int, error) {
	const op = "queue.delete"
	if err := checkNames(op, "queue", name); err != nil {
		return 0, err
	}
	var n int
	err := ch.call(ctx, op, func() (err error) {
		n, err = ch.s.ch.QueueDelete(name, opts.IfUnused, opts.IfEmpty, false)
		return err
	})
	if err != nil {
		return 0, err // an abandoned call's goroutine may still write n
	}
	return n, nil
}

// QueuePurge removes every ready message from a queue and returns how many
// it removed.
func (ch Channel) QueuePurge(ctx context.Context, name string) (int, error) {
	const op = "queue.purge"
	if err := checkNames(op, "queue", name); err != nil {
		return 0, err
	}
	var n int
	err := ch.call(ctx, op, func() (err error) {
		n, err = ch.s.ch.QueuePurge(name, false)
		return err
	})
	if err != nil {
		return 0, err // an abandoned call's goroutine may still write n
	}
	return n, nil
}

// QueueBind routes messages from exchange to queue when their routing key
// matches key.
func (ch Channel) QueueBind(ctx context.Context, queue, key, exchange string, args Table) error {
	const op = "queue.bind"
	args, err := ch.checkMethod(op, methodFixed, args, "queue", queue, "exchange", exchange, "routing key", key)
	if err != nil {
		return err
	}
	return ch.call(ctx, op, func() error {
		return ch.s.ch.QueueBind(queue, key, exchange, false, args)
	})
}

// QueueUnbind removes a binding made by QueueBind.
func (ch Channel) QueueUnbind(ctx context.Context, queue, key, exchange string, args Table) error {
	const op = "queue.unbind"
	args, err := ch.checkMethod(op, methodFixedNoFlags, args, "queue", queue, "exchange", exchange, "routing key", key)
	if err != nil {
		return err
	}
	return ch.call(ctx, op, func() error {
		return ch.s.ch.QueueUnbind(queue, key, exchange, args)
	})
}

// Qos sets how many unacknowledged deliveries the broker may send to this
// channel's consumers.
//
// Every problem with opts is reported at once, before anything is sent: a
// PrefetchCount outside 0..65535, a PrefetchSize other than 0, and Global
// on a broker that reports RabbitMQ 4.3 or later (see QosOptions).
//
// The PrefetchCount of the last successful Qos without Global is what
// Channel.Consume checks a stream consumer against (it needs one above 0).
func (ch Channel) Qos(ctx context.Context, opts QosOptions) error {
	const op = "basic.qos"
	var errs []error
	if opts.PrefetchCount < 0 || opts.PrefetchCount > 0xFFFF {
		errs = append(errs, fmt.Errorf("%w: %s: prefetch count %d is outside 0..65535", ErrInvalidArgument, op, opts.PrefetchCount))
	}
	if opts.PrefetchSize != 0 {
		errs = append(errs, fmt.Errorf("%w: %s: prefetch size %d: RabbitMQ supports only 0 and closes the connection (540 NOT_IMPLEMENTED) for anything else", ErrInvalidArgument, op, opts.PrefetchSize))
	}
	if opts.Global && ch.s != nil {
		if v := ch.s.c.broker(); v.atLeast(4, 3) {
			errs = append(errs, fmt.Errorf("%w: %s: Global: RabbitMQ %s denies global QoS and would apply the limit per consumer instead; set a per-consumer PrefetchCount", ErrInvalidArgument, op, v))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	err := ch.call(ctx, op, func() error {
		return ch.s.ch.Qos(opts.PrefetchCount, opts.PrefetchSize, opts.Global)
	})
	if err == nil && !opts.Global {
		ch.s.prefetch.Store(int32(opts.PrefetchCount))
	}
	return err
}
