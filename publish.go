package warren

import (
	"context"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Publishing is a message to publish: properties and body.
//
// warren checks it before anything is sent and refuses (ErrInvalidArgument)
// what would cost the connection or the channel, or arrive changed: a
// short-string property (ContentType, ContentEncoding, CorrelationId,
// ReplyTo, Expiration, MessageId, Type, UserId, AppId) over 255 bytes or
// not UTF-8; an Expiration that is not a non-negative whole number of
// milliseconds ("60000"); a DeliveryMode other than 0, Transient or
// Persistent; a Timestamp before 1970 (the AMQP timestamp is unsigned
// seconds; the fraction of a second is dropped); Headers that are not a
// valid Table (see Table: a Go int beyond 32 bits goes as an int64); and
// properties too large for one frame of the connection.
type Publishing = amqp.Publishing

// Delivery modes for Publishing.DeliveryMode.
const (
	Transient  = amqp.Transient  // 1: may be lost on broker restart
	Persistent = amqp.Persistent // 2: written to disk by durable queues
)

// Publish sends msg to exchange with routing key key.
//
// On a plain or tx channel it is fire-and-forget: a nil error means the
// frames were handed to the socket, not that the broker accepted them. On a
// confirm channel (SetMode(ctx, ModeConfirm), or a confirm Pool) it returns
// once the broker has answered, and nil means the broker acked; see
// PublishMessage, PublishDeferred and Publisher.
//
// If the exchange does not exist the broker closes the channel
// asynchronously: this call may still return nil, and the next operation on
// the channel, or its Close, returns the *ChannelError (errors.Is
// ErrNotFound, the text names the exchange).
//
// ctx is checked before anything is written. If it ends while the socket
// write is stalled (a blocked broker, a dead network), the connection is
// closed, because a partly written message cannot be taken back.
func (ch Channel) Publish(ctx context.Context, exchange, key string, msg Publishing) error {
	return ch.PublishMessage(ctx, Message{Exchange: exchange, Key: key, Publishing: msg})
}
