// Package peers holds what the broker suites share: the other Go RabbitMQ
// libraries warren is compared with (their contender names, why one of them
// is in no table, how github.com/wagslane/go-rabbitmq is connected), the
// choice of contenders, and the suites' admin connection.
package peers

import (
	"fmt"
	"log"
	"slices"

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

// Selection is the contenders a broker suite runs.
type Selection struct {
	Names    []string          // in order
	Baseline string            // the ratios' denominator: known[0] if it runs, else Names[0]
	NotRun   map[string]string // the NotRun entries of the suite's cases
}

// Select returns the contenders of suite family: chosen (by hand, checked
// against known) or, when none were chosen, all of known; then amqpx is
// listed as not run, with its reason. amqpx chosen by hand is refused.
func Select(family string, chosen, known []string) (Selection, error) {
	if len(chosen) == 0 {
		return Selection{Names: known, Baseline: known[0], NotRun: map[string]string{Amqpx: AmqpxNotRun}}, nil
	}
	for _, name := range chosen {
		if name == Amqpx {
			return Selection{}, fmt.Errorf("contender %s: %s", Amqpx, AmqpxNotRun)
		}
		if !slices.Contains(known, name) {
			return Selection{}, fmt.Errorf("%s contender %s: unknown (have %v)", family, name, known)
		}
	}
	base := known[0]
	if !slices.Contains(chosen, base) {
		base = chosen[0]
	}
	return Selection{Names: chosen, Baseline: base}, nil
}

// Has reports whether every one of names runs.
func (s Selection) Has(names ...string) bool {
	for _, n := range names {
		if !slices.Contains(s.Names, n) {
			return false
		}
	}
	return true
}

// DialAdmin opens the connection and channel a suite of family uses to
// declare, purge and check outside the timed part; RabbitMQ shows it as
// warrenbench-<family>-admin.
func DialAdmin(url, family string) (*amqp.Connection, *amqp.Channel, error) {
	conn, err := amqp.DialConfig(url, amqp.Config{
		Properties: amqp.Table{"connection_name": "warrenbench-" + family + "-admin"},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("admin connection: %w", err)
	}
	ch, err := conn.Channel()
	if err != nil {
		_ = conn.Close()
		return nil, nil, fmt.Errorf("admin channel: %w", err)
	}
	return conn, ch, nil
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
