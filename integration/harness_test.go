package integration

// Tests of the test harness itself, run against whichever broker the suite
// has: the server version helper, the Erlang cast that fault tests use to
// make the broker close a channel, and container control (pause).

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/internal/brokertest"
)

func TestHarnessParsesServerVersions(t *testing.T) {
	for raw, want := range map[string]serverVersion{
		"3.10.8":     {3, 10, 8, "3.10.8"},
		"4.3.6":      {4, 3, 6, "4.3.6"},
		"4.3.0-rc.1": {4, 3, 0, "4.3.0-rc.1"},
		"4.1":        {4, 1, 0, "4.1"},
	} {
		got, err := parseServerVersion(raw)
		if err != nil || got != want {
			t.Errorf("parseServerVersion(%q) = %+v, %v; want %+v", raw, got, err, want)
		}
	}
	for _, raw := range []string{"", "4", "four.3", "4.x.1", "4.3.x"} {
		if v, err := parseServerVersion(raw); err == nil {
			t.Errorf("parseServerVersion(%q) = %+v, want an error", raw, v)
		}
	}
	v := serverVersion{4, 3, 6, "4.3.6"}
	if !v.matches("4.3") || !v.matches("4") || v.matches("4.30") || v.matches("3") || !v.AtLeast(4, 0) || !v.AtLeast(3, 10) || v.AtLeast(4, 4) {
		t.Errorf("4.3.6: matches/AtLeast disagree with the version")
	}
}

// The broker reports its version in its server properties, and it is the
// version WARREN_BROKER asked for.
func TestHarnessReadsTheBrokerVersionFromItsServerProperties(t *testing.T) {
	b := brokertest.Need(t, broker)
	v := brokerVersion(t, b)
	t.Logf("broker %s runs RabbitMQ %s", b, v)
	if want := brokertest.WantedVersion(); want != "" && !v.matches(want) {
		t.Errorf("RabbitMQ %s, want %s.x (%s)", v, want, brokertest.VersionEnv)
	}
}

// castToConsumerChannels reaches a consumer's channel on every version:
// an ack of an unknown delivery tag cast into it makes the broker close
// the channel with 406 PRECONDITION_FAILED.
func TestHarnessCastMakesTheBrokerCloseAConsumerChannel(t *testing.T) {
	b := brokertest.Need(t, broker)
	needPrivate(t, b)
	conn, err := amqp.Dial(b.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.Consume(q.Name, "", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	// Why the helper casts: the function 3.x tests called is gone in 4.x.
	gone := brokerAtLeast(t, b, 4, 0, "rabbit_channel:do/2 is gone from 4.0 on")
	exported := strings.TrimSpace(ctl(t, b, "eval",
		`{module, rabbit_channel} = code:ensure_loaded(rabbit_channel), erlang:function_exported(rabbit_channel, do, 2).`))
	if want := strconv.FormatBool(!gone); exported != want {
		t.Errorf("rabbit_channel:do/2 exported: %s, want %s", exported, want)
	}
	if n := castToConsumerChannels(t, b, "{'basic.ack', 9999, false}"); n < 1 {
		t.Fatalf("the cast reached %d channels with a consumer, want at least ours", n)
	}
	select {
	case e := <-closed:
		if e == nil || e.Code != amqp.PreconditionFailed {
			t.Fatalf("channel closed with %v, want 406 PRECONDITION_FAILED", e)
		}
		t.Logf("RabbitMQ %s closed the channel: %v", brokerVersion(t, b), e)
	case <-time.After(20 * time.Second):
		t.Fatal("the broker did not close the channel")
	}
}

// A paused container answers nothing, heartbeats included, until it is
// unpaused; a private node cannot be paused.
func TestHarnessPauseFreezesAContainerBroker(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	if err := b.Pause(ctx); errors.Is(err, brokertest.ErrUnsupported) {
		t.Skipf("the broker cannot be paused: %s", b)
	} else if err != nil {
		t.Fatal(err)
	}
	paused := true
	t.Cleanup(func() {
		if paused {
			_ = b.Unpause(context.Background())
		}
	})
	// The engine's port forwarder accepts the TCP connection; the broker
	// behind it does not answer the protocol header.
	if err := probeProtocolHeader(b.Addr(), time.Second); err == nil {
		t.Fatal("a paused broker answered the AMQP protocol header")
	}
	if err := b.Unpause(ctx); err != nil {
		t.Fatal(err)
	}
	paused = false
	if err := probeProtocolHeader(b.Addr(), 10*time.Second); err != nil {
		t.Fatalf("after Unpause: %v", err)
	}
}

// probeProtocolHeader sends the AMQP protocol header to addr and waits up
// to d for the first byte of connection.start.
func probeProtocolHeader(addr string, d time.Duration) error {
	conn, err := net.DialTimeout("tcp", addr, d)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(d))
	if _, err := conn.Write([]byte("AMQP\x00\x00\x09\x01")); err != nil {
		return err
	}
	var first [1]byte
	if _, err := conn.Read(first[:]); err != nil {
		return err
	}
	if first[0] != 1 {
		return errors.New("the answer is not a method frame")
	}
	return nil
}
