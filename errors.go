package warren

import (
	"errors"
	"fmt"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ReplyCode is an AMQP 0-9-1 reply code, as carried by channel.close,
// connection.close and basic.return.
type ReplyCode int

// The AMQP 0-9-1 reply codes (spec section 1.2, "Constants").
const (
	CodeContentTooLarge    ReplyCode = 311
	CodeNoRoute            ReplyCode = 312
	CodeNoConsumers        ReplyCode = 313
	CodeConnectionForced   ReplyCode = 320
	CodeInvalidPath        ReplyCode = 402
	CodeAccessRefused      ReplyCode = 403
	CodeNotFound           ReplyCode = 404
	CodeResourceLocked     ReplyCode = 405
	CodePreconditionFailed ReplyCode = 406
	CodeFrameError         ReplyCode = 501
	CodeSyntaxError        ReplyCode = 502
	CodeCommandInvalid     ReplyCode = 503
	CodeChannelError       ReplyCode = 504
	CodeUnexpectedFrame    ReplyCode = 505
	CodeResourceError      ReplyCode = 506
	CodeNotAllowed         ReplyCode = 530
	CodeNotImplemented     ReplyCode = 540
	CodeInternalError      ReplyCode = 541
)

var codeNames = map[ReplyCode]string{
	CodeContentTooLarge:    "CONTENT_TOO_LARGE",
	CodeNoRoute:            "NO_ROUTE",
	CodeNoConsumers:        "NO_CONSUMERS",
	CodeConnectionForced:   "CONNECTION_FORCED",
	CodeInvalidPath:        "INVALID_PATH",
	CodeAccessRefused:      "ACCESS_REFUSED",
	CodeNotFound:           "NOT_FOUND",
	CodeResourceLocked:     "RESOURCE_LOCKED",
	CodePreconditionFailed: "PRECONDITION_FAILED",
	CodeFrameError:         "FRAME_ERROR",
	CodeSyntaxError:        "SYNTAX_ERROR",
	CodeCommandInvalid:     "COMMAND_INVALID",
	CodeChannelError:       "CHANNEL_ERROR",
	CodeUnexpectedFrame:    "UNEXPECTED_FRAME",
	CodeResourceError:      "RESOURCE_ERROR",
	CodeNotAllowed:         "NOT_ALLOWED",
	CodeNotImplemented:     "NOT_IMPLEMENTED",
	CodeInternalError:      "INTERNAL_ERROR",
}

// String returns the spec's name for the code, e.g. "NOT_FOUND".
func (c ReplyCode) String() string {
	if n, ok := codeNames[c]; ok {
		return n
	}
	return fmt.Sprintf("reply code %d", int(c))
}

// Level says which scope an error with this code closes.
type Level int

const (
	// LevelUnknown is the level of a code outside the AMQP 0-9-1 table.
	LevelUnknown Level = iota
	// LevelMessage codes (312, 313) come back on basic.return and close nothing.
	LevelMessage
	// LevelChannel codes are soft errors: the broker closes one channel and
	// the connection and its other channels go on.
	LevelChannel
	// LevelConnection codes are hard errors: the broker closes the whole
	// connection and every channel on it.
	LevelConnection
)

// String returns "message", "channel", "connection" or "unknown".
func (l Level) String() string {
	switch l {
	case LevelMessage:
		return "message"
	case LevelChannel:
		return "channel"
	case LevelConnection:
		return "connection"
	}
	return "unknown"
}

// Level classifies the code as the AMQP 0-9-1 spec does: 311 and 403–406 are
// soft (channel) errors, 320, 402 and 5xx are hard (connection) errors, and
// 312/313 are per-message return codes.
func (c ReplyCode) Level() Level {
	switch c {
	case CodeNoRoute, CodeNoConsumers:
		return LevelMessage
	case CodeContentTooLarge, CodeAccessRefused, CodeNotFound,
		CodeResourceLocked, CodePreconditionFailed:
		return LevelChannel
	case CodeConnectionForced, CodeInvalidPath, CodeFrameError,
		CodeSyntaxError, CodeCommandInvalid, CodeChannelError,
		CodeUnexpectedFrame, CodeResourceError, CodeNotAllowed,
		CodeNotImplemented, CodeInternalError:
		return LevelConnection
	}
	return LevelUnknown
}

// codeError is the type of the reply-code sentinels. ChannelError and
// ConnectionError match one with errors.Is when their code is equal.
type codeError struct{ code ReplyCode }

func (e *codeError) Error() string {
	return fmt.Sprintf("warren: %d %s", int(e.code), e.code)
}

// Code returns the reply code the sentinel stands for.
func (e *codeError) Code() ReplyCode { return e.code }

// Reply-code sentinels. errors.Is(err, ErrNotFound) holds for any
// *ChannelError or *ConnectionError that carries code 404, and so on.
var (
	ErrContentTooLarge    error = &codeError{CodeContentTooLarge}
	ErrNoRoute            error = &codeError{CodeNoRoute}
	ErrNoConsumers        error = &codeError{CodeNoConsumers}
	ErrConnectionForced   error = &codeError{CodeConnectionForced}
	ErrInvalidPath        error = &codeError{CodeInvalidPath}
	ErrAccessRefused      error = &codeError{CodeAccessRefused}
	ErrNotFound           error = &codeError{CodeNotFound}
	ErrResourceLocked     error = &codeError{CodeResourceLocked}
	ErrPreconditionFailed error = &codeError{CodePreconditionFailed}
	ErrFrameError         error = &codeError{CodeFrameError}
	ErrSyntaxError        error = &codeError{CodeSyntaxError}
	ErrCommandInvalid     error = &codeError{CodeCommandInvalid}
	ErrChannelError       error = &codeError{CodeChannelError}
	ErrUnexpectedFrame    error = &codeError{CodeUnexpectedFrame}
	ErrResourceError      error = &codeError{CodeResourceError}
	ErrNotAllowed         error = &codeError{CodeNotAllowed}
	ErrNotImplemented     error = &codeError{CodeNotImplemented}
	ErrInternalError      error = &codeError{CodeInternalError}
)

// Sentinels for conditions warren detects itself.
var (
	// ErrClientClosed is returned by every operation after Client.Close.
	ErrClientClosed = errors.New("warren: client closed")
	// ErrChannelClosed is returned by operations on a Channel after its own
	// Close returned.
	ErrChannelClosed = errors.New("warren: channel closed")
	// ErrConcurrentUse is returned when a goroutine calls into a Channel
	// while another call on it is still in progress (Close excepted: it
	// waits), and when a Delivery is settled while another settlement of it
	// is being sent. A Channel belongs to one goroutine at a time; use a
	// Pool to share channels.
	ErrConcurrentUse = errors.New("warren: concurrent use of a channel: a channel belongs to one goroutine at a time")
	// ErrChannelMax is returned (inside a *ChannelMaxError) when opening one
	// more channel than the connection's negotiated channel_max allows.
	ErrChannelMax = errors.New("warren: channel_max reached")
	// ErrPoisoned matches errors from a channel that warren closed because an
	// operation on it was abandoned when its context ended, leaving the
	// channel in an unknown state.
	ErrPoisoned = errors.New("warren: channel poisoned by an abandoned operation")
	// ErrConnectionLost matches a *ConnectionError caused by the network or
	// a protocol failure detected on the client side rather than by a
	// connection.close from the broker.
	ErrConnectionLost = errors.New("warren: connection lost")
	// ErrInvalidArgument matches errors for arguments warren refuses before
	// anything is sent to the broker.
	ErrInvalidArgument = errors.New("warren: invalid argument")
	// ErrReleased is returned by operations on a pooled Channel after its
	// lease was released (the channel may already serve another goroutine).
	ErrReleased = errors.New("warren: channel used after its lease was released")

	// ErrDeliveryVoid is wrapped, with the channel's cause, by Ack, Nack
	// or Reject of a Delivery whose channel is gone (closed, lost with its
	// connection, poisoned), or a Delivery fetched with Get on a pooled
	// Channel whose lease was released before the settlement (the error
	// then also matches ErrReleased: the pool discards a channel released
	// with unsettled deliveries): the broker returned the message to its
	// queue when the channel closed, and will deliver it again, so no
	// settlement of this Delivery can count any more.
	ErrDeliveryVoid = errors.New("warren: delivery void: its channel is gone and the broker has returned the message to the queue")
)

// ChannelError reports that the broker closed a channel (a soft error such as
// 404 NOT_FOUND or 406 PRECONDITION_FAILED). The connection and its other
// channels are unaffected. Every operation on the channel after the close,
// and its Close, return a *ChannelError carrying the same code and text.
//
// errors.Is(err, ErrNotFound) (and the other reply-code sentinels) match on
// Code.
type ChannelError struct {
	ChannelID uint16    // the channel number the broker closed
	Code      ReplyCode // the broker's reply code
	Reason    string    // the broker's reply text, e.g. "NOT_FOUND - no exchange 'x' in vhost '/'"
	Op        string    // the warren operation that observed the close, e.g. "queue.declare" or "close"
}

func (e *ChannelError) Error() string {
	if e.Op == "" {
		return fmt.Sprintf("warren: channel %d closed by broker: %d %s", e.ChannelID, int(e.Code), replyText(e.Code, e.Reason))
	}
	return fmt.Sprintf("warren: %s on channel %d: channel closed by broker: %d %s", e.Op, e.ChannelID, int(e.Code), replyText(e.Code, e.Reason))
}

// Is reports whether target is the reply-code sentinel for e.Code, or
// ErrAckTimeout for the broker's consumer-timeout close (406, "delivery
// acknowledgement on channel N timed out").
func (e *ChannelError) Is(target error) bool {
	if target == ErrAckTimeout {
		return e.Code == CodePreconditionFailed && strings.Contains(e.Reason, "delivery acknowledgement") && strings.Contains(e.Reason, "timed out")
	}
	ce, ok := target.(*codeError)
	return ok && ce.code == e.Code
}

// ConnectionError reports that the connection is gone: the broker sent
// connection.close (Server is true, Code is the broker's), or the network
// or a protocol failure ended it on the client side (Server is false and
// errors.Is(err, ErrConnectionLost) holds). Every channel of the connection
// and every waiting call returns it.
type ConnectionError struct {
	Code   ReplyCode // reply code; for client-side failures the code amqp091-go assigned (usually 501)
	Reason string    // the broker's reply text, or the local I/O error
	Server bool      // true when the broker closed the connection
	Op     string    // the warren operation that observed it
}

func (e *ConnectionError) Error() string {
	op := e.Op
	if op == "" {
		op = "connection"
	}
	if !e.Server {
		return fmt.Sprintf("warren: %s: connection lost: %s", op, e.Reason)
	}
	return fmt.Sprintf("warren: %s: connection closed by broker: %d %s", op, int(e.Code), replyText(e.Code, e.Reason))
}

// Is matches the reply-code sentinel for e.Code when the broker sent the
// close, and ErrConnectionLost when it did not.
func (e *ConnectionError) Is(target error) bool {
	if target == ErrConnectionLost {
		return !e.Server
	}
	ce, ok := target.(*codeError)
	return ok && e.Server && ce.code == e.Code
}

// ChannelMaxError reports that the connection has no free channel number:
// Max channels are open. The connection and its channels are unaffected.
type ChannelMaxError struct {
	Max uint16 // the negotiated channel_max
}

func (e *ChannelMaxError) Error() string {
	return fmt.Sprintf("warren: open channel: all %d channels allowed by the negotiated channel_max are in use", e.Max)
}

// Unwrap returns ErrChannelMax.
func (e *ChannelMaxError) Unwrap() error { return ErrChannelMax }

// PoisonedError is returned by every operation on a channel that warren closed
// because an earlier operation was abandoned when its context ended. The
// abandoned operation's own error wraps the context error and ErrPoisoned.
type PoisonedError struct {
	ChannelID uint16
	Op        string // the operation that was abandoned
	Cause     error  // the context error that ended it
}

func (e *PoisonedError) Error() string {
	return fmt.Sprintf("warren: channel %d is closed: %s was abandoned (%v) and left it in an unknown state", e.ChannelID, e.Op, e.Cause)
}

// Is matches ErrPoisoned.
func (e *PoisonedError) Is(target error) bool { return target == ErrPoisoned }

// CodeOf returns the AMQP reply code carried by err, if any.
func CodeOf(err error) (ReplyCode, bool) {
	var ch *ChannelError
	if errors.As(err, &ch) {
		return ch.Code, true
	}
	var conn *ConnectionError
	if errors.As(err, &conn) && conn.Server {
		return conn.Code, true
	}
	return 0, false
}

// IsChannelLevel reports whether err closed only a channel (the connection
// and its other channels are still usable).
func IsChannelLevel(err error) bool {
	var ch *ChannelError
	return errors.As(err, &ch)
}

// IsConnectionLevel reports whether err means the connection is gone.
func IsConnectionLevel(err error) bool {
	var conn *ConnectionError
	return errors.As(err, &conn) || errors.Is(err, ErrClientClosed)
}

// replyText renders the reply text led by the code name, as RabbitMQ writes
// it ("NOT_FOUND - ..."), adding the name when the text lacks it.
func replyText(code ReplyCode, text string) string {
	name := code.String()
	if strings.HasPrefix(text, name) {
		return text
	}
	if text == "" {
		return name
	}
	return name + " - " + text
}

// channelCause converts the broker's channel.close on channel id, as
// observed by op, into warren's type.
func channelCause(id uint16, op string, e *amqp.Error) *ChannelError {
	return &ChannelError{ChannelID: id, Code: ReplyCode(e.Code), Reason: e.Reason, Op: op}
}

func connectionCause(op string, e *amqp.Error) *ConnectionError {
	return &ConnectionError{Code: ReplyCode(e.Code), Reason: e.Reason, Server: e.Server, Op: op}
}

// Publish outcomes on confirm channels, and transactions.
var (
	// ErrNacked matches a *NackedError: the broker refused responsibility
	// for a message (basic.nack), e.g. a queue with x-overflow
	// reject-publish was full. The message was not enqueued.
	ErrNacked = errors.New("warren: publish nacked by the broker")
	// ErrUnroutable matches an *UnroutableError: a mandatory publish could
	// not be routed to any queue and came back on basic.return.
	ErrUnroutable = errors.New("warren: mandatory publish returned unroutable")
	// ErrOutcomeUnknown matches an *OutcomeUnknownError: the message was
	// sent but the broker's answer never arrived (the channel or connection
	// closed first, or the caller stopped waiting). It may or may not have
	// been enqueued; it is never reported as an ack or a nack.
	ErrOutcomeUnknown = errors.New("warren: publish outcome unknown")
	// ErrNotConfirmMode is returned by operations that need a channel in
	// confirm mode (see Channel.SetMode and PoolOptions.Mode).
	ErrNotConfirmMode = errors.New("warren: channel is not in confirm mode")
	// ErrTxDone is returned by every operation on a Tx after Commit or
	// Rollback, as database/sql's ErrTxDone: `defer tx.Rollback(ctx)` is
	// always safe.
	ErrTxDone = errors.New("warren: transaction has already been committed or rolled back")
	// ErrPublisherClosed is returned by a Publisher's Publish after Close.
	ErrPublisherClosed = errors.New("warren: publisher closed")
)

// NackedError reports a basic.nack for one publish: the broker did not take
// the message. errors.Is(err, ErrNacked) holds.
type NackedError struct {
	ChannelID   uint16
	DeliveryTag uint64 // the publish's sequence number on its channel
}

func (e *NackedError) Error() string {
	return fmt.Sprintf("warren: publish %d on channel %d nacked by the broker", e.DeliveryTag, e.ChannelID)
}

// Is matches ErrNacked.
func (e *NackedError) Is(target error) bool { return target == ErrNacked }

// UnroutableError reports that a mandatory publish came back on basic.return
// (312 NO_ROUTE: no queue is bound for its routing key). The broker acked it
// afterwards, but no queue holds it. errors.Is matches ErrUnroutable and the
// reply-code sentinel (ErrNoRoute, ErrNoConsumers).
type UnroutableError struct {
	ChannelID   uint16
	DeliveryTag uint64
	Code        ReplyCode // 312 NO_ROUTE or 313 NO_CONSUMERS
	Reason      string    // the broker's reply text
	Return      Return    // the message as the broker returned it
}

func (e *UnroutableError) Error() string {
	return fmt.Sprintf("warren: mandatory publish %d on channel %d returned unroutable (exchange %q, routing key %q): %d %s",
		e.DeliveryTag, e.ChannelID, e.Return.Exchange, e.Return.RoutingKey, int(e.Code), replyText(e.Code, e.Reason))
}

// Is matches ErrUnroutable and the sentinel for e.Code.
func (e *UnroutableError) Is(target error) bool {
	if target == ErrUnroutable {
		return true
	}
	ce, ok := target.(*codeError)
	return ok && ce.code == e.Code
}

// OutcomeUnknownError reports a publish, or a transaction commit, whose
// outcome nobody can know: the frames were written but the broker's answer
// never came, because the channel or the connection closed (Cause is the
// typed *ChannelError, *ConnectionError, ErrChannelClosed...) or because the
// caller's context ended (Cause is the context error). The message may have
// been enqueued. errors.Is matches ErrOutcomeUnknown and, through Unwrap,
// the cause.
type OutcomeUnknownError struct {
	ChannelID   uint16
	DeliveryTag uint64 // 0 for a transaction commit
	Op          string // "publish" or "tx.commit"
	Cause       error
}

func (e *OutcomeUnknownError) Error() string {
	what := fmt.Sprintf("publish %d on channel %d", e.DeliveryTag, e.ChannelID)
	if e.Op != "" && e.Op != "publish" {
		what = fmt.Sprintf("%s on channel %d", e.Op, e.ChannelID)
	}
	return fmt.Sprintf("warren: %s: outcome unknown (the broker may or may not have it): %v", what, e.Cause)
}

// Is matches ErrOutcomeUnknown.
func (e *OutcomeUnknownError) Is(target error) bool { return target == ErrOutcomeUnknown }

// Unwrap returns the cause.
func (e *OutcomeUnknownError) Unwrap() error { return e.Cause }

// ErrConsumerCancelled is returned by Consume when the broker cancelled the
// consumer (basic.cancel): the queue was deleted, or a quorum queue's leader
// moved and the consumer was not resubscribed. The connection and the
// channel were fine.
var ErrConsumerCancelled = errors.New("warren: consumer cancelled by the broker")

// ErrAckTimeout is matched (errors.Is) by the error of a consumer whose
// broker gave up waiting for an acknowledgement (RabbitMQ's consumer
// timeout: ConsumeOptions.AckTimeout, or the broker's consumer_timeout,
// 30 minutes by default). It has two shapes, depending on the broker:
//
//   - up to RabbitMQ 4.2, and for classic queues, the broker closes the
//     channel: a *ChannelError with code 406 (so also ErrPreconditionFailed)
//     whose text says "delivery acknowledgement ... timed out";
//   - from RabbitMQ 4.3, on quorum queues, the broker cancels just the
//     consumer (basic.cancel) and leaves the channel open: the error also
//     matches ErrConsumerCancelled. warren tells this cancel from others
//     (a deleted queue, say) only when AckTimeout is set: the consumer held
//     an unacknowledged delivery and its queue still exists.
//
// Either way the broker returned the unacknowledged messages to the queue:
// the handlers' ctx is cancelled at once, since their acks can no longer
// count.
var ErrAckTimeout = errors.New("warren: delivery acknowledgement timed out (consumer timeout)")

// ErrShutdownTimeout is wrapped by Consume's error when handlers were still
// running at the end of the shutdown bound. Their messages return to the
// queue and will be delivered again.
var ErrShutdownTimeout = errors.New("warren: handlers still running at the end of the shutdown bound")

// ErrAlreadySettled is returned when a Delivery is acked, nacked or
// rejected a second time. The broker would close the channel with 406
// PRECONDITION_FAILED ("unknown delivery tag"); warren refuses it first.
//
// A settlement counts only once its frame was handed to the socket: one that
// returned an error before sending anything (a cancelled ctx, concurrent
// use, a closed channel) leaves the delivery unsettled, and a retry is
// judged afresh.
var ErrAlreadySettled = errors.New("warren: delivery already acked, nacked or rejected")

// ErrBlocked matches a publish refused or abandoned because the broker has
// paused publishing: the connection is blocked (connection.blocked, sent
// when a memory or disk alarm goes off) or the channel's flow is off
// (channel.flow active=false). Nothing was sent.
var ErrBlocked = errors.New("warren: publishing paused by the broker (connection.blocked or channel.flow)")

// ErrModeConflict is returned when a channel is asked for a mode it cannot
// take: confirm mode on a tx channel, tx mode on a confirm channel. Nothing
// is sent to the broker.
var ErrModeConflict = errors.New("warren: confirm mode and tx mode cannot be mixed on one channel")

// Pool errors.
var (
	// ErrPoolClosed is returned by Acquire, TryAcquire and Do after Close.
	ErrPoolClosed = errors.New("warren: pool closed")
	// ErrPoolExhausted is returned by TryAcquire when every channel is
	// leased and no more may be opened.
	ErrPoolExhausted = errors.New("warren: pool exhausted: every channel is leased")
)

// Consumer handles (StartConsumer, StartBatchConsumer).

// ErrConsumerEnded is returned by a Consumer's Pause and Resume once the
// Consumer has ended (Cancel, the end of its Client, an error it could not
// recover from; its Err says which).
var ErrConsumerEnded = errors.New("warren: consumer ended")

// Credentials that change (WithCredentials, Client.UpdateSecret).

// ErrCredentialsProvider matches a dial attempt or a credential refresh
// that failed because the WithCredentials provider returned an error (also
// wrapped) or an empty Secret. Nothing was sent to the broker.
var ErrCredentialsProvider = errors.New("warren: credentials provider failed")

// ErrSecretRefused matches the error of Client.UpdateSecret (and of a
// refresh) when the broker refused the new secret: it closes the
// connection (530 NOT_ALLOWED on RabbitMQ), and the error also wraps that
// *ConnectionError.
var ErrSecretRefused = errors.New("warren: new secret refused by the broker")
