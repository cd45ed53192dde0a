package warren

import (
	"errors"
	"fmt"
	"net"
	"testing"
	"time"
)

// FIXED BUG (found under load by a reconnect test): a channel.open whose
// socket write failed came back as a bare *net.OpError, because amqp091-go
// returns the write error before it marks the connection closed (on a
// goroutine of its own); with WithReconnect, Client.Consume then gave up
// instead of subscribing again. A socket error is the connection's error
// once the connection is declared dead; anything else is left alone at once.
func TestASocketErrorIsTheConnectionsOnceItIsDeclaredDead(t *testing.T) {
	c := &session{dead: make(chan struct{}), opts: defaultOptions()}
	c.opts.closeTimeout = 5 * time.Second
	ce := &ConnectionError{Code: 501, Reason: "write: connection reset by peer"}
	c.connErr.Store(ce)
	go func() {
		time.Sleep(20 * time.Millisecond) // amqp091-go's shutdown, a moment later
		close(c.dead)
	}()
	sockErr := &net.OpError{Op: "write", Net: "tcp", Err: errors.New("connection reset by peer")}
	err := c.dyingConn("channel.open", fmt.Errorf("wrapped: %w", sockErr))
	var got *ConnectionError
	if !errors.As(err, &got) || got.Op != "channel.open" {
		t.Fatalf("dyingConn(socket error): got %v (%T), want the *ConnectionError tagged channel.open", err, err)
	}
	start := time.Now()
	if err := c.dyingConn("basic.qos", errors.New("amqp: prefetchSize is unsupported")); err != nil {
		t.Fatalf("dyingConn(not a socket error): got %v, want nil", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("dyingConn(not a socket error) took %v, want no wait", d)
	}
}
