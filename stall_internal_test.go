package warren

import "testing"

func TestSendOpNamesEveryOperationThatSends(t *testing.T) {
	for _, op := range []string{"basic.publish", "basic.ack", "basic.nack", "basic.reject"} {
		if got := sendOps[sendOp(op)]; got != op {
			t.Errorf("sendOps[sendOp(%q)] = %q", op, got)
		}
	}
	if got := sendOps[sendOp("queue.declare")]; got != "a write" {
		t.Errorf("unknown op named %q", got)
	}
}
