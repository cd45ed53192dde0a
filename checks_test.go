package warren

import (
	"context"
	"errors"
	"math"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	fb "github.com/warrenmq/warren/internal/fakebroker"
)

// Unit tests of checks.go: first the checks themselves, then every call
// site through a Client talking to the scripted broker, which records what
// reached the wire.

const checksBound = 10 * time.Second

// Short strings of every kind a test feeds to a field.
var (
	badUTF8 = "q-\xff\xfe"
	max255  = strings.Repeat("a", 255)
	over255 = strings.Repeat("a", 256)
)

func TestShortstrProblem(t *testing.T) {
	euro255 := strings.Repeat("€", 85) // 3 bytes each
	for _, tc := range []struct {
		s    string
		want string // "" for accepted, else a word of the reason
	}{
		{"", ""},
		{"orders", ""},
		{"héllo-wörld", ""},
		{max255, ""},
		{euro255, ""},
		{over255, "256 bytes"},
		{euro255 + "a", "256 bytes"},
		{badUTF8, "not valid UTF-8"},
		{"\xc3", "not valid UTF-8"},         // a sequence cut short
		{"\xed\xa0\x80", "not valid UTF-8"}, // a surrogate
		{"\xc0\xaf", "not valid UTF-8"},     // an overlong encoding
	} {
		got := shortstrProblem(tc.s)
		switch {
		case tc.want == "" && got != "":
			t.Errorf("shortstrProblem(%q): got %q, want accepted", tc.s, got)
		case tc.want != "" && !strings.Contains(got, tc.want):
			t.Errorf("shortstrProblem(%q): got %q, want it to say %q", tc.s[:min(len(tc.s), 20)], got, tc.want)
		case !utf8.ValidString(got):
			t.Errorf("shortstrProblem(%q): the reason %q carries invalid UTF-8: it must be quoted", tc.s, got)
		}
	}
}

func TestExchangeTypeIsBuiltInOrAPluginsAndAShortString(t *testing.T) {
	for _, tc := range []struct {
		kind    string
		passive bool
		ok      bool
	}{
		{ExchangeDirect, false, true}, {ExchangeFanout, false, true}, {ExchangeTopic, false, true},
		{ExchangeHeaders, false, true}, {"x-consistent-hash", false, true}, {"x-delayed-message", false, true},
		{"", false, false}, {"Direct", false, false}, {"topics", false, false},
		{"", true, true}, {"anything", true, true}, // passive: RabbitMQ ignores the type
		{"x-" + badUTF8, false, false}, {"x-" + badUTF8, true, false},
		{"x-" + over255, false, false}, {"x-" + over255, true, false},
	} {
		err := checkKind("exchange.declare", tc.kind, tc.passive)
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrInvalidArgument)) {
			t.Errorf("checkKind(%.20q, passive %v): got %v, want accepted %v", tc.kind, tc.passive, err, tc.ok)
		}
	}
}

func TestExpirationMustBeAWholeNonNegativeNumberOfMilliseconds(t *testing.T) {
	// What RabbitMQ 3.10.8 takes (measured): an optionally signed decimal
	// integer, not negative, at most ten years. Anything else closes the
	// channel (406).
	for s, ok := range map[string]bool{
		"0": true, "60000": true, "+5": true, "-0": true, "007": true, strings.Repeat("0", 254) + "1": true,
		"315360000000": true, "+315360000000": true, "315360000001": false, strings.Repeat("1", 255): false,
		"-1": false, "abc": false, "1.5": false, " 1": false, "1 ": false, "1e3": false, "+": false, "-": false,
		"0x10": false, "１": false,
	} {
		msg := Publishing{Expiration: s}
		_, _, err := checkPublishing("basic.publish", "", "q", &msg)
		if ok != (err == nil) {
			t.Errorf("Expiration %q: got %v, want accepted %v", s, err, ok)
		}
	}
}

func TestTimestampBefore1970IsRefused(t *testing.T) {
	for _, tc := range []struct {
		ts time.Time
		ok bool
	}{
		{time.Time{}, true}, // not set
		{time.Unix(0, 0), true},
		{time.Unix(1700000000, 999), true},
		{time.Unix(-1, 0), false},
		{time.Date(1969, 12, 31, 23, 59, 59, 0, time.UTC), false},
	} {
		msg := Publishing{Timestamp: tc.ts}
		_, _, err := checkPublishing("basic.publish", "", "q", &msg)
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrInvalidArgument)) {
			t.Errorf("Timestamp %v: got %v, want accepted %v", tc.ts, err, tc.ok)
		}
	}
}

// nested puts v at depth levels below the top-level table, alternating
// tables and arrays.
func nested(v any, depth int) Table {
	for i := depth; i > 0; i-- {
		if i%2 == 0 {
			v = []any{v}
		} else {
			v = Table{"n": v}
		}
	}
	return Table{"v": v}
}

