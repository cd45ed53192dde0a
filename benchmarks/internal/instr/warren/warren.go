// Package warren holds what the warren programs share: the Client they
// dial.
package warren

import (
	"context"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren"

	"github.com/warrenmq/warren/benchmarks/internal/instr"
)

// Dial dials one Client named name.
func Dial(ctx context.Context, p instr.Params, name string) (*warren.Client, error) {
	return warren.Dial(ctx, p.URL, warren.WithName(name))
}

// Message is the transient message of p.Body bytes every program sends.
func Message(p instr.Params) warren.Publishing {
	return warren.Publishing{DeliveryMode: amqp.Transient, Body: instr.Body(p.Body)}
}

// Channel dials a Client and opens one Channel on it, in confirm mode when
// confirm is set.
func Channel(ctx context.Context, p instr.Params, name string, confirm bool) (*warren.Client, warren.Channel, error) {
	c, err := Dial(ctx, p, name)
	if err != nil {
		return nil, warren.Channel{}, err
	}
	ch, err := c.Channel(ctx)
	if err == nil && confirm {
		err = ch.SetMode(ctx, warren.ModeConfirm)
	}
	if err != nil {
		_ = c.Close(ctx)
		return nil, warren.Channel{}, err
	}
	return c, ch, nil
}
