package warren

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func TestInvalidOptionsAreRefusedBeforeDialing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for name, opt := range map[string]Option{
		"tls nil":         WithTLS(nil),
		"heartbeat 500ms": WithHeartbeat(500 * time.Millisecond),
		"frame size 100":  WithFrameSize(100),
		"logger nil":      WithLogger(nil),
		"close timeout 0": WithCloseTimeout(0),
	} {
		// Port 1 refuses connections: reaching the network would give a
		// different error.
		_, err := Dial(ctx, "amqp://guest:guest@127.0.0.1:1/", opt)
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: got %v, want ErrInvalidArgument", name, err)
		}
	}
}

func TestMalformedURLsAreRefusedWithoutEchoingThePassword(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, u := range []string{
		"amqp://user:pa ss-SECRET@host/",
		"http://user:SECRET@host/",
		"amqp://user:SECRET@host:notaport/",
		"amqp://user:SECRET@host/?heartbeat=abc",
		"amqp://user:SECRET@host/?auth_mechanism=KERBEROS",
	} {
		_, err := Dial(ctx, u)
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("Dial(%q): got %v, want ErrInvalidArgument", u, err)
			continue
		}
		if strings.Contains(err.Error(), "SECRET") {
			t.Errorf("Dial(%q): error %q contains the password", u, err)
		}
	}
}

func TestRedactedEndpointHasNoPassword(t *testing.T) {
	uri, err := amqp.ParseURI("amqps://alice:SECRET@broker.example:5671/prod%2Fv1")
	if err != nil {
		t.Fatal(err)
	}
	got := redact(uri)
	want := "amqps://alice@broker.example:5671/prod%2Fv1"
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
