// Package warren is a RabbitMQ (AMQP 0-9-1) client for Go: a safer layer
// over github.com/rabbitmq/amqp091-go.
//
// A Client owns exactly one connection. Channels opened on it are numbered
// sequentially from 1 (Channel.ID is the number the broker shows) and are
// bounded by the negotiated channel_max (Client.ChannelMax).
//
// A Channel belongs to one goroutine at a time: every operation goes through
// one serialisation point, and a second goroutine calling in gets
// ErrConcurrentUse instead of interleaving frames on the wire. Every
// blocking operation takes a context; an RPC abandoned by its context
// poisons its channel, which warren then closes.
//
// Errors are typed. When the broker closes a channel (a soft error, e.g.
// publishing to an exchange that does not exist), every later operation on
// that channel and its Close return the broker's *ChannelError, matched with
// errors.Is against sentinels such as ErrNotFound; other channels are
// unaffected. When the connection ends, every channel and waiting call
// returns its *ConnectionError.
//
// Publisher confirms report four distinct outcomes: nil (acked),
// *NackedError, *UnroutableError (a mandatory message came back), and
// *OutcomeUnknownError (the channel or connection closed before the
// broker's answer; never reported as an ack or a nack). A Publisher gives
// any number of goroutines confirmed publishing, pipelined over a few
// confirm channels. Tx, Client.Tx and Pool.Tx wrap AMQP transactions with
// database/sql semantics.
//
// Client.Consume runs a handler on a pool of workers for every delivery of
// a queue, with a bounded prefetch, acks serialised on the consumer's own
// channel, and a shutdown that takes nothing new when its context ends,
// lets in-flight handlers finish, and returns everything else to the queue.
// Delivery is at least once: handlers must tolerate redelivery.
//
// Reconnection is not automatic yet: when the connection is lost, the
// Client ends (Done is closed, Err says why) and every call returns the
// *ConnectionError; dial a new Client. warren will own reconnection itself
// rather than use amqp091-go's experimental recovery (see
// docs/reconnection.md).
//
// Close never hangs: Client.Close and Channel.Close are bounded by their
// context (or WithCloseTimeout), and survive the broker closing the same
// channel at the same moment.
package warren
