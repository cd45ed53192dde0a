package warren

import (
	"fmt"
	"time"
)

// Outcome is how a confirmed publish ended, for metrics.
type Outcome int

const (
	OutcomeAcked      Outcome = iota // the broker acked
	OutcomeNacked                    // the broker nacked (ErrNacked)
	OutcomeUnroutable                // a mandatory message came back (ErrUnroutable)
	OutcomeUnknown                   // the channel or connection closed first (ErrOutcomeUnknown)
)

// String returns "acked", "nacked", "unroutable" or "unknown".
func (o Outcome) String() string {
	switch o {
	case OutcomeAcked:
		return "acked"
	case OutcomeNacked:
		return "nacked"
	case OutcomeUnroutable:
		return "unroutable"
	case OutcomeUnknown:
		return "unknown"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// MetricsHook receives the per-event figures a Stats snapshot cannot give
// (gauges and counters are in Client.Stats, Pool.Stats and Publisher.Stats;
// poll those). Every field may be nil. The functions are called
// synchronously, some on amqp091-go's frame reader, so they must be cheap
// and must not block: record into a histogram or counter and return.
//
// The otelwarren module (github.com/warrenmq/warren/otelwarren) adapts this
// and the Stats snapshots to OpenTelemetry, so that warren itself depends on
// nothing but amqp091-go.
type MetricsHook struct {
	// PublishConfirmed is called once per publish on a confirm channel
	// (Channel or Publisher) when its outcome is known, with the time from
	// the publish's write to the broker's answer.
	PublishConfirmed func(outcome Outcome, latency time.Duration)
	// PoolAcquired is called for every successful Pool.Acquire with the
	// time the caller waited for a channel (including opening one).
	PoolAcquired func(mode Mode, wait time.Duration)
	// ChannelOpened and ChannelClosed count channel churn on the
	// connection, the figure RabbitMQ's monitoring guide asks operators to
	// watch (a steady stream of opens means channels are being leaked or
	// discarded).
	ChannelOpened func(id uint16)
	ChannelClosed func(id uint16)
	// Reconnected is called when a reconnecting Client (WithReconnect) has
	// a new connection, with the dials it took and how long publishing
	// and consuming were without a connection.
	Reconnected func(attempts int, downtime time.Duration)
	// CredentialsRefreshed is called for every attempt of the credential
	// refresher (WithCredentialRefresh), with whether it succeeded and how
	// long the provider and update-secret took.
	CredentialsRefreshed func(ok bool, took time.Duration)
}

// outcomeOf classifies a confirmation's result.
func outcomeOf(err error) Outcome {
	switch err.(type) {
	case nil:
		return OutcomeAcked
	case *NackedError:
		return OutcomeNacked
	case *UnroutableError:
		return OutcomeUnroutable
	}
	return OutcomeUnknown
}