func TestEveryTableValueTypeAtEveryDepth(t *testing.T) {
	type weird struct{ A int }
	for _, tc := range []struct {
		name string
		v    any
		want string // "" for accepted, else a word of the reason
	}{
		{"nil", nil, ""},
		{"bool", true, ""},
		{"int8", int8(-128), ""},
		{"uint8", uint8(255), ""},
		{"int16", int16(math.MinInt16), ""},
		{"uint16", uint16(math.MaxUint16), ""},
		{"int32", int32(math.MinInt32), ""},
		{"uint32", uint32(math.MaxUint32), ""},
		{"int64", int64(math.MinInt64), ""},
		{"int small", 5, ""},
		{"int beyond int32", 5_000_000_000, ""},
		{"int below int32", -1 << 40, ""},
		{"float32", float32(1.5), ""},
		{"float32 max", float32(math.MaxFloat32), ""},
		{"float64 negative zero", math.Copysign(0, -1), ""},
		{"float64 smallest", math.SmallestNonzeroFloat64, ""},
		{"float32 NaN", float32(math.NaN()), "NaN"},
		{"float32 +Inf", float32(math.Inf(1)), "Inf"},
		{"float32 -Inf", float32(math.Inf(-1)), "Inf"},
		{"float64 NaN", math.NaN(), "NaN"},
		{"float64 +Inf", math.Inf(1), "Inf"},
		{"float64 -Inf", math.Inf(-1), "Inf"},
		{"string", "héllo", ""},
		{"string not UTF-8", "\xff\xfe", ""}, // a long string: any bytes
		{"[]byte", []byte{0, 0xff}, ""},
		{"Decimal", amqp.Decimal{Scale: 255, Value: math.MinInt32}, ""},
		{"time", time.Unix(1700000000, 5), ""},
		{"time 1970", time.Unix(0, 0), ""},
		{"time before 1970", time.Unix(-1, 0), "before 1970"},
		{"time zero", time.Time{}, "before 1970"},
		{"Table", Table{"a": int32(1)}, ""},
		{"empty Table", Table{}, ""},
		{"[]any", []any{1, "x", nil, []any{}}, ""},
		{"uint", uint(1), "uint is not an AMQP field type"},
		{"uint64", uint64(1), "uint64 is not an AMQP field type"},
		{"uintptr", uintptr(1), "uintptr is not"},
		{"map[string]any", map[string]any{"a": 1}, "use warren.Table"},
		{"[]string", []string{"a"}, "[]string is not"},
		{"[]int", []int{1}, "[]int is not"},
		{"struct", weird{1}, "weird is not"},
		{"pointer", new(int32), "*int32 is not"},
		{"NaN in a table in an array", []any{Table{"f": math.NaN()}}, "NaN"},
	} {
		for depth := 0; depth <= 3; depth++ {
			tbl := nested(tc.v, depth)
			wire, size, err := checkTable("basic.publish", "headers", tbl)
			if tc.want == "" {
				if err != nil {
					t.Errorf("%s at depth %d: got %v, want accepted", tc.name, depth, err)
				} else if wire == nil || size < 4 {
					t.Errorf("%s at depth %d: got table %v, size %d", tc.name, depth, wire, size)
				}
				continue
			}
			if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s at depth %d: got %v, want ErrInvalidArgument saying %q", tc.name, depth, err, tc.want)
				continue
			}
			if !strings.Contains(err.Error(), `headers["v"]`) || !strings.Contains(err.Error(), "basic.publish") {
				t.Errorf("%s at depth %d: %q does not name the operation and where the value is", tc.name, depth, err)
			}
		}
	}
}

func TestEncodedSizeIsAmqp091GosOwn(t *testing.T) {
	// A table's size is what amqp091-go writes for it: checked by the frame
	// tests against the wire; here against the value types one by one.
	for _, tc := range []struct {
		v    any
		size int
	}{
		{nil, 1}, {true, 2}, {int8(1), 2}, {uint8(1), 2}, {int16(1), 3}, {uint16(1), 3},
		{int32(1), 5}, {uint32(1), 5}, {int64(1), 9}, {1, 5}, {1 << 40, 9}, {float32(1), 5}, {1.0, 9},
		{amqp.Decimal{}, 6}, {"abc", 8}, {[]byte("abc"), 8}, {time.Unix(1, 0), 9},
		{Table{"k": int32(1)}, 1 + 4 + 2 + 5}, {[]any{int32(1), nil}, 1 + 4 + 5 + 1},
	} {
		_, size, err := checkTable("op", "headers", Table{"v": tc.v})
		if want := 4 + 2 + tc.size; err != nil || size != want {
			t.Errorf("%T %v: got size %d, err %v; want %d", tc.v, tc.v, size, err, want)
		}
	}
}

func TestTableKeysAreShortStringsAtEveryDepth(t *testing.T) {
	for _, tc := range []struct {
		key  string
		want string
	}{
		{max255, ""},
		{"ключ", ""},
		{over255, "256 bytes"},
		{badUTF8, `"q-\xff\xfe" is not valid UTF-8`},
	} {
		for depth := 0; depth <= 3; depth++ {
			var tbl Table
			if depth == 0 {
				tbl = Table{tc.key: 1}
			} else {
				tbl = nested(Table{tc.key: 1}, depth-1)
			}
			_, _, err := checkTable("queue.declare", "arguments", tbl)
			if tc.want == "" {
				if err != nil {
					t.Errorf("key %.20q at depth %d: got %v, want accepted", tc.key, depth, err)
				}
				continue
			}
			if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("key %.20q at depth %d: got %v, want ErrInvalidArgument saying %q", tc.key, depth, err, tc.want)
			}
			if err != nil && !utf8.ValidString(err.Error()) {
				t.Errorf("key %.20q at depth %d: error %q carries the raw bytes", tc.key, depth, err)
			}
		}
	}
}

