package warren

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Argument checks: everything warren hands to amqp091-go is checked here
// first, because what goes wrong after that costs more than the call.
// amqp091-go tears the whole connection down when it cannot encode a field
// (a short string over 255 bytes, a value of a type it has no encoding
// for); RabbitMQ closes the whole connection for a short string that is not
// UTF-8 in a method (501 FRAME_ERROR), a NaN or infinite float in a table
// (541 INTERNAL_ERROR), a frame over frame_max (501) and an unknown
// exchange type (503); and some values arrive changed, acked, with nothing
// to say so (a Go int beyond 32 bits, a time before 1970). Each check
// returns an error wrapping ErrInvalidArgument that names the operation
// and the field, and nothing has been sent.

const (
	// maxShortstr is the longest AMQP short string, in bytes.
	maxShortstr = 255
	// maxTableDepth and maxTableEntries are what amqp091-go's reader
	// accepts (maxFieldDepth and maxContainerElements in its read.go):
	// RabbitMQ takes a message beyond them, and then every amqp091-go
	// consumer it is delivered to loses its connection.
	maxTableDepth   = 32
	maxTableEntries = 8192
	// frameOverhead is what a frame adds to its payload: type, channel,
	// size, end octet.
	frameOverhead = 8
	// methodFixed is what a method frame's payload holds besides its short
	// strings and table: class and method ids, the reserved short, an
	// octet of flags. queue.unbind has no flags: methodFixedNoFlags.
	methodFixed        = 7
	methodFixedNoFlags = 6
)

// shortstrProblem says why s cannot be sent as an AMQP short string, or
// returns "". An invalid string is quoted with %q, so that the error never
// carries the raw bytes.
func shortstrProblem(s string) string {
	if len(s) > maxShortstr {
		return fmt.Sprintf("is %d bytes; AMQP allows at most %d", len(s), maxShortstr)
	}
	if !utf8.ValidString(s) {
		return fmt.Sprintf("%q is not valid UTF-8", s)
	}
	return ""
}

// checkNames refuses short strings AMQP cannot carry: over 255 bytes
// (amqp091-go fails the write and tears the connection down) or not UTF-8
// (RabbitMQ closes the connection with 501 FRAME_ERROR). pairs alternates
// a description and a value.
func checkNames(op string, pairs ...string) error {
	for i := 0; i+1 < len(pairs); i += 2 {
		if p := shortstrProblem(pairs[i+1]); p != "" {
			return fmt.Errorf("%w: %s: %s %s", ErrInvalidArgument, op, pairs[i], p)
		}
	}
	return nil
}

// checkKind refuses an exchange type RabbitMQ cannot know. An unknown type
// is not a channel error: RabbitMQ closes the whole connection (503
// COMMAND_INVALID). Types beyond the four built-in ones come from plugins,
// and are named "x-..." by convention; such a type still reaches the
// broker, which knows what plugins it has. A passive declaration does not
// look at the type.
func checkKind(op, kind string, passive bool) error {
	if p := shortstrProblem(kind); p != "" {
		return fmt.Errorf("%w: %s: exchange type %s", ErrInvalidArgument, op, p)
	}
	if passive {
		return nil
	}
	switch kind {
	case ExchangeDirect, ExchangeFanout, ExchangeTopic, ExchangeHeaders:
		return nil
	}
	if strings.HasPrefix(kind, "x-") {
		return nil
	}
	return fmt.Errorf("%w: %s: exchange type %q is neither built in (direct, fanout, topic, headers) nor a plugin's \"x-...\" type; RabbitMQ would close the connection (503)", ErrInvalidArgument, op, kind)
}

// checkTable checks a field table before it is sent (see scanField for
// what is refused), and returns the table to send and its encoded size.
// The table to send is t itself, unless t holds a Go int outside the int32
// range: amqp091-go would write it as a 32-bit integer, truncated, so it
// goes as an int64 in a copy of t (the caller's map is never changed, and
// nothing is allocated when no int needs it). what names the table in
// errors ("arguments", "headers").
func checkTable(op, what string, t Table) (Table, int, error) {
	if t == nil {
		return nil, 4, nil
	}
	size, widen, err := scanTable(t, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %s: %s%v", ErrInvalidArgument, op, what, err)
	}
	if widen {
		t = widenTable(t)
	}
	return t, size, nil
}

// fieldError is a refused table value or key, with where it is.
type fieldError struct {
	path []string // innermost first: built while the scan unwinds
	msg  string
}

func (e *fieldError) Error() string {
	var b strings.Builder
	for i := len(e.path) - 1; i >= 0; i-- {
		b.WriteString(e.path[i])
	}
	b.WriteString(": ")
	b.WriteString(e.msg)
	return b.String()
}

func (e *fieldError) in(step string) *fieldError {
	e.path = append(e.path, step)
	return e
}

func refuse(format string, args ...any) *fieldError {
	return &fieldError{msg: fmt.Sprintf(format, args...)}
}

