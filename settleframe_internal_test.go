package warren

import (
	"bytes"
	"testing"

	"github.com/warrenmq/warren/internal/wire"
)

// The settlement frames warren writes are byte for byte what AMQP 0-9-1
// (and amqp091-go) put on the wire.
func TestSettleFramesAreTheSpecsBytes(t *testing.T) {
	cc := &captureConn{}
	w := wire.New(cc, nil)
	// The protocol header, then channel.open for channel 0x0107: the wire
	// sends nothing on a channel it has not seen opened.
	open := []byte{1, 1, 7, 0, 0, 0, 5, 0, 20, 0, 10, 0, 0xCE}
	if _, err := w.Write(append([]byte("AMQP\x00\x00\x09\x01"), open...)); err != nil {
		t.Fatal(err)
	}
	ch := &channel{id: 0x0107, c: &session{wire: w}}
	for _, tc := range []struct {
		name   string
		method uint16
		bits   byte
		want   []byte // class, method, tag, bits
	}{
		{"ack", methodAck, bit(false, 0), []byte{0, 60, 0, 80, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0}},
		{"ack multiple", methodAck, bit(true, 0), []byte{0, 60, 0, 80, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 1}},
		{"reject requeue", methodReject, bit(true, 0), []byte{0, 60, 0, 90, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 1}},
		{"nack multiple requeue", methodNack, bit(true, 0) | bit(true, 1), []byte{0, 60, 0, 120, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 3}},
		{"nack requeue only", methodNack, bit(false, 0) | bit(true, 1), []byte{0, 60, 0, 120, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 2}},
	} {
		cc.take()
		if err := ch.writeSettle(tc.method, 0x0102030405060708, tc.bits); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		want := append(append([]byte{1, 1, 7, 0, 0, 0, 13}, tc.want...), 0xCE)
		if got := cc.take(); !bytes.Equal(got, want) {
			t.Errorf("%s:\n got % x\nwant % x", tc.name, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _ = ch.writeSettle(methodAck, 1, 0) }); n != 0 {
		t.Errorf("writeSettle: %v allocations, want 0", n)
	}
}