func TestTablesAmqp091GoCannotReadBackAreRefused(t *testing.T) {
	// amqp091-go's reader refuses nesting beyond 32 and containers beyond
	// 8192 entries, and takes the connection down: a consumer could never
	// get such a message.
	if _, _, err := checkTable("op", "headers", nested(int32(1), maxTableDepth)); err != nil {
		t.Errorf("nesting %d deep: got %v, want accepted", maxTableDepth, err)
	}
	if _, _, err := checkTable("op", "headers", nested(int32(1), maxTableDepth+1)); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("nesting %d deep: got %v, want ErrInvalidArgument", maxTableDepth+1, err)
	}
	// A table nested in itself ends at the depth limit, not in a stack overflow.
	loop := Table{}
	loop["self"] = loop
	if _, _, err := checkTable("op", "headers", loop); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("a table holding itself: got %v, want ErrInvalidArgument", err)
	}
	big := make(Table, maxTableEntries+1)
	arr := make([]any, maxTableEntries+1)
	for i := range maxTableEntries + 1 {
		big[strconv.Itoa(i)] = nil
	}
	if len(big) != maxTableEntries+1 {
		t.Fatalf("built %d entries", len(big))
	}
	if _, _, err := checkTable("op", "headers", big); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("a table of %d entries: got %v, want ErrInvalidArgument", len(big), err)
	}
	if _, _, err := checkTable("op", "headers", Table{"a": arr}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("an array of %d values: got %v, want ErrInvalidArgument", len(arr), err)
	}
	for k := range big {
		delete(big, k)
		break
	}
	if _, _, err := checkTable("op", "headers", big); err != nil {
		t.Errorf("a table of %d entries: got %v, want accepted", len(big), err)
	}
	if _, _, err := checkTable("op", "headers", Table{"a": arr[:maxTableEntries]}); err != nil {
		t.Errorf("an array of %d values: got %v, want accepted", maxTableEntries, err)
	}
}

func TestWideIntsGoAsInt64InACopyAndTheCallersTableIsUntouched(t *testing.T) {
	inner := Table{"big": -1 << 40, "small": 7}
	arr := []any{1 << 33, int32(2), Table{"big": math.MaxInt32 + 1}}
	caller := Table{"big": 5_000_000_000, "small": 5, "edge": math.MaxInt32, "low": math.MinInt32,
		"inner": inner, "arr": arr, "s": "x"}
	before := reflect.ValueOf(caller).Pointer()

	wire, _, err := checkTable("basic.publish", "headers", caller)
	if err != nil {
		t.Fatal(err)
	}
	want := Table{"big": int64(5_000_000_000), "small": 5, "edge": math.MaxInt32, "low": math.MinInt32,
		"inner": Table{"big": int64(-1 << 40), "small": 7},
		"arr":   []any{int64(1 << 33), int32(2), Table{"big": int64(math.MaxInt32 + 1)}}, "s": "x"}
	if !reflect.DeepEqual(wire, want) {
		t.Errorf("table to send:\n got %#v\nwant %#v", wire, want)
	}
	if reflect.ValueOf(wire).Pointer() == before {
		t.Errorf("the table to send is the caller's map: it must be a copy")
	}
	// The caller's table, and everything in it, is as it was.
	if caller["big"] != 5_000_000_000 || inner["big"] != -1<<40 || arr[0] != 1<<33 ||
		arr[2].(Table)["big"] != math.MaxInt32+1 || reflect.ValueOf(caller["inner"]).Pointer() != reflect.ValueOf(inner).Pointer() {
		t.Errorf("the caller's table was changed: %#v", caller)
	}

	// Nothing to widen: the caller's own table is sent, nothing allocated.
	common := Table{"trace": "00-abc", "n": 5, "i": int32(1), "nested": Table{"t": true, "a": []any{int64(1), "x"}}}
	wire, _, err = checkTable("basic.publish", "headers", common)
	if err != nil || reflect.ValueOf(wire).Pointer() != reflect.ValueOf(common).Pointer() {
		t.Errorf("a table with no wide int: got %p, %v; want the same map", wire, err)
	}
	if n := testing.AllocsPerRun(100, func() { _, _, _ = checkTable("basic.publish", "headers", common) }); n != 0 {
		t.Errorf("checkTable of a table with no wide int: %v allocations, want 0", n)
	}
	// Checking and encoding a message allocates nothing: a flat headers
	// table (scalars only) on the publish's stack buffer, a nested one by
	// way of a pooled buffer (which the race detector empties at random:
	// that case is checked without it, see the Makefile's test-allocs).
	flat := Table{"trace": "00-abc", "n": 5, "i": int32(1), "t": true, "b": []byte("x")}
	for _, tc := range []struct {
		name    string
		headers Table
	}{{"flat headers", flat}, {"nested headers", common}} {
		if tc.name == "nested headers" && raceEnabled {
			continue
		}
		m := &Message{Exchange: "ex", Key: "rk", Publishing: Publishing{ContentType: "text/plain", MessageId: "id-1",
			Expiration: "60000", Timestamp: time.Unix(1700000000, 0), Headers: tc.headers, Body: []byte("x")}}
		if n := testing.AllocsPerRun(100, func() {
			var buf [headRoom]byte
			if _, _, err := encodePublish(buf[:0], "basic.publish", 1, m, false, 131072-8); err != nil {
				t.Fatal(err)
			}
			if _, at, err := encodePublish(buf[:0], "basic.publish", 1, m, true, 131072-8); err != nil || at < 0 {
				t.Fatal(at, err)
			}
		}); n != 0 {
			t.Errorf("checking and encoding a message with %s: %v allocations, want 0", tc.name, n)
		}
	}
}

// ---------------------------------------------------------------------------
// Through the client, against the scripted broker.

// recorder is a scripted broker that agrees to everything and records
// every method it reads.
type recorder struct {
	seen     chan *fb.Method
	consumed chan struct{} // a basic.consume was read
}

