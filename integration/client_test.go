package integration

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

func TestConnectionNameHeartbeatAndChannelMaxAreVisibleToTheBroker(t *testing.T) {
	b := brokertest.Need(t, broker)
	needPrivate(t, b)
	ctx := testCtx(t, time.Minute)
	name := "warren-it-" + randHex(6)
	c := dial(t, b.URL, warren.WithName(name), warren.WithHeartbeat(7*time.Second), warren.WithChannelMax(100))
	if got := c.ChannelMax(); got != 100 {
		t.Errorf("client.ChannelMax: got %d, want 100", got)
	}
	openChannel(t, ctx, c)
	openChannel(t, ctx, c)

	var conn brokerConnection
	eventually(t, ctx, "broker lists the connection", func() string {
		var ok bool
		if conn, ok = brokerConnectionNamed(t, b, name); !ok {
			return "no connection with connection_name " + name
		}
		return ""
	})
	if conn.Timeout != 7 {
		t.Errorf("broker's timeout (heartbeat) for the connection: got %d, want 7", conn.Timeout)
	}
	if conn.ChannelMax != 100 {
		t.Errorf("broker's channel_max for the connection: got %d, want 100", conn.ChannelMax)
	}
	if conn.Channels != 2 {
		t.Errorf("broker's channel count for the connection: got %d, want 2", conn.Channels)
	}
	if conn.User != "guest" {
		t.Errorf("broker's user for the connection: got %q, want %q", conn.User, "guest")
	}
	if v, _ := conn.property("product"); v != "warren (amqp091-go)" {
		t.Errorf("client property product: got %v, want %q", v, "warren (amqp091-go)")
	}
	if v, _ := conn.property("version"); v != warren.Version {
		t.Errorf("client property version: got %v, want %q", v, warren.Version)
	}
}

func TestWrongPasswordIsRefusedWithoutLeakingIt(t *testing.T) {
	b := brokertest.Need(t, broker)
	const password = "s3cr3t-PASSWORD-xyz"
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	c, err := warren.Dial(ctx, b.URLWith("guest", password, ""), warren.WithLogger(logger))
	if err == nil {
		c.Close(ctx)
		t.Fatalf("Dial with a wrong password: got a client and nil error, want an error")
	}
	t.Logf("Dial with a wrong password: %v", err)
	if ctx.Err() != nil {
		t.Fatalf("Dial with a wrong password ran until its context ended (%v); want a prompt refusal", ctx.Err())
	}
	if strings.Contains(err.Error(), password) {
		t.Errorf("error text %q contains the password", err)
	}
	if strings.Contains(logs.String(), password) {
		t.Errorf("log output contains the password:\n%s", logs.String())
	}
	if !errors.Is(err, warren.ErrAccessRefused) {
		t.Errorf("errors.Is(err, ErrAccessRefused) = false, want true; err = %v (%T)", err, err)
	}
	var ce *warren.ConnectionError
	if !errors.As(err, &ce) {
		t.Errorf("got %T, want a *warren.ConnectionError", err)
	} else if ce.Code != warren.CodeAccessRefused {
		t.Errorf("got ConnectionError.Code %d, want %d", ce.Code, warren.CodeAccessRefused)
	}
	if code, ok := warren.CodeOf(err); !ok || code != warren.CodeAccessRefused {
		t.Errorf("CodeOf = %d, %v; want %d, true", code, ok, warren.CodeAccessRefused)
	}
}

func TestClientStringAndLogsNeverContainThePassword(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)

	// The fixture's own URL carries the password guest.
	if s := dial(t, b.URL).String(); strings.Contains(s, ":guest@") || !strings.HasPrefix(s, "warren.Client(") {
		t.Errorf("client.String() for %s = %q, want a description without the password", b, s)
	}

	// On a private node a user with a distinctive password; otherwise the
	// broker's own URL, whose password is guest.
	url, user, password := b.URL, "guest", "guest"
	if b.Private() {
		user, password = uniqueName(t, "user-"), "s3cr3t-PASSWORD-"+randHex(6)
		addUser(t, b, user, password, ".*", ".*", ".*")
		url = b.URLWith(user, password, "")
	}
	leak := func(s string) bool {
		if password == "guest" {
			return strings.Contains(s, ":guest@")
		}
		return strings.Contains(s, password)
	}

	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := dial(t, url, warren.WithLogger(logger), warren.WithName(uniqueName(t, "warren-it-")))
	s := c.String()
	if leak(s) {
		t.Errorf("client.String() = %q contains the password", s)
	}
	if !strings.Contains(s, user) || !strings.Contains(s, b.Addr()) {
		t.Errorf("client.String() = %q, want it to name user %q and address %s", s, user, b.Addr())
	}
	ch := openChannel(t, ctx, c)
	if leak(ch.String()) {
		t.Errorf("channel.String() = %q contains the password", ch.String())
	}
	if _, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true}); err != nil {
		t.Fatalf("QueueDeclare: %v", err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	out := logs.String()
	if out == "" {
		t.Fatalf("the logger saw nothing during a dial/close cycle; want at least the connect and close events")
	}
	if leak(out) {
		t.Errorf("log output contains the password:\n%s", out)
	}
	t.Logf("log output:\n%s", out)
}
