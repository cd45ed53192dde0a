package warren

import (
	"context"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Publishing is a message to publish: properties and body.
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

// checkMessage refuses a message amqp091-go would fail to encode only after
// taking the connection down.
func checkMessage(op string, m *Message) error {
	return checkPublishing(op, m.Exchange, m.Key, &m.Publishing)
}

// checkPublishing refuses what amqp091-go would fail to encode only after
// taking the connection down.
func checkPublishing(op, exchange, key string, msg *Publishing) error {
	if len(exchange) > 255 || len(key) > 255 || len(msg.ContentType) > 255 ||
		len(msg.ContentEncoding) > 255 || len(msg.CorrelationId) > 255 ||
		len(msg.ReplyTo) > 255 || len(msg.Expiration) > 255 ||
		len(msg.MessageId) > 255 || len(msg.Type) > 255 ||
		len(msg.UserId) > 255 || len(msg.AppId) > 255 {
		return checkNames(op, "exchange", exchange, "routing key", key,
			"content type", msg.ContentType, "content encoding", msg.ContentEncoding,
			"correlation id", msg.CorrelationId, "reply-to", msg.ReplyTo,
			"expiration", msg.Expiration, "message id", msg.MessageId,
			"type", msg.Type, "user id", msg.UserId, "app id", msg.AppId)
	}
	if msg.DeliveryMode > Persistent {
		return fmt.Errorf("%w: %s: delivery mode %d is neither Transient (1) nor Persistent (2)", ErrInvalidArgument, op, msg.DeliveryMode)
	}
	if msg.Headers != nil {
		return checkTable(op, msg.Headers)
	}
	return nil
}