// Methods answered here beyond what fb.Conn.Answer knows.
var (
	mExchangeDeclare   = fb.ID(40, 10)
	mExchangeDelete    = fb.ID(40, 20)
	mExchangeBind      = fb.ID(40, 30)
	mExchangeUnbind    = fb.ID(40, 40)
	mQueueBind         = fb.ID(50, 20)
	mQueuePurge        = fb.ID(50, 30)
	mQueueDelete       = fb.ID(50, 40)
	mQueueUnbind       = fb.ID(50, 50)
	mBasicConsume      = fb.ID(60, 20)
	mBasicCancel       = fb.ID(60, 30)
	mBasicGet          = fb.ID(60, 70)
	mExchangeDeclareOK = fb.ID(40, 11)
)

func (r *recorder) script(t *testing.T) func(*fb.Conn) {
	return func(c *fb.Conn) {
		for {
			m, err := c.Next()
			if err != nil {
				return
			}
			select {
			case r.seen <- m:
			default:
				t.Errorf("recorder: log full")
				return
			}
			switch m.ID {
			case mExchangeDeclare:
				c.Send(m.Channel, mExchangeDeclareOK, nil)
			case mExchangeDelete, mExchangeBind, mQueueBind:
				c.Send(m.Channel, fb.ID(m.ID.Class(), m.ID.Method()+1), nil)
			case mExchangeUnbind:
				c.Send(m.Channel, fb.ID(40, 51), nil)
			case mQueueUnbind:
				c.Send(m.Channel, fb.ID(50, 51), nil)
			case mQueuePurge, mQueueDelete:
				c.Send(m.Channel, fb.ID(m.ID.Class(), m.ID.Method()+1), new(fb.Args).Long(0))
			case mBasicConsume:
				a := m.Reader()
				a.Short()
				a.ShortStr()
				c.Send(m.Channel, fb.ID(60, 21), new(fb.Args).ShortStr(a.ShortStr()))
				select {
				case r.consumed <- struct{}{}:
				default:
				}
			case mBasicCancel:
				c.Send(m.Channel, fb.ID(60, 31), new(fb.Args).ShortStr(m.Reader().ShortStr()))
			case mBasicGet:
				c.Send(m.Channel, fb.ID(60, 72), new(fb.Args).ShortStr(""))
			default:
				if err := c.Answer(m); err != nil {
					return
				}
			}
		}
	}
}

// checkEnv is a client on the recorder with one channel of each kind.
type checkEnv struct {
	t   *testing.T
	rec *recorder
	c   *Client
	ch  Channel // plain: its basic.qos is the fence
	cch Channel // confirm mode
	pub *Publisher
}

func startRecorder(t *testing.T, cfg fb.Config) *checkEnv {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t) })
	rec := &recorder{seen: make(chan *fb.Method, 1<<14), consumed: make(chan struct{}, 1)}
	b := fb.Start(t, cfg, rec.script(t))
	ctx, cancel := context.WithTimeout(context.Background(), checksBound)
	defer cancel()
	c, err := Dial(ctx, b.URL())
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), checksBound)
		defer cancel()
		_ = c.Close(ctx)
	})
	e := &checkEnv{t: t, rec: rec, c: c}
	if e.ch, err = c.Channel(ctx); err != nil {
		t.Fatalf("Channel: %v", err)
	}
	if e.cch, err = c.Channel(ctx); err != nil {
		t.Fatalf("Channel: %v", err)
	}
	if err := e.cch.SetMode(ctx, ModeConfirm); err != nil {
		t.Fatalf("SetMode confirm: %v", err)
	}
	if e.pub, err = c.NewPublisher(ctx, PublisherOptions{Channels: 1}); err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), checksBound)
		defer cancel()
		_ = e.pub.Close(ctx)
	})
	e.fence(ctx)
	return e
}

// noise are methods that come with the operations under test (opening and
// closing their channels, modes, a consumer's qos and cancel).
var noise = map[fb.MethodID]bool{
	fb.ChannelOpen: true, fb.ChannelClose: true, fb.ChannelCloseOK: true, fb.BasicQos: true,
	mBasicCancel: true, fb.ConfirmSelect: true, fb.TxSelect: true, fb.TxRollback: true, fb.TxCommit: true,
}

// fence sends basic.qos on the plain channel and returns every method,
// noise left out, the broker read since the previous fence.
func (e *checkEnv) fence(ctx context.Context) []*fb.Method {
	e.t.Helper()
	if err := e.ch.Qos(ctx, QosOptions{PrefetchCount: 1}); err != nil {
		e.t.Fatalf("fence: Qos: %v", err)
	}
	var got []*fb.Method
	for {
		select {
		case m := <-e.rec.seen:
			if m.ID == fb.BasicQos && m.Channel == e.ch.ID() {
				return got
			}
			if !noise[m.ID] {
				got = append(got, m)
			}
		case <-ctx.Done():
			e.t.Fatalf("fence: the broker never read the basic.qos")
		}
	}
}

// consume runs Client.Consume until the broker has read its basic.consume.
func (e *checkEnv) consume(ctx context.Context, queue string, opts ConsumeOptions) error {
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		errc <- e.c.Consume(cctx, queue, func(context.Context, *Delivery) error { return nil }, opts)
	}()
	select {
	case err := <-errc:
		return err
	case <-e.rec.consumed:
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			return err
		}
		return nil
	}
}

