package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

const (
	// opTimeout bounds a whole test's worth of broker operations.
	opTimeout = 30 * time.Second
	// ctlTimeout bounds one rabbitmqctl call (each starts an Erlang VM).
	ctlTimeout = 30 * time.Second
	// pollEvery is the pause between two looks at the broker's state.
	pollEvery = 100 * time.Millisecond
)

// testCtx returns a context that ends after d or when the test ends.
func testCtx(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// randHex returns n random bytes as hex.
func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// uniqueName returns a name for a queue, exchange, user or connection that
// no other test (or earlier run) uses: the test's name plus a random suffix.
func uniqueName(t *testing.T, prefix string) string {
	t.Helper()
	n := strings.NewReplacer("/", ".", " ", "_").Replace(t.Name())
	if len(n) > 150 {
		n = n[:150]
	}
	return prefix + n + "-" + randHex(4)
}

// dial dials url and closes the client when the test ends. Tests that care
// about Close's result call it themselves; Close is idempotent.
func dial(t *testing.T, url string, opts ...warren.Option) *warren.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := warren.Dial(ctx, url, opts...)
	require.NoError(t, err, "Dial")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_ = c.Close(ctx)
	})
	return c
}

// openChannel opens a channel on c and closes it when the test ends.
func openChannel(t *testing.T, ctx context.Context, c *warren.Client) warren.Channel {
	t.Helper()
	ch, err := c.Channel(ctx)
	require.NoError(t, err, "Channel")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = ch.Close(ctx)
	})
	return ch
}

// declareQueue declares a durable, non-exclusive queue named name on ch
// and deletes it (over a connection of its own) when the test ends.
// (Durable: a transient non-exclusive queue is a deprecated kind RabbitMQ
// 4.3 denies; see QueueOptions.)
func declareQueue(t *testing.T, ctx context.Context, b *brokertest.Broker, ch warren.Channel, name string) {
	t.Helper()
	_, err := ch.QueueDeclare(ctx, name, warren.QueueOptions{Durable: true})
	require.NoError(t, err, "QueueDeclare(%q)", name)
	deleteQueueLater(t, b, name)
}

// deleteQueueLater deletes queue name when the test ends, over a connection
// of its own so that it works whatever state the test left its clients in.
func deleteQueueLater(t *testing.T, b *brokertest.Broker, name string) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		c, err := warren.Dial(ctx, b.URL)
		if err != nil {
			t.Errorf("cleanup: deleting queue %q: Dial: %v", name, err)
			return
		}
		defer c.Close(ctx)
		ch, err := c.Channel(ctx)
		if err != nil {
			t.Errorf("cleanup: deleting queue %q: Channel: %v", name, err)
			return
		}
		if _, err := ch.QueueDelete(ctx, name, warren.QueueDeleteOptions{}); err != nil {
			t.Errorf("cleanup: deleting queue %q: %v", name, err)
		}
	})
}

