package warren

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// bareRPC is an RPCClient with one lane and no Client: enough for what
// happens before anything is sent, and for the reader's matching.
func bareRPC() *RPCClient {
	return &RPCClient{prefix: "0123456789abcdef-", lanes: make([]rpcLane, 1), closing: make(chan struct{})}
}

func TestRPCCallRefusesBadRequestsBeforeUsingTheConnection(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r := bareRPC() // no Client: reaching for the connection would panic
	for _, tc := range []struct {
		name     string
		key      string
		req      Publishing
		contains string
	}{
		{"own correlation id", "q", Publishing{CorrelationId: "mine"}, "CorrelationId"},
		{"own reply-to", "q", Publishing{ReplyTo: "mine"}, "ReplyTo"},
		{"bad expiration", "q", Publishing{Expiration: "1h"}, "expiration"},
		{"bad header", "q", Publishing{Headers: Table{"x": struct{}{}}}, "headers"},
		{"long key", strings.Repeat("k", 256), Publishing{}, "routing key"},
		{"long message id", "q", Publishing{MessageId: strings.Repeat("m", 256)}, "message id"},
	} {
		_, err := r.Call(ctx, "", tc.key, tc.req)
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tc.contains) {
			t.Errorf("%s: got %v, want ErrInvalidArgument mentioning %q", tc.name, err, tc.contains)
		}
	}
	if st := r.Stats(); st.Calls != 0 {
		t.Errorf("Stats: got %+v, want no calls counted for refused requests", st)
	}
}

func TestRPCCallAfterCloseReturnsErrRPCClientClosed(t *testing.T) {
	r := bareRPC()
	if err := r.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := r.Call(context.Background(), "", "q", Publishing{}); !errors.Is(err, ErrRPCClientClosed) {
		t.Fatalf("Call after Close: got %v, want ErrRPCClientClosed", err)
	}
	if err := r.Close(context.Background()); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestNewRPCClientAndServeRefuseBadOptions(t *testing.T) {
	ctx := context.Background()
	c := &Client{} // never reached
	if _, err := c.NewRPCClient(ctx, RPCOptions{Channels: -1}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("NewRPCClient(Channels: -1): got %v, want ErrInvalidArgument", err)
	}
	if err := c.Serve(ctx, "q", nil, ServeOptions{}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("Serve(nil handler): got %v, want ErrInvalidArgument", err)
	}
	h := func(context.Context, *Delivery) (Publishing, error) { return Publishing{}, nil }
	if err := c.Serve(ctx, "q", h, ServeOptions{ConsumeOptions: ConsumeOptions{AutoAck: true}}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("Serve(AutoAck): got %v, want ErrInvalidArgument", err)
	}
}

func TestRPCParseKnowsOnlyIssuedIds(t *testing.T) {
	r := bareRPC()
	r.seq.Store(40)
	for _, tc := range []struct {
		id   string
		seq  uint64
		want bool
	}{
		{r.prefix + "1", 1, true},
		{r.prefix + "14", 40, true}, // base 36
		{r.prefix + "15", 0, false}, // 41: never issued
		{r.prefix + "0", 0, false},
		{r.prefix + "", 0, false},
		{r.prefix + "zz!", 0, false},
		{"fedcba9876543210-1", 0, false}, // another client's
		{"1", 0, false},
	} {
		seq, ok := r.parse(tc.id)
		if ok != tc.want || seq != tc.seq {
			t.Errorf("parse(%q): got %d, %v; want %d, %v", tc.id, seq, ok, tc.seq, tc.want)
		}
	}
}

func TestRPCReaderHandsEachReplyToItsOwnCaller(t *testing.T) {
	r := bareRPC()
	rc := &rpcChan{r: r, st: &channel{id: 3}, waiters: map[uint64]chan<- rpcResult{}}
	ws := make([]chan rpcResult, 4)
	for i := range ws {
		ws[i] = make(chan rpcResult, 1)
		if err := rc.register(r.seq.Add(1), ws[i]); err != nil {
			t.Fatal(err)
		}
	}
	id := func(seq uint64) string { return r.prefix + strconv.FormatUint(seq, 36) }
	rc.reply(amqp.Delivery{CorrelationId: id(2), Body: []byte("two")})
	rc.reply(amqp.Delivery{CorrelationId: id(2), Body: []byte("two again")})                       // late: already answered
	rc.reply(amqp.Delivery{CorrelationId: r.prefix + "9", Body: []byte("never issued")})           // unknown
	rc.reply(amqp.Delivery{CorrelationId: "someone-else", Body: []byte("not ours")})               // unknown
	rc.reply(amqp.Delivery{CorrelationId: id(1), Headers: amqp.Table{RPCErrorHeader: "it broke"}}) // remote error
	rc.returned(amqp.Return{CorrelationId: id(3), ReplyCode: 312, ReplyText: "NO_ROUTE", RoutingKey: "k"})

	if res := <-ws[1]; res.err != nil || string(res.d.Body) != "two" {
		t.Errorf("call 2: got %v, %v; want its reply", res.d, res.err)
	}
	var re *RemoteError
	if res := <-ws[0]; !errors.As(res.err, &re) || re.Message != "it broke" || re.Reply == nil {
		t.Errorf("call 1: got %v, want a *RemoteError \"it broke\" with the reply", res.err)
	}
	var ue *UnroutableError
	if res := <-ws[2]; !errors.As(res.err, &ue) || !errors.Is(res.err, ErrUnroutable) || ue.ChannelID != 3 || ue.Code != 312 {
		t.Errorf("call 3: got %v, want an *UnroutableError on channel 3, code 312", res.err)
	}
	select {
	case res := <-ws[3]:
		t.Errorf("call 4 got %+v, want nothing yet", res)
	default:
	}
	st := r.Stats()
	if st.Replies != 2 || st.RemoteErrors != 1 || st.LateReplies != 1 || st.UnknownReplies != 2 {
		t.Errorf("Stats: got %+v, want Replies 2, RemoteErrors 1, LateReplies 1, UnknownReplies 2", st)
	}
	if !rc.unregister(4) || rc.unregister(4) {
		t.Errorf("unregister(4): want true once, then false")
	}
}

func TestServeClipsLongErrorTexts(t *testing.T) {
	long := strings.Repeat("e", 3*maxRemoteError)
	msg := errorReply(errors.New(long))
	if got := msg.Headers[RPCErrorHeader].(string); len(got) != maxRemoteError {
		t.Errorf("error header of %d bytes, want %d", len(got), maxRemoteError)
	}
	if got := headerText([]byte("bytes")); got != "bytes" {
		t.Errorf("headerText([]byte): got %q", got)
	}
	if got := (&RemoteError{Message: "m"}).Error(); !strings.Contains(got, "m") {
		t.Errorf("RemoteError text %q does not hold its message", got)
	}
}