// publishPaths are the ways to publish a message: each returns nil once
// the message was sent (and, on confirm paths, acked).
var publishPaths = []struct {
	name string
	pub  func(ctx context.Context, e *checkEnv, m Message) error
}{
	{"Channel.Publish", func(ctx context.Context, e *checkEnv, m Message) error {
		return e.ch.Publish(ctx, m.Exchange, m.Key, m.Publishing)
	}},
	{"Channel.PublishBatch", func(ctx context.Context, e *checkEnv, m Message) error {
		return e.ch.PublishBatch(ctx, []Message{m})[0]
	}},
	{"confirm Channel.PublishMessage", func(ctx context.Context, e *checkEnv, m Message) error {
		return e.cch.PublishMessage(ctx, m)
	}},
	{"confirm mandatory Channel.PublishDeferred", func(ctx context.Context, e *checkEnv, m Message) error {
		m.Mandatory = true
		c, err := e.cch.PublishDeferred(ctx, m)
		if err != nil {
			return err
		}
		return c.Wait(ctx)
	}},
	{"Publisher.PublishMessage", func(ctx context.Context, e *checkEnv, m Message) error {
		return e.pub.PublishMessage(ctx, m)
	}},
	{"Publisher.PublishBatch", func(ctx context.Context, e *checkEnv, m Message) error {
		return e.pub.PublishBatch(ctx, []Message{m})[0]
	}},
	{"Tx.Publish", func(ctx context.Context, e *checkEnv, m Message) error {
		tx, err := e.c.Begin(ctx)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback(ctx) }()
		return tx.Publish(ctx, m.Exchange, m.Key, m.Publishing)
	}},
}

// shortstrCall is one API call with one short-string field set to s.
type shortstrCall struct {
	api, field string
	want       fb.MethodID // what the call puts on the wire when s is valid
	prefix     string      // put before the filler (an exchange type must be "x-...")
	filler     string      // repeated to make a valid field of 255 bytes (default "a")
	do         func(ctx context.Context, e *checkEnv, s string) error
}

