package warren

import (
	"strconv"
	"strings"
	"testing"
)

func TestPublishInfoSetHeaderCopiesOnWriteAndNeverReplaces(t *testing.T) {
	caller := Table{"traceparent": "mine", "app": int32(1)}
	p := &PublishInfo{Message: Message{Publishing: Publishing{Headers: caller}}}
	if p.SetHeader("traceparent", "theirs") {
		t.Error("SetHeader replaced the caller's traceparent")
	}
	if !p.SetHeader("baggage", "k=v") {
		t.Error("SetHeader(baggage) = false, want true")
	}
	if len(caller) != 2 || caller["traceparent"] != "mine" {
		t.Errorf("the caller's table was modified: %v", caller)
	}
	if p.Headers["baggage"] != "k=v" || p.Headers["traceparent"] != "mine" || p.Headers["app"] != int32(1) {
		t.Errorf("headers after SetHeader: %v", p.Headers)
	}
	for _, key := range []string{strings.Repeat("k", 256), "\xff"} {
		if p.SetHeader(key, "v") {
			t.Errorf("SetHeader(%q) = true, want false: AMQP cannot carry the key", key)
		}
	}
	full := Table{}
	for i := range maxTableEntries {
		full[strconv.Itoa(i)] = ""
	}
	p = &PublishInfo{Message: Message{Publishing: Publishing{Headers: full}}}
	if p.SetHeader("traceparent", "v") {
		t.Errorf("SetHeader on a table of %d entries = true, want false", len(full))
	}
}

func TestPublishInfoSetHeaderOnNoHeaders(t *testing.T) {
	p := &PublishInfo{}
	if !p.SetHeader("traceparent", "v") || p.Headers["traceparent"] != "v" {
		t.Errorf("SetHeader on a message without headers: %v", p.Headers)
	}
}
