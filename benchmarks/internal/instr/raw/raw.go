// Package raw holds what the raw amqp091-go programs share: the
// connection and channel they dial.
package raw

import (
	"context"
	"errors"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/benchmarks/internal/instr"
)

// Dial opens one connection named name and one channel on it, in confirm
// mode when confirm is set.
func Dial(p instr.Params, name string, confirm bool) (*amqp.Connection, *amqp.Channel, error) {
	conn, err := amqp.DialConfig(p.URL, amqp.Config{Properties: amqp.Table{"connection_name": name}})
	if err != nil {
		return nil, nil, err
	}
	ch, err := conn.Channel()
	if err == nil && confirm {
		err = ch.Confirm(false)
	}
	if err != nil {
		_ = conn.Close()
		return nil, nil, err
	}
	return conn, ch, nil
}

// Close closes conn; an already closed one is no error.
func Close(_ context.Context, conn *amqp.Connection) error {
	if err := conn.Close(); err != nil && !errors.Is(err, amqp.ErrClosed) {
		return err
	}
	return nil
}

// Message is the transient message of p.Body bytes every program sends.
func Message(p instr.Params) amqp.Publishing {
	return amqp.Publishing{DeliveryMode: amqp.Transient, Body: instr.Body(p.Body)}
}

// ErrNacked reports a broker nack, which no run expects.
var ErrNacked = errors.New("the broker nacked a message")