func shortstrCalls() []shortstrCall {
	calls := []shortstrCall{
		{api: "QueueDeclare", field: "queue", want: fb.QueueDeclare, do: func(ctx context.Context, e *checkEnv, s string) error {
			_, err := e.ch.QueueDeclare(ctx, s, QueueOptions{Durable: true})
			return err
		}},
		{api: "QueueDeclare passive", field: "queue", want: fb.QueueDeclare, do: func(ctx context.Context, e *checkEnv, s string) error {
			_, err := e.ch.QueueDeclare(ctx, s, QueueOptions{Passive: true})
			return err
		}},
		{api: "QueueDeclare args", field: "arguments", want: fb.QueueDeclare, do: func(ctx context.Context, e *checkEnv, s string) error {
			_, err := e.ch.QueueDeclare(ctx, "q", QueueOptions{Durable: true, Args: Table{s: int32(1)}})
			return err
		}},
		{api: "QueueDeclare DeadLetterExchange", field: "DeadLetterExchange", want: fb.QueueDeclare, do: func(ctx context.Context, e *checkEnv, s string) error {
			_, err := e.ch.QueueDeclare(ctx, "q", QueueOptions{Durable: true, DeadLetterExchange: s})
			return err
		}},
		{api: "QueueDeclare DeadLetterRoutingKey", field: "DeadLetterRoutingKey", want: fb.QueueDeclare, do: func(ctx context.Context, e *checkEnv, s string) error {
			_, err := e.ch.QueueDeclare(ctx, "q", QueueOptions{Durable: true, DeadLetterExchange: "dlx", DeadLetterRoutingKey: s})
			return err
		}},
		{api: "QueueDelete", field: "queue", want: mQueueDelete, do: func(ctx context.Context, e *checkEnv, s string) error {
			_, err := e.ch.QueueDelete(ctx, s, QueueDeleteOptions{})
			return err
		}},
		{api: "QueuePurge", field: "queue", want: mQueuePurge, do: func(ctx context.Context, e *checkEnv, s string) error {
			_, err := e.ch.QueuePurge(ctx, s)
			return err
		}},
		{api: "Get", field: "queue", want: mBasicGet, do: func(ctx context.Context, e *checkEnv, s string) error {
			_, _, err := e.ch.Get(ctx, s, GetOptions{})
			return err
		}},
		{api: "ExchangeDeclare", field: "exchange", want: mExchangeDeclare, do: func(ctx context.Context, e *checkEnv, s string) error {
			return e.ch.ExchangeDeclare(ctx, s, ExchangeDirect, ExchangeOptions{})
		}},
		{api: "ExchangeDeclare", field: "exchange type", want: mExchangeDeclare, prefix: "x-", do: func(ctx context.Context, e *checkEnv, s string) error {
			return e.ch.ExchangeDeclare(ctx, "ex", s, ExchangeOptions{})
		}},
		{api: "ExchangeDeclare passive", field: "exchange type", want: mExchangeDeclare, do: func(ctx context.Context, e *checkEnv, s string) error {
			return e.ch.ExchangeDeclare(ctx, "ex", s, ExchangeOptions{Passive: true})
		}},
		{api: "ExchangeDeclare args", field: "arguments", want: mExchangeDeclare, do: func(ctx context.Context, e *checkEnv, s string) error {
			return e.ch.ExchangeDeclare(ctx, "ex", ExchangeTopic, ExchangeOptions{Args: Table{"alternate-exchange": "ae", s: true}})
		}},
		{api: "ExchangeDelete", field: "exchange", want: mExchangeDelete, do: func(ctx context.Context, e *checkEnv, s string) error {
			return e.ch.ExchangeDelete(ctx, s, ExchangeDeleteOptions{})
		}},
		{api: "Consume", field: "queue", want: mBasicConsume, do: func(ctx context.Context, e *checkEnv, s string) error {
			return e.consume(ctx, s, ConsumeOptions{})
		}},
		{api: "Consume", field: "consumer tag", want: mBasicConsume, do: func(ctx context.Context, e *checkEnv, s string) error {
			return e.consume(ctx, "q", ConsumeOptions{Tag: s})
		}},
		{api: "Consume args", field: "arguments", want: mBasicConsume, do: func(ctx context.Context, e *checkEnv, s string) error {
			return e.consume(ctx, "q", ConsumeOptions{Args: Table{"x-priority": int32(1), s: "v"}})
		}},
	}
	type bind func(ch Channel, ctx context.Context, a, key, b string, args Table) error
	for _, bc := range []struct {
		api   string
		want  fb.MethodID
		f     bind
		names [2]string
	}{
		{"QueueBind", mQueueBind, Channel.QueueBind, [2]string{"queue", "exchange"}},
		{"QueueUnbind", mQueueUnbind, Channel.QueueUnbind, [2]string{"queue", "exchange"}},
		{"ExchangeBind", mExchangeBind, Channel.ExchangeBind, [2]string{"destination", "source"}},
		{"ExchangeUnbind", mExchangeUnbind, Channel.ExchangeUnbind, [2]string{"destination", "source"}},
	} {
		calls = append(calls,
			shortstrCall{api: bc.api, field: bc.names[0], want: bc.want, do: func(ctx context.Context, e *checkEnv, s string) error {
				return bc.f(e.ch, ctx, s, "rk", "b", nil)
			}},
			shortstrCall{api: bc.api, field: "routing key", want: bc.want, do: func(ctx context.Context, e *checkEnv, s string) error {
				return bc.f(e.ch, ctx, "a", s, "b", nil)
			}},
			shortstrCall{api: bc.api, field: bc.names[1], want: bc.want, do: func(ctx context.Context, e *checkEnv, s string) error {
				return bc.f(e.ch, ctx, "a", "rk", s, nil)
			}},
			shortstrCall{api: bc.api + " args", field: "arguments", want: bc.want, do: func(ctx context.Context, e *checkEnv, s string) error {
				return bc.f(e.ch, ctx, "a", "rk", "b", Table{"x-match": "all", s: "v"})
			}},
		)
	}
	props := []struct {
		field  string
		filler string
		set    func(p *Publishing, s string)
	}{
		{"content type", "", func(p *Publishing, s string) { p.ContentType = s }},
		{"content encoding", "", func(p *Publishing, s string) { p.ContentEncoding = s }},
		{"correlation id", "", func(p *Publishing, s string) { p.CorrelationId = s }},
		{"reply-to", "", func(p *Publishing, s string) { p.ReplyTo = s }},
		{"expiration", "0", func(p *Publishing, s string) { p.Expiration = s }}, // 255 zeros: 0 ms, valid
		{"message id", "", func(p *Publishing, s string) { p.MessageId = s }},
		{"type", "", func(p *Publishing, s string) { p.Type = s }},
		{"user id", "", func(p *Publishing, s string) { p.UserId = s }},
		{"app id", "", func(p *Publishing, s string) { p.AppId = s }},
		{"headers", "", func(p *Publishing, s string) { p.Headers = Table{s: 1} }},
		{"headers", "", func(p *Publishing, s string) { p.Headers = Table{"n": Table{"m": []any{Table{s: 1}}}} }},
	}
	for _, path := range publishPaths {
		msg := func(s string) Message {
			return Message{Exchange: "ex", Key: "rk", Publishing: Publishing{Body: []byte("b")}}
		}
		calls = append(calls,
			shortstrCall{api: path.name, field: "exchange", want: fb.BasicPublish, do: func(ctx context.Context, e *checkEnv, s string) error {
				m := msg(s)
				m.Exchange = s
				return path.pub(ctx, e, m)
			}},
			shortstrCall{api: path.name, field: "routing key", want: fb.BasicPublish, do: func(ctx context.Context, e *checkEnv, s string) error {
				m := msg(s)
				m.Key = s
				return path.pub(ctx, e, m)
			}},
		)
		for _, p := range props {
			calls = append(calls, shortstrCall{api: path.name, field: p.field, want: fb.BasicPublish, filler: p.filler,
				do: func(ctx context.Context, e *checkEnv, s string) error {
					m := msg(s)
					p.set(&m.Publishing, s)
					return path.pub(ctx, e, m)
				}})
		}
	}
	return calls
}

// FIXED BUG (issue 17, defect 6): a name that is not UTF-8 went out, and
// RabbitMQ closed the whole connection (501 FRAME_ERROR "Malformed UTF-8
// in shortstr"). Every short string of every call is now checked: not
// UTF-8 or 256 bytes is refused and nothing is sent; 255 bytes is sent.
func TestEveryShortStringIsCheckedBeforeItIsSent(t *testing.T) {
	e := startRecorder(t, fb.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*checksBound)
	defer cancel()
	for _, call := range shortstrCalls() {
		filler := call.filler
		if filler == "" {
			filler = "a"
		}
		valid := call.prefix + strings.Repeat(filler, 255-len(call.prefix))
		for _, in := range []struct{ what, s string }{
			{"not UTF-8", call.prefix + badUTF8},
			{"256 bytes", call.prefix + strings.Repeat(filler, 256-len(call.prefix))},
		} {
			err := call.do(ctx, e, in.s)
			if !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("%s, %s %s: got %v, want ErrInvalidArgument", call.api, call.field, in.what, err)
			} else {
				msg := err.Error()
				if !strings.Contains(msg, call.field) {
					t.Errorf("%s, %s %s: %q does not name the field", call.api, call.field, in.what, msg)
				}
				if !utf8.ValidString(msg) {
					t.Errorf("%s, %s %s: %q carries the raw bytes", call.api, call.field, in.what, msg)
				}
			}
			if got := e.fence(ctx); len(got) != 0 {
				t.Errorf("%s, %s %s: refused, yet the broker read %v", call.api, call.field, in.what, got)
			}
		}
		if err := call.do(ctx, e, valid); err != nil {
			t.Errorf("%s, %s of 255 bytes: got %v, want nil", call.api, call.field, err)
		}
		if got := e.fence(ctx); len(got) != 1 || got[0].ID != call.want {
			t.Errorf("%s, %s of 255 bytes: the broker read %v, want one %v", call.api, call.field, got, call.want)
		}
	}
	if err := e.c.Err(); err != nil {
		t.Errorf("client.Err after the refusals: %v", err)
	}
}

