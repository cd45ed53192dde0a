package warren

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestEveryReplyCodeHasASentinelThatErrorsIsMatches(t *testing.T) {
	sentinels := map[ReplyCode]error{
		311: ErrContentTooLarge, 312: ErrNoRoute, 313: ErrNoConsumers, 320: ErrConnectionForced,
		402: ErrInvalidPath, 403: ErrAccessRefused, 404: ErrNotFound, 405: ErrResourceLocked,
		406: ErrPreconditionFailed, 501: ErrFrameError, 502: ErrSyntaxError, 503: ErrCommandInvalid,
		504: ErrChannelError, 505: ErrUnexpectedFrame, 506: ErrResourceError, 530: ErrNotAllowed,
		540: ErrNotImplemented, 541: ErrInternalError,
	}
	if len(sentinels) != len(codeNames) {
		t.Fatalf("got %d sentinels, want one per code in the table (%d)", len(sentinels), len(codeNames))
	}
	for code, sentinel := range sentinels {
		chErr := fmt.Errorf("wrapped: %w", &ChannelError{ChannelID: 7, Code: code, Reason: "x", Op: "queue.declare"})
		connErr := fmt.Errorf("wrapped: %w", &ConnectionError{Code: code, Reason: "x", Server: true})
		if !errors.Is(chErr, sentinel) {
			t.Errorf("errors.Is(ChannelError %d, %v) = false, want true", code, sentinel)
		}
		if !errors.Is(connErr, sentinel) {
			t.Errorf("errors.Is(ConnectionError %d, %v) = false, want true", code, sentinel)
		}
		if got, ok := CodeOf(chErr); !ok || got != code {
			t.Errorf("CodeOf(ChannelError %d) = %d, %v; want %d, true", code, got, ok, code)
		}
		if !strings.Contains(sentinel.Error(), code.String()) {
			t.Errorf("sentinel text %q does not name %s", sentinel.Error(), code)
		}
		for other, s := range sentinels {
			if other != code && errors.Is(chErr, s) {
				t.Errorf("ChannelError %d matches the sentinel for %d", code, other)
			}
		}
	}
}

func TestReplyCodeLevelsFollowTheSpec(t *testing.T) {
	cases := map[ReplyCode]Level{
		311: LevelChannel, 312: LevelMessage, 313: LevelMessage, 320: LevelConnection,
		402: LevelConnection, 403: LevelChannel, 404: LevelChannel, 405: LevelChannel,
		406: LevelChannel, 501: LevelConnection, 502: LevelConnection, 503: LevelConnection,
		504: LevelConnection, 505: LevelConnection, 506: LevelConnection, 530: LevelConnection,
		540: LevelConnection, 541: LevelConnection, 999: LevelUnknown,
	}
	for code, want := range cases {
		if got := code.Level(); got != want {
			t.Errorf("ReplyCode(%d).Level() = %v, want %v", int(code), got, want)
		}
	}
}

func TestConnectionLostMatchesOnlyClientSideFailures(t *testing.T) {
	lost := &ConnectionError{Code: 501, Reason: "read tcp: connection reset by peer", Server: false}
	if !errors.Is(lost, ErrConnectionLost) {
		t.Error("errors.Is(client-side ConnectionError, ErrConnectionLost) = false, want true")
	}
	if errors.Is(lost, ErrFrameError) {
		t.Error("a local I/O failure matches ErrFrameError, want only broker-sent codes to match")
	}
	if _, ok := CodeOf(lost); ok {
		t.Error("CodeOf(client-side ConnectionError) reports a broker code, want none")
	}
	forced := &ConnectionError{Code: 320, Reason: "CONNECTION_FORCED - bye", Server: true}
	if errors.Is(forced, ErrConnectionLost) {
		t.Error("errors.Is(broker close, ErrConnectionLost) = true, want false")
	}
	if !IsConnectionLevel(forced) || IsChannelLevel(forced) {
		t.Error("a ConnectionError must be connection-level and not channel-level")
	}
	if !IsConnectionLevel(ErrClientClosed) {
		t.Error("ErrClientClosed must be connection-level")
	}
}

func TestErrorTextNamesChannelOperationAndBrokerReason(t *testing.T) {
	err := &ChannelError{ChannelID: 3, Code: 404, Reason: "NOT_FOUND - no exchange 'missing' in vhost '/'", Op: "basic.publish"}
	want := "warren: basic.publish on channel 3: channel closed by broker: 404 NOT_FOUND - no exchange 'missing' in vhost '/'"
	if got := err.Error(); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	bare := &ChannelError{ChannelID: 3, Code: 406, Reason: "", Op: "close"}
	if got := bare.Error(); !strings.HasSuffix(got, "406 PRECONDITION_FAILED") {
		t.Errorf("got %q, want the code name when the broker sent no text", got)
	}
}

func TestChannelMaxAndPoisonedErrorsMatchTheirSentinels(t *testing.T) {
	if err := fmt.Errorf("x: %w", &ChannelMaxError{Max: 3}); !errors.Is(err, ErrChannelMax) {
		t.Error("ChannelMaxError does not match ErrChannelMax")
	}
	p := &PoisonedError{ChannelID: 2, Op: "queue.declare", Cause: errors.New("context deadline exceeded")}
	if !errors.Is(p, ErrPoisoned) {
		t.Error("PoisonedError does not match ErrPoisoned")
	}
	if !strings.Contains(p.Error(), "queue.declare") {
		t.Errorf("got %q, want the abandoned operation named", p.Error())
	}
}

func TestWithOpTagsACopyNotTheRecordedCause(t *testing.T) {
	cause := &ChannelError{ChannelID: 1, Code: 404, Reason: "r"}
	got := withOp(cause, "basic.get").(*ChannelError)
	if got.Op != "basic.get" || cause.Op != "" {
		t.Errorf("got op %q and recorded op %q, want %q and unchanged", got.Op, cause.Op, "basic.get")
	}
}
