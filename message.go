package warren

import amqp "github.com/rabbitmq/amqp091-go"

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

// Message is a message with its destination.
type Message struct {
	Exchange string
	Key      string // routing key
	// Mandatory asks the broker to return the message when no queue is
	// bound for it; the publish then fails with an *UnroutableError. It
	// needs a confirm-mode channel (or a Publisher), which is where the
	// return can be reported; plain and tx channels refuse it.
	Mandatory bool
	Publishing
}