// tableOf decodes the field table that ends a method's arguments, after
// skip short strings and the fixed fields.
func tableOf(t *testing.T, m *fb.Method, shortstrs int, bits bool) map[string]any {
	t.Helper()
	r := m.Reader()
	r.Short()
	for range shortstrs {
		r.ShortStr()
	}
	if bits {
		r.Octet()
	}
	tbl := r.Table()
	if r.Err() != nil {
		t.Fatalf("%v: decoding its table: %v", m, r.Err())
	}
	return tbl
}

// FIXED BUG (issue 17, defect 7): amqp091-go writes a Go int as a 32-bit
// integer, so 5_000_000_000 arrived as 705032704 and -1<<40 as 0, acked.
// Every path that sends a table now sends such an int as an int64, in a
// copy: the caller's table is untouched.
func TestWideIntsReachTheWireAsInt64OnEveryPath(t *testing.T) {
	e := startRecorder(t, fb.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*checksBound)
	defer cancel()
	table := func() Table {
		return Table{"big": 5_000_000_000, "neg": -1 << 40, "small": 5, "n": Table{"big": 1 << 40},
			"a": []any{1 << 33, int32(1)}}
	}
	want := map[string]any{"big": int64(5_000_000_000), "neg": int64(-1 << 40), "small": int32(5),
		"n": map[string]any{"big": int64(1 << 40)}, "a": []any{int64(1 << 33), int32(1)}}
	check := func(what string, got map[string]any, caller Table) {
		t.Helper()
		delete(got, StampHeader)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: the broker read\n %#v\nwant %#v", what, got, want)
		}
		if !reflect.DeepEqual(caller, table()) {
			t.Errorf("%s: the caller's table was changed to %#v", what, caller)
		}
	}
	for _, path := range publishPaths {
		h := table()
		if err := path.pub(ctx, e, Message{Key: "q", Publishing: Publishing{Headers: h}}); err != nil {
			t.Errorf("%s: %v", path.name, err)
			continue
		}
		got := e.fence(ctx)
		if len(got) != 1 || got[0].ID != fb.BasicPublish {
			t.Fatalf("%s: the broker read %v, want one basic.publish", path.name, got)
		}
		headers, err := got[0].Headers()
		if err != nil {
			t.Fatalf("%s: decoding the headers: %v", path.name, err)
		}
		check(path.name, headers, h)
	}
	for _, tc := range []struct {
		what      string
		do        func(args Table) error
		shortstrs int
		bits      bool
	}{
		{"QueueDeclare", func(a Table) error {
			_, err := e.ch.QueueDeclare(ctx, "q", QueueOptions{Durable: true, Args: a})
			return err
		}, 1, true},
		{"ExchangeDeclare", func(a Table) error {
			return e.ch.ExchangeDeclare(ctx, "x", ExchangeHeaders, ExchangeOptions{Args: a})
		}, 2, true},
		{"QueueBind", func(a Table) error { return e.ch.QueueBind(ctx, "q", "rk", "x", a) }, 3, true},
		{"QueueUnbind", func(a Table) error { return e.ch.QueueUnbind(ctx, "q", "rk", "x", a) }, 3, false},
		{"ExchangeBind", func(a Table) error { return e.ch.ExchangeBind(ctx, "d", "rk", "s", a) }, 3, true},
		{"ExchangeUnbind", func(a Table) error { return e.ch.ExchangeUnbind(ctx, "d", "rk", "s", a) }, 3, true},
		{"Consume", func(a Table) error { return e.consume(ctx, "q", ConsumeOptions{Args: a}) }, 2, true},
	} {
		args := table()
		if err := tc.do(args); err != nil {
			t.Errorf("%s: %v", tc.what, err)
			continue
		}
		got := e.fence(ctx)
		if len(got) != 1 {
			t.Fatalf("%s: the broker read %v, want one method", tc.what, got)
		}
		check(tc.what, tableOf(t, got[0], tc.shortstrs, tc.bits), args)
	}
}