// scanTable checks the entries of t, a table at nesting depth depth (0
// for the top-level table), and returns its encoded size (length prefix
// included) and whether an int in it must be widened.
func scanTable(t Table, depth int) (size int, widen bool, err *fieldError) {
	if len(t) > maxTableEntries {
		return 0, false, refuse("a table of %d entries; amqp091-go consumers read at most %d and would lose their connection", len(t), maxTableEntries)
	}
	size = 4
	for k, v := range t {
		if p := shortstrProblem(k); p != "" {
			return 0, false, refuse("key %s", p)
		}
		n, w, err := scanField(v, depth)
		if err != nil {
			return 0, false, err.in(fmt.Sprintf("[%q]", k))
		}
		size += 1 + len(k) + n
		widen = widen || w
	}
	return size, widen, nil
}

// scanField checks one value of a table or array at nesting depth depth
// and returns its encoded size (type octet included) and whether it, or
// something in it, is an int to widen. It refuses:
//
//   - a type amqp091-go cannot encode (it would tear the connection down),
//     among them uint, uint64 and map[string]any (use int64 or uint32,
//     and Table);
//   - NaN and ±Inf, float32 or float64 (RabbitMQ closes the connection,
//     541 INTERNAL_ERROR);
//   - a time.Time before 1970 (the AMQP timestamp is unsigned seconds:
//     other clients would read a date billions of years ahead);
//   - nesting deeper than 32 tables or arrays, or a table or array of more
//     than 8192 entries (amqp091-go consumers cannot read them back);
//   - a table key that is not a short string (over 255 bytes, not UTF-8).
func scanField(v any, depth int) (size int, widen bool, err *fieldError) {
	switch v := v.(type) {
	case nil:
		return 1, false, nil
	case bool, int8, uint8:
		return 2, false, nil
	case int16, uint16:
		return 3, false, nil
	case int32, uint32:
		return 5, false, nil
	case int64:
		return 9, false, nil
	case int:
		if v < math.MinInt32 || v > math.MaxInt32 {
			return 9, true, nil
		}
		return 5, false, nil
	case float32:
		if f := float64(v); math.IsNaN(f) || math.IsInf(f, 0) {
			return 0, false, refuse("float32 %v: RabbitMQ closes the connection on a NaN or infinite float", v)
		}
		return 5, false, nil
	case float64:
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return 0, false, refuse("float64 %v: RabbitMQ closes the connection on a NaN or infinite float", v)
		}
		return 9, false, nil
	case Decimal:
		return 6, false, nil
	case string:
		return 5 + len(v), false, nil
	case []byte:
		return 5 + len(v), false, nil
	case time.Time:
		if v.Unix() < 0 {
			return 0, false, refuse("time %s is before 1970: the AMQP timestamp is unsigned seconds", v.UTC().Format(time.RFC3339))
		}
		return 9, false, nil
	case Table:
		if depth >= maxTableDepth {
			return 0, false, refuse("tables and arrays nested more than %d deep; amqp091-go consumers could not read them and would lose their connection", maxTableDepth)
		}
		n, w, err := scanTable(v, depth+1)
		return 1 + n, w, err
	case []any:
		if depth >= maxTableDepth {
			return 0, false, refuse("tables and arrays nested more than %d deep; amqp091-go consumers could not read them and would lose their connection", maxTableDepth)
		}
		if len(v) > maxTableEntries {
			return 0, false, refuse("an array of %d values; amqp091-go consumers read at most %d and would lose their connection", len(v), maxTableEntries)
		}
		size = 5
		for i, f := range v {
			n, w, err := scanField(f, depth+1)
			if err != nil {
				return 0, false, err.in("[" + strconv.Itoa(i) + "]")
			}
			size += n
			widen = widen || w
		}
		return size, widen, nil
	case uint, uint64, uintptr:
		return 0, false, refuse("%T is not an AMQP field type (send an int64, or a uint32 if it fits)", v)
	case map[string]any:
		return 0, false, refuse("%T is not an AMQP field type (use warren.Table)", v)
	}
	return 0, false, refuse("%T is not an AMQP field type", v)
}

// widenTable returns a copy of t in which every int outside the int32
// range, at any depth, is an int64. Only called when scanTable said so.
func widenTable(t Table) Table {
	out := make(Table, len(t))
	for k, v := range t {
		out[k] = widenField(v)
	}
	return out
}

func widenField(v any) any {
	switch v := v.(type) {
	case int:
		if v < math.MinInt32 || v > math.MaxInt32 {
			return int64(v)
		}
	case Table:
		return widenTable(v)
	case []any:
		out := make([]any, len(v))
		for i, f := range v {
			out[i] = widenField(f)
		}
		return out
	}
	return v
}

// checkMessage refuses a message that amqp091-go would fail to encode
// only after taking the connection down, that RabbitMQ would answer by
// closing the connection or the channel, or that would arrive changed.
// Whether it fits the connection's frame_max is checked as it is encoded
// (encodePublish).
func checkMessage(op string, m *Message) error {
	_, _, err := checkPublishing(op, m.Exchange, m.Key, &m.Publishing)
	return err
}

