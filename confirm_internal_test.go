package warren

import (
	"errors"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

// trackerWith returns a tracker (no AMQP channel behind it) holding pending
// publishes with tags first..first+n-1.
func trackerWith(first uint64, n int) (*confirmTracker, []*Confirmation) {
	st := &channel{c: &session{opts: defaultOptions(), cnt: new(counters)}, id: 7}
	t := &confirmTracker{st: st, base: first}
	confs := make([]*Confirmation, n)
	for i := range confs {
		c := newConfirmation()
		c.tag, c.chID = first+uint64(i), st.id
		confs[i] = c
		t.q = append(t.q, c)
	}
	return t, confs
}

func resolved(c *Confirmation) (error, bool) {
	select {
	case <-c.done:
		return c.err, true
	default:
		return nil, false
	}
}

// RabbitMQ sends basic.return before the ack of the same message; the wire
// reports the ack before amqp091-go has delivered the return, so the ack
// waits for it.
func TestTrackerResolvesAcksNacksAndReturns(t *testing.T) {
	tr, confs := trackerWith(1, 4)
	tr.returnSeen()              // the return of tag 2 is on its way...
	tr.confirmed(1, false, true) // ...so this ack waits,
	tr.confirmed(2, false, true) // and this one, whose return it is.
	if _, ok := resolved(confs[0]); ok {
		t.Fatal("an ack read while a return was on its way was applied before the return")
	}
	ret := amqp.Return{ReplyCode: 312, ReplyText: "NO_ROUTE", RoutingKey: "k",
		Headers: amqp.Table{StampHeader: int64(2), "keep": "me"}}
	tr.returned(&ret)
	tr.confirmed(3, false, false)

	if err, ok := resolved(confs[0]); !ok || err != nil {
		t.Errorf("tag 1: %v, %v; want acked", err, ok)
	}
	err, ok := resolved(confs[1])
	var ue *UnroutableError
	if !ok || !errors.As(err, &ue) || ue.Code != CodeNoRoute || ue.DeliveryTag != 2 || ue.ChannelID != 7 {
		t.Errorf("tag 2: %v, %v; want *UnroutableError 312 for tag 2 on channel 7", err, ok)
	} else if _, stamped := ue.Return.Headers[StampHeader]; stamped || ue.Return.Headers["keep"] != "me" {
		t.Errorf("tag 2: returned headers %v: want the stamp removed and the rest kept", ue.Return.Headers)
	}
	var ne *NackedError
	if err, ok := resolved(confs[2]); !ok || !errors.As(err, &ne) || ne.DeliveryTag != 3 {
		t.Errorf("tag 3: %v, %v; want *NackedError for tag 3", err, ok)
	}
	if _, ok := resolved(confs[3]); ok {
		t.Errorf("tag 4 resolved without an answer")
	}
	if n := tr.pending(); n != 1 {
		t.Errorf("pending: %d, want 1", n)
	}

	cause := errors.New("channel gone")
	tr.failAll(cause)
	err, ok = resolved(confs[3])
	if !ok || !errors.Is(err, ErrOutcomeUnknown) || !errors.Is(err, cause) {
		t.Errorf("tag 4 after failAll: %v, %v; want outcome unknown wrapping the cause", err, ok)
	}
}

// Out-of-order single acks and multiple acks resolve each publish exactly
// once; a repeated confirm is counted as stray.
func TestTrackerOutOfOrderAndMultipleConfirms(t *testing.T) {
	tr, confs := trackerWith(10, 5)
	tr.confirmed(12, false, true)
	tr.confirmed(11, true, true) // 10 and 11; 12 is done already
	tr.confirmed(14, false, false)
	for i, want := range []bool{true, true, true, false, true} {
		if _, ok := resolved(confs[i]); ok != want {
			t.Errorf("tag %d resolved %v, want %v", 10+i, ok, want)
		}
	}
	tr.confirmed(13, true, true)
	for i, c := range confs {
		err, ok := resolved(c)
		if !ok {
			t.Fatalf("tag %d unresolved", 10+i)
		}
		if wantNack := i == 4; errors.Is(err, ErrNacked) != wantNack {
			t.Errorf("tag %d: %v", 10+i, err)
		}
	}
	if n := tr.pending(); n != 0 {
		t.Errorf("pending: %d, want 0", n)
	}
	tr.confirmed(12, false, false) // repeated
	if n := tr.st.c.cnt.strayConfirms.Load(); n != 1 {
		t.Errorf("strayConfirms: %d, want 1", n)
	}
	if err, _ := resolved(confs[2]); err != nil {
		t.Errorf("tag 12 changed after a repeated confirmation: %v", err)
	}
}

func TestTrackerReturnWithoutAStampIsCountedAsStray(t *testing.T) {
	tr, confs := trackerWith(1, 1)
	tr.returnSeen()
	tr.returned(&amqp.Return{ReplyCode: 312})
	tr.returnSeen()
	tr.returned(&amqp.Return{ReplyCode: 312, Headers: amqp.Table{StampHeader: int64(99)}})
	if n := tr.st.c.cnt.strayReturns.Load(); n != 2 {
		t.Errorf("strayReturns: %d, want 2", n)
	}
	tr.confirmed(1, false, true)
	if err, ok := resolved(confs[0]); !ok || err != nil {
		t.Errorf("tag 1: %v, %v; want acked (the stray returns were not its own)", err, ok)
	}
}

// failAll leaves the publish whose frames are being written to publish,
// which resolves it once the write returns.
func TestTrackerFailAllLeavesTheSendingPublish(t *testing.T) {
	tr, confs := trackerWith(1, 2)
	tr.sending = confs[1]
	tr.failAll(ErrChannelClosed)
	if _, ok := resolved(confs[0]); !ok {
		t.Error("tag 1 unresolved after failAll")
	}
	if _, ok := resolved(confs[1]); ok {
		t.Error("the publish being written was resolved by failAll")
	}
	if len(tr.q) != 1 || tr.q[0] != confs[1] {
		t.Errorf("queue after failAll: %v, want only the sending publish", tr.q)
	}
}

func TestStampOfReadsAndRemovesTheStamp(t *testing.T) {
	r := amqp.Return{Headers: amqp.Table{"a": "b", StampHeader: int64(42)}}
	if tag, ok := stampOf(&r); !ok || tag != 42 {
		t.Errorf("stampOf: %d, %v; want 42, true", tag, ok)
	}
	if _, ok := r.Headers[StampHeader]; ok || r.Headers["a"] != "b" {
		t.Errorf("stampOf left %v; want only the caller's header", r.Headers)
	}
	r2 := amqp.Return{Headers: amqp.Table{StampHeader: int64(1)}}
	if _, ok := stampOf(&r2); !ok || r2.Headers != nil {
		t.Errorf("a stamp-only table should read back and leave nil headers, left %v", r2.Headers)
	}
}