// FIXED BUG (issue 17, defect 8): a NaN or infinite float passed the
// check, and RabbitMQ closed the whole connection (541 INTERNAL_ERROR).
// It is refused wherever a table goes, at any depth, and nothing is sent.
func TestNonFiniteFloatsAreRefusedWhereverATableGoes(t *testing.T) {
	e := startRecorder(t, fb.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*checksBound)
	defer cancel()
	for _, v := range []any{math.NaN(), math.Inf(1), math.Inf(-1), float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))} {
		for _, tbl := range []Table{{"f": v}, {"a": []any{1.5, v}}, {"n": Table{"m": Table{"f": v}}}} {
			var errs []error
			for _, path := range publishPaths {
				errs = append(errs, path.pub(ctx, e, Message{Key: "q", Publishing: Publishing{Headers: tbl}}))
			}
			_, err := e.ch.QueueDeclare(ctx, "q", QueueOptions{Durable: true, Args: tbl})
			errs = append(errs, err,
				e.ch.ExchangeDeclare(ctx, "x", ExchangeHeaders, ExchangeOptions{Args: tbl}),
				e.ch.QueueBind(ctx, "q", "rk", "x", tbl),
				e.ch.QueueUnbind(ctx, "q", "rk", "x", tbl),
				e.ch.ExchangeBind(ctx, "d", "rk", "s", tbl),
				e.ch.ExchangeUnbind(ctx, "d", "rk", "s", tbl),
				e.consume(ctx, "q", ConsumeOptions{Args: tbl}))
			for i, err := range errs {
				if !errors.Is(err, ErrInvalidArgument) {
					t.Errorf("%v in %v, call %d: got %v, want ErrInvalidArgument", v, tbl, i, err)
				}
			}
			if got := e.fence(ctx); len(got) != 0 {
				t.Errorf("%v in %v: refused, yet the broker read %v", v, tbl, got)
			}
		}
	}
	if err := e.c.Err(); err != nil {
		t.Errorf("client.Err after the refusals: %v", err)
	}
}

// A frame larger than frame_max makes RabbitMQ close the connection (501
// FRAME_ERROR). The largest frame that fits is sent (the broker reads
// exactly frame_max - 8 bytes of payload); one byte more is refused.
func TestFramesBeyondFrameMaxAreRefused(t *testing.T) {
	const frameMax = 4096
	const payloadMax = frameMax - 8
	e := startRecorder(t, fb.Config{FrameMax: frameMax})
	ctx, cancel := context.WithTimeout(context.Background(), 2*checksBound)
	defer cancel()

	// Content headers, on every publish path (a mandatory publish carries
	// warren's stamp too).
	for _, path := range publishPaths {
		msg := func(n int) Message {
			return Message{Key: "q", Publishing: Publishing{MessageId: "id", Headers: Table{"pad": strings.Repeat("p", n)}}}
		}
		if err := path.pub(ctx, e, msg(0)); err != nil {
			t.Fatalf("%s: %v", path.name, err)
		}
		got := e.fence(ctx)
		if len(got) != 1 {
			t.Fatalf("%s: the broker read %v", path.name, got)
		}
		n := payloadMax - len(got[0].Header)
		if err := path.pub(ctx, e, msg(n)); err != nil {
			t.Errorf("%s: a content header of exactly %d bytes: got %v, want nil", path.name, payloadMax, err)
		}
		if got := e.fence(ctx); len(got) != 1 || len(got[0].Header) != payloadMax {
			t.Errorf("%s: the broker read %v, want one publish with a %d-byte header", path.name, got, payloadMax)
		}
		err := path.pub(ctx, e, msg(n+1))
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "frame_max") {
			t.Errorf("%s: a content header of %d bytes: got %v, want ErrInvalidArgument naming frame_max", path.name, payloadMax+1, err)
		}
		if got := e.fence(ctx); len(got) != 0 {
			t.Errorf("%s: refused, yet the broker read %v", path.name, got)
		}
	}

	// Methods with a table.
	for _, tc := range []struct {
		what string
		do   func(args Table) error
	}{
		{"QueueDeclare", func(a Table) error {
			_, err := e.ch.QueueDeclare(ctx, "q", QueueOptions{Durable: true, Args: a})
			return err
		}},
		{"ExchangeDeclare", func(a Table) error {
			return e.ch.ExchangeDeclare(ctx, "x", ExchangeHeaders, ExchangeOptions{Args: a})
		}},
		{"QueueBind", func(a Table) error { return e.ch.QueueBind(ctx, "q", "rk", "x", a) }},
		{"QueueUnbind", func(a Table) error { return e.ch.QueueUnbind(ctx, "q", "rk", "x", a) }},
		{"ExchangeBind", func(a Table) error { return e.ch.ExchangeBind(ctx, "d", "rk", "s", a) }},
		{"ExchangeUnbind", func(a Table) error { return e.ch.ExchangeUnbind(ctx, "d", "rk", "s", a) }},
		{"Consume", func(a Table) error { return e.consume(ctx, "q", ConsumeOptions{Args: a}) }},
	} {
		args := func(n int) Table { return Table{"x-pad": strings.Repeat("p", n)} }
		if err := tc.do(args(0)); err != nil {
			t.Fatalf("%s: %v", tc.what, err)
		}
		got := e.fence(ctx)
		if len(got) != 1 {
			t.Fatalf("%s: the broker read %v", tc.what, got)
		}
		n := payloadMax - (4 + len(got[0].Args))
		if err := tc.do(args(n)); err != nil {
			t.Errorf("%s: a method frame of exactly %d bytes: got %v, want nil", tc.what, payloadMax, err)
		}
		if got := e.fence(ctx); len(got) != 1 || 4+len(got[0].Args) != payloadMax {
			t.Errorf("%s: the broker read %v, want one method of %d bytes", tc.what, got, payloadMax)
		}
		err := tc.do(args(n + 1))
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "frame_max") {
			t.Errorf("%s: a method frame of %d bytes: got %v, want ErrInvalidArgument naming frame_max", tc.what, payloadMax+1, err)
		}
		if got := e.fence(ctx); len(got) != 0 {
			t.Errorf("%s: refused, yet the broker read %v", tc.what, got)
		}
	}
	if err := e.c.Err(); err != nil {
		t.Errorf("client.Err after the refusals: %v", err)
	}
}