// checkPublishing checks a message's exchange, routing key and properties
// (see checkMessage) and returns the encoded size of its headers table
// (0 without headers) and whether an int in them must be widened.
func checkPublishing(op, exchange, key string, msg *Publishing) (int, bool, error) {
	if err := checkNames(op, "exchange", exchange, "routing key", key,
		"content type", msg.ContentType, "content encoding", msg.ContentEncoding,
		"correlation id", msg.CorrelationId, "reply-to", msg.ReplyTo,
		"expiration", msg.Expiration, "message id", msg.MessageId,
		"type", msg.Type, "user id", msg.UserId, "app id", msg.AppId); err != nil {
		return 0, false, err
	}
	if msg.DeliveryMode > Persistent {
		return 0, false, fmt.Errorf("%w: %s: delivery mode %d is neither Transient (1) nor Persistent (2)", ErrInvalidArgument, op, msg.DeliveryMode)
	}
	if msg.Expiration != "" && !validExpiration(msg.Expiration) {
		// RabbitMQ closes the channel (406 PRECONDITION_FAILED), and with
		// it every publish awaiting a confirm on it.
		return 0, false, fmt.Errorf("%w: %s: expiration %q is not a whole number of milliseconds from 0 to %d (ten years)", ErrInvalidArgument, op, msg.Expiration, maxExpiration)
	}
	if !msg.Timestamp.IsZero() && msg.Timestamp.Unix() < 0 {
		return 0, false, fmt.Errorf("%w: %s: timestamp %s is before 1970: the AMQP timestamp is unsigned seconds", ErrInvalidArgument, op, msg.Timestamp.UTC().Format(time.RFC3339))
	}
	if len(msg.Headers) == 0 {
		return 0, false, nil
	}
	size, widen, err := scanTable(msg.Headers, 0)
	if err != nil {
		return 0, false, fmt.Errorf("%w: %s: headers%v", ErrInvalidArgument, op, err)
	}
	return size, widen, nil
}

// maxExpiration is the largest message TTL RabbitMQ takes, in
// milliseconds: ten years (3.10 and 4.3 answer anything above with a 406
// that closes the channel, and with it every confirm pending on it).
const maxExpiration = 315360000000

// validExpiration reports whether RabbitMQ takes s as a message TTL: an
// optionally signed decimal integer that is not negative and at most
// maxExpiration.
func validExpiration(s string) bool {
	if !validExpirationSyntax(s) {
		return false
	}
	n, err := strconv.ParseInt(strings.TrimLeft(strings.TrimPrefix(s, "+"), "-"), 10, 64)
	return err == nil && n <= maxExpiration
}

func validExpirationSyntax(s string) bool {
	neg := false
	switch s[0] {
	case '-':
		neg = true
		s = s[1:]
	case '+':
		s = s[1:]
	}
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
		if neg && s[i] != '0' {
			return false
		}
	}
	return true
}

// maxPayload returns the largest frame payload the connection carries, or
// 0 if the broker set no limit.
func (c *session) maxPayload() int {
	if c == nil || c.conn == nil || c.conn.Config.FrameSize <= 0 {
		return 0
	}
	return c.conn.Config.FrameSize - frameOverhead
}

// checkFrame refuses a frame whose payload is larger than the connection's
// frame_max allows: RabbitMQ closes the connection (501 FRAME_ERROR).
func (c *session) checkFrame(op, what string, payload int) error {
	if max := c.maxPayload(); max > 0 && payload > max {
		return fmt.Errorf("%w: %s: the %s frame would be %d bytes; the connection's frame_max allows %d (RabbitMQ would close the connection)", ErrInvalidArgument, op, what, payload, max)
	}
	return nil
}

// checkMethod checks a method that carries a field table before it is
// sent: its short strings (pairs, as in checkNames), its table (see
// checkTable), and that all of it fits in one frame, with fixed the size
// of its other fields. It returns the table to send.
func (c *session) checkMethod(op string, fixed int, t Table, pairs ...string) (Table, error) {
	if err := checkNames(op, pairs...); err != nil {
		return nil, err
	}
	t, size, err := checkTable(op, "arguments", t)
	if err != nil {
		return nil, err
	}
	payload := fixed + size
	for i := 1; i < len(pairs); i += 2 {
		payload += 1 + len(pairs[i])
	}
	if err := c.checkFrame(op, "method", payload); err != nil {
		return nil, err
	}
	return t, nil
}

// checkMethod is session.checkMethod on the channel's connection. The zero
// Channel has none: the frame is not checked, and the operation reports
// the zero Channel.
func (ch Channel) checkMethod(op string, fixed int, t Table, pairs ...string) (Table, error) {
	var c *session
	if ch.s != nil {
		c = ch.s.c
	}
	return c.checkMethod(op, fixed, t, pairs...)
}
