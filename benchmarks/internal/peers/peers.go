// Package peers holds what the broker suites share about the other Go
// RabbitMQ libraries warren is compared with: their contender names, why
// one of them is in no table, and how github.com/wagslane/go-rabbitmq is
// connected.
package peers

import (
	"fmt"
	"log"

	amqp "github.com/rabbitmq/amqp091-go"
	rabbitmq "github.com/wagslane/go-rabbitmq"
)

// Contender names.
const (
	GoRabbitMQ = "go-rabbitmq" // github.com/wagslane/go-rabbitmq
	Amqpx      = "amqpx"       // github.com/jxsl13/amqpx
)

// AmqpxNotRun is why amqpx has no numbers, short enough for a table cell:
// its module cannot be fetched here (the Go module proxy answers 403 Forbidden,
// "This module version is not available", for github.com/jxsl13/amqpx).
const AmqpxNotRun = "module unavailable here (Go module proxy: 403)"

// AmqpxDoc says the same in a suite's description.
const AmqpxDoc = "amqpx (github.com/jxsl13/amqpx): not run, its module cannot be fetched on this machine (the Go " +
	"module proxy answers 403 Forbidden, \"This module version is not available\")."

// NotRun returns the NotRun entries of a case whose contenders were not
// chosen by hand (selected is empty): amqpx, with its reason.
func NotRun(selected []string) map[string]string {
	if len(selected) > 0 {
		return nil
	}
	return map[string]string{Amqpx: AmqpxNotRun}
}

// Check refuses amqpx when it is chosen by hand.
func Check(selected []string) error {
	for _, name := range selected {
		if name == Amqpx {
			return fmt.Errorf("contender %s: %s", Amqpx, AmqpxNotRun)
		}
	}
	return nil
}

// DialGoRabbitMQ opens a go-rabbitmq connection that RabbitMQ shows as
// name, with go-rabbitmq's routine logging (every channel it opens or
// closes) off; warnings and errors still go to the log.
func DialGoRabbitMQ(url, name string) (*rabbitmq.Conn, error) {
	return rabbitmq.NewConn(url,
		rabbitmq.WithConnectionOptionsLogger(Quiet),
		rabbitmq.WithConnectionOptionsConfig(rabbitmq.Config{Properties: amqp.Table{"connection_name": name}}))
}

// Quiet is a go-rabbitmq logger that drops info and debug lines.
var Quiet rabbitmq.Logger = quiet{}

type quiet struct{}

func (quiet) Fatalf(format string, v ...any) { log.Printf("go-rabbitmq FATAL: "+format, v...) }
func (quiet) Errorf(format string, v ...any) { log.Printf("go-rabbitmq ERROR: "+format, v...) }
func (quiet) Warnf(format string, v ...any)  { log.Printf("go-rabbitmq WARN: "+format, v...) }
func (quiet) Infof(string, ...any)           {}
func (quiet) Debugf(string, ...any)          {}