// needPrivate ends the test unless the broker is one whose node Ctl can
// control (a private node, or a container through the Docker engine): a
// skip normally, a failure when a broker is required.
func needPrivate(t *testing.T, b *brokertest.Broker) {
	t.Helper()
	if b.Controllable() {
		return
	}
	msg := fmt.Sprintf("needs a broker controllable with rabbitmqctl (a private node or a container); the broker is %s", b)
	if brokertest.Required() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// ctl runs rabbitmqctl against the broker's node and fails the test if it
// fails.
func ctl(t *testing.T, b *brokertest.Broker, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
	defer cancel()
	out, err := b.Ctl(ctx, args...)
	if err != nil {
		t.Fatalf("rabbitmqctl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// pidLines returns the tab-separated fields of the lines of rabbitmqctl's
// --quiet --no-table-headers output that start with an Erlang pid; anything
// else it printed (warnings) is ignored.
func pidLines(out string) [][]string {
	var rows [][]string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "<") {
			rows = append(rows, strings.Split(line, "\t"))
		}
	}
	return rows
}

// connectionPid returns the broker's pid (as rabbitmqctl close_connection
// takes it) of the connection whose client-provided name is name, or "" if
// the broker lists no such connection.
func connectionPid(t *testing.T, b *brokertest.Broker, name string) string {
	t.Helper()
	out := ctl(t, b, "list_connections", "--quiet", "--no-table-headers", "pid", "client_properties")
	want := `{"connection_name","` + name + `"}`
	for _, f := range pidLines(out) {
		if len(f) >= 2 && strings.Contains(f[1], want) {
			return f[0]
		}
	}
	return ""
}

// mustConnectionPid is connectionPid for a connection that must be listed.
func mustConnectionPid(t *testing.T, b *brokertest.Broker, name string) string {
	t.Helper()
	pid := connectionPid(t, b, name)
	if pid == "" {
		t.Fatalf("rabbitmqctl list_connections shows no connection named %q", name)
	}
	return pid
}

// brokerChannelNumbers returns, sorted, the channel numbers the broker lists
// for the connection with pid connPid.
func brokerChannelNumbers(t *testing.T, b *brokertest.Broker, connPid string) []int {
	t.Helper()
	out := ctl(t, b, "list_channels", "--quiet", "--no-table-headers", "connection", "number")
	var nums []int
	for _, f := range pidLines(out) {
		if len(f) < 2 || f[0] != connPid {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(f[1]))
		if err != nil {
			t.Fatalf("list_channels: bad channel number in %q", strings.Join(f, "\t"))
		}
		nums = append(nums, n)
	}
	slices.Sort(nums)
	return nums
}

// brokerConnection is one row of `rabbitmqctl list_connections --formatter json`.
type brokerConnection struct {
	Name             string  `json:"name"`
	User             string  `json:"user"`
	Timeout          int     `json:"timeout"`
	ChannelMax       int     `json:"channel_max"`
	Channels         int     `json:"channels"`
	ClientProperties [][]any `json:"client_properties"` // [key, type, value]
}

// property returns the client property key as rabbitmqctl renders it.
func (c brokerConnection) property(key string) (any, bool) {
	for _, p := range c.ClientProperties {
		if len(p) == 3 && p[0] == key {
			return p[2], true
		}
	}
	return nil, false
}

// brokerConnectionNamed returns the broker's view of the connection whose
// client-provided name is name; ok is false if there is none.
func brokerConnectionNamed(t *testing.T, b *brokertest.Broker, name string) (conn brokerConnection, ok bool) {
	t.Helper()
	out := ctl(t, b, "list_connections", "--formatter", "json",
		"name", "user", "timeout", "channel_max", "channels", "client_properties")
	// Anything printed before the JSON array (warnings) is skipped.
	i := strings.Index(out, "[")
	if i < 0 {
		t.Fatalf("list_connections --formatter json printed no JSON array:\n%s", out)
	}
	var conns []brokerConnection
	if err := json.Unmarshal([]byte(out[i:]), &conns); err != nil {
		t.Fatalf("list_connections --formatter json: %v\n%s", err, out)
	}
	for _, c := range conns {
		if v, _ := c.property("connection_name"); v == name {
			return c, true
		}
	}
	return brokerConnection{}, false
}

// eventually calls check until it returns "" or ctx ends, in which case the
// test fails with check's last complaint.
func eventually(t *testing.T, ctx context.Context, what string, check func() string) {
	t.Helper()
	for {
		msg := check()
		if msg == "" {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: still not so after waiting: %s", what, msg)
		case <-time.After(pollEvery):
		}
	}
}

// addUser creates a user on the broker with the given permissions on
// vhost "/" and deletes it when the test ends.
func addUser(t *testing.T, b *brokertest.Broker, user, pass, configure, write, read string) {
	t.Helper()
	ctl(t, b, "add_user", user, pass)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
		defer cancel()
		if _, err := b.Ctl(ctx, "delete_user", user); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	ctl(t, b, "set_permissions", "-p", "/", user, configure, write, read)
}

// getOne polls basic.get on queue until a message arrives or ctx ends.
func getOne(t *testing.T, ctx context.Context, ch warren.Channel, queue string) *warren.Delivery {
	t.Helper()
	for {
		d, ok, err := ch.Get(ctx, queue, warren.GetOptions{})
		require.NoError(t, err, "Get(%q)", queue)
		if ok {
			return d
		}
		select {
		case <-ctx.Done():
			t.Fatalf("Get(%q): no message before %v", queue, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// roundTrip checks that c still works end to end: it opens a channel,
// declares an exclusive queue, publishes to it and gets the message back.
func roundTrip(t *testing.T, ctx context.Context, c *warren.Client) {
	t.Helper()
	ch, err := c.Channel(ctx)
	require.NoError(t, err, "round trip: Channel")
	defer ch.Close(ctx)
	q, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true, AutoDelete: true})
	require.NoError(t, err, "round trip: QueueDeclare")
	body := "round-trip-" + randHex(4)
	require.NoError(t, ch.Publish(ctx, "", q.Name, warren.Publishing{Body: []byte(body)}), "round trip: Publish")
	d := getOne(t, ctx, ch, q.Name)
	require.Equal(t, body, string(d.Body), "round trip: body")
	require.NoError(t, d.Ack(ctx), "round trip: Ack")
	require.NoError(t, ch.Close(ctx), "round trip: channel Close")
}

// wantChannelError checks that err is the broker closing channel id with
// code, matched by sentinel, and that its text contains each of texts. It
// returns the *ChannelError.
func wantChannelError(t *testing.T, what string, err error, sentinel error, code warren.ReplyCode, id uint16, texts ...string) *warren.ChannelError {
	t.Helper()
	require.Error(t, err, "%s: want a *warren.ChannelError with code %d", what, code)
	assert.ErrorIs(t, err, sentinel, what)
	var ce *warren.ChannelError
	require.ErrorAs(t, err, &ce, what)
	assert.Equal(t, id, ce.ChannelID, "%s: ChannelID", what)
	assert.Equal(t, code, ce.Code, "%s: Code", what)
	got, ok := warren.CodeOf(err)
	assert.True(t, ok, "%s: CodeOf reports no code", what)
	assert.Equal(t, code, got, "%s: CodeOf", what)
	assert.True(t, warren.IsChannelLevel(err), "%s: IsChannelLevel", what)
	assert.False(t, warren.IsConnectionLevel(err), "%s: IsConnectionLevel", what)
	for _, s := range texts {
		assert.ErrorContains(t, err, s, "%s: error text", what)
	}
	return ce
}

// extraCopies counts the deliveries beyond the first of each message, given
// how often each was delivered.
func extraCopies[K comparable](counts map[K]int) int {
	n := 0
	for _, c := range counts {
		n += max(c-1, 0)
	}
	return n
}

// serverVersion is the RabbitMQ version a broker reports in the server
// properties of its connection.start ("version": "4.3.6").
type serverVersion struct {
	Major, Minor, Patch int
	Raw                 string
}

func (v serverVersion) String() string { return v.Raw }

// AtLeast reports whether v is major.minor or later.
func (v serverVersion) AtLeast(major, minor int) bool {
	return v.Major > major || v.Major == major && v.Minor >= minor
}

// matches reports whether v is of the release series want ("4.3": 4.3.x;
// "4": 4.x).
func (v serverVersion) matches(want string) bool {
	return v.Raw == want || strings.HasPrefix(v.Raw, want+".")
}

// parseServerVersion parses "MAJOR.MINOR[.PATCH][suffix]".
func parseServerVersion(raw string) (serverVersion, error) {
	v := serverVersion{Raw: raw}
	parts := strings.SplitN(raw, ".", 3)
	if len(parts) < 2 {
		return v, fmt.Errorf("server version %q is not MAJOR.MINOR[.PATCH]", raw)
	}
	nums := []*int{&v.Major, &v.Minor, &v.Patch}
	for i, p := range parts {
		if i == 2 { // the patch may carry a suffix: "4.3.6+1", "4.3.0-rc.1"
			p = p[:len(p)-len(strings.TrimLeft(p, "0123456789"))]
		}
		n, err := strconv.Atoi(p)
		if err != nil {
			return v, fmt.Errorf("server version %q is not MAJOR.MINOR[.PATCH]", raw)
		}
		*nums[i] = n
	}
	return v, nil
}

// readServerVersion dials url with amqp091-go and reads the version from
// the connection's server properties.
func readServerVersion(ctx context.Context, url string) (serverVersion, error) {
	var d net.Dialer
	conn, err := amqp.DialConfig(url, amqp.Config{Dial: func(network, addr string) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		return d.DialContext(ctx, network, addr)
	}})
	if err != nil {
		return serverVersion{}, fmt.Errorf("reading the server version: %w", err)
	}
	defer conn.Close()
	raw, ok := conn.Properties["version"].(string)
	if !ok {
		return serverVersion{}, fmt.Errorf("reading the server version: server properties carry no version string: %v", conn.Properties["version"])
	}
	return parseServerVersion(raw)
}

var versions sync.Map // broker URL -> serverVersion

// brokerVersion returns the RabbitMQ version of b from its server
// properties, read once per broker. It fails the test (never skips it) when
// the version cannot be read or parsed.
func brokerVersion(t testing.TB, b *brokertest.Broker) serverVersion {
	t.Helper()
	if v, ok := versions.Load(b.URL); ok {
		return v.(serverVersion)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := readServerVersion(ctx, b.URL)
	if err != nil {
		t.Fatalf("broker %s: %v", b, err)
	}
	versions.Store(b.URL, v)
	return v
}

// brokerAtLeast reports whether b runs RabbitMQ major.minor or later, and
// logs the version and why the test asks: a test whose expectations depend
// on the version says so in its output.
func brokerAtLeast(t testing.TB, b *brokertest.Broker, major, minor int, why string) bool {
	t.Helper()
	v := brokerVersion(t, b)
	at := v.AtLeast(major, minor)
	t.Logf("RabbitMQ %s (>= %d.%d: %v): %s", v, major, minor, at, why)
	return at
}

// castToConsumerChannels makes every broker channel process that has a
// consumer handle method (an Erlang record tuple such as
// "{'basic.ack', 9999, false}") as if its client had sent it, with
// rabbitmqctl eval, and returns how many channels it reached. It works on
// RabbitMQ 3.x and 4.x: it makes the cast rabbit_channel:do/2 made on 3.x,
// which 4.x removed.
func castToConsumerChannels(t *testing.T, b *brokertest.Broker, method string) int {
	t.Helper()
	out := ctl(t, b, "eval", `length([gen_server2:cast(P, {method, `+method+`, none, noflow}) || P <- rabbit_channel:list(), `+
		`proplists:get_value(consumer_count, rabbit_channel:info(P, [consumer_count])) > 0]).`)
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("rabbitmqctl eval printed %q, want a count of channels", out)
	}
	return n
}
