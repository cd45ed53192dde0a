// Package warren is a RabbitMQ (AMQP 0-9-1) client for Go: a safer layer
// over github.com/rabbitmq/amqp091-go. It keeps amqp091-go's wire protocol
// and fixes, by construction, what hurts in production: garbled frames from
// concurrent use, lost close reasons, calls that hang, confirms that cannot
// tell a nack from a dead channel.
//
// amqp091-go does the handshake, the RPCs and the reading; warren writes
// basic.publish itself. It encodes the method and content header frames on
// the publishing goroutine's stack (the bytes amqp091-go would write, except
// that a Go int outside int32 goes as an int64 where amqp091-go truncates
// it) and writes them with the body frames in one piece, between
// amqp091-go's frames, never inside one; publisher confirms are tracked by
// warren alone. A publish without confirms allocates nothing.
//
// # Connecting
//
// Dial opens exactly one connection, bounded by its context (TCP, TLS and the
// AMQP handshake). Options set TLS, heartbeat, channel_max, frame size, the
// connection name RabbitMQ shows, a *slog.Logger, the close bound, the flow
// policy and metrics hooks. Errors never contain the password. Client.Close
// is idempotent and bounded, and returns once warren's goroutines have ended.
//
// # Channels and numbers
//
// Channels opened on a Client are numbered sequentially from 1
// (Channel.ID is the number rabbitmqctl list_channels shows) and bounded by
// the negotiated channel_max (Client.ChannelMax). A Channel belongs to one
// goroutine at a time: every operation goes through one serialisation point,
// and a second goroutine calling in gets ErrConcurrentUse instead of
// interleaving frames on the wire (Close excepted: it is safe from any
// goroutine, and waits for an operation in progress). Every blocking operation takes a context;
// an RPC abandoned by its context poisons its channel, which warren closes.
//
// # Errors
//
// When the broker closes a channel (a soft error, e.g. publishing to an
// exchange that does not exist), every later operation on that channel and
// its Close return the broker's *ChannelError, matched with errors.Is
// against sentinels such as ErrNotFound; other channels are unaffected. When
// the connection ends, every channel and waiting call returns its
// *ConnectionError (ErrConnectionLost when the network, not the broker,
// ended it). CodeOf, IsChannelLevel and IsConnectionLevel classify any
// error. Close never hangs, and survives the broker closing the same channel
// at the same moment.
//
// # Pool
//
// A Pool hands each goroutine a channel of its own: bounded, fair (first
// come, first served), ctx-aware, and healthy (a channel the broker closed,
// one poisoned, or one released mid-operation is closed instead of reused).
// Pools hold one mode: plain, confirm or tx.
//
// # Confirms
//
// On a confirm channel (Channel.SetMode(ctx, ModeConfirm), or a confirm
// Pool) every publish has an outcome: nil (acked), *NackedError,
// *UnroutableError (a mandatory message came back), or *OutcomeUnknownError
// (the channel or connection closed before the answer; never reported as an
// ack or a nack). PublishDeferred returns a *Confirmation future;
// Publish and PublishMessage wait; PublishBatch does a slice. A Publisher
// gives any number of goroutines confirmed publishing, pipelined over a few
// confirm channels with a bounded window each.
//
// # Transactions
//
// Tx wraps tx.select, tx.commit and tx.rollback with database/sql
// semantics: Client.Tx and Pool.Tx commit when the function returns nil and
// roll back on an error or a panic; after Commit or Rollback every method
// returns ErrTxDone. Publishes and acks take effect on commit. Confirm and
// tx mode are refused on each other's channels before the broker's 406.
//
// # Consumers
//
// Client.Consume runs a handler on a pool of workers for every delivery of
// a queue, with a bounded prefetch, acks serialised on the consumer's own
// channel, and a shutdown that takes nothing new when its context ends,
// lets in-flight handlers finish, and returns everything else to the queue.
// Delivery is at least once: handlers must tolerate redelivery.
// Client.StartConsumer returns a Consumer to hold (Ready, Pause, Resume,
// Cancel, Stats); Client.StartBatchConsumer hands handlers batches;
// Channel.Consume consumes on a channel the caller owns, as a Subscription
// whose deliveries arrive on a Go channel.
//
// # RPC
//
// RPCClient.Call sends a request over RabbitMQ's direct reply-to and
// waits for the reply matched by correlation id; a request no queue takes
// fails at once with ErrUnroutable. Client.Serve answers requests from a
// queue and acks each only once its reply is confirmed.
//
// # Flow control
//
// While the broker blocks the connection (connection.blocked: a memory or
// disk alarm) or stops a channel's flow, publishes wait, bounded by their
// context, or fail at once with ErrBlocked (WithFlowPolicy).
//
// # Reconnection
//
// With WithReconnect the Client dials a new connection when one is lost
// (exponential backoff with jitter; Close stops it), and reports state
// changes in order through WithStateCallback. Pools, Publishers and
// consumers carry on on the new connection; Channels of the lost one
// keep returning its *ConnectionError, so nothing silently hides an error.
// warren owns reconnection rather than use amqp091-go's experimental
// recovery (see docs/reconnection.md).
//
// WithCredentials asks a provider for the user and secret at every dial,
// reconnect and failover; WithCredentialRefresh renews a secret that
// expires on the live connection (Client.UpdateSecret). No secret appears
// in an error, a log record or a printed value.
//
// # Observability
//
// Client.Stats, Pool.Stats and Publisher.Stats are snapshots of gauges and
// counters; WithMetrics installs hooks for per-event figures (confirm
// latency, pool waits, channel churn); WithTracer installs a tracing hook
// that can add headers to a publish and wrap a delivery's handling. The
// otelwarren module adapts the metrics and the tracing hook to
// OpenTelemetry (spans per the messaging conventions, W3C trace context in
// message headers).
//
// # Testing
//
// The warrentest module (github.com/warrenmq/warren/warrentest) gives
// tests a real broker (AMQP_URL, a private node, or a container) and
// faults: closing a connection by name, a memory alarm, a restart, and a
// proxy that cuts or black-holes one client's traffic.
package warren
