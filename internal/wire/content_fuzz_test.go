package wire

import (
	"bytes"
	"errors"
	"slices"
	"testing"
)

// FuzzConnContent interleaves WriteContent with amqp091-go's Writes (whole
// frames, frames over two Writes with a WriteContent started between them),
// the broker's frames, and Cork/Uncork, against the channel-state model of
// FuzzConnModel: a content goes out whole, after the frame it waited for,
// exactly when the model says its channel is open and not closing (else
// ErrChannelClosed and nothing written); corked bytes go out at the last
// Uncork, in order.
//
// A program is a list of two-byte steps: op<<5 | kind<<2 | channel index,
// then an argument x. To fuzz:
//
//	go test -run '^$' -fuzz FuzzConnContent -fuzztime 10m -parallel 1 -timeout 0 ./internal/wire
func FuzzConnContent(f *testing.F) {
	const (
		opOut          = iota // one frame, one Write
		opOutSplitWait        // one frame over two Writes, a WriteContent waiting between them
		opContent             // a WriteContent
		opQueueRead           // the broker sends frames and all is read
		opCork
		opUncork
		opOutSplit     // one frame over two Writes
		opContentLarge // a WriteContent of a body over copyMax (the writev path)
	)
	step := func(op, kind, chi int, x byte) []byte { return []byte{byte(op<<5 | kind<<2 | chi), x} }
	prog := func(steps ...[]byte) []byte { return slices.Concat(steps...) }
	f.Add(prog(step(opOut, 0, 0, 0), step(opContent, 0, 0, 5), step(opOutSplitWait, 7, 0, 3),
		step(opOut, 1, 0, 0), step(opContent, 0, 0, 9), step(opQueueRead, 1, 0, 0), step(opContent, 0, 0, 1)))
	f.Add(prog(step(opOut, 0, 1, 0), step(opCork, 0, 0, 0), step(opContent, 0, 1, 200), step(opOutSplit, 7, 1, 4),
		step(opContentLarge, 0, 1, 3), step(opUncork, 0, 0, 0), step(opQueueRead, 0, 1, 7), step(opContent, 0, 1, 2),
		step(opOut, 2, 1, 0), step(opContent, 0, 1, 2), step(opOut, 0, 1, 0), step(opContent, 0, 1, 2)))
	f.Add(prog(step(opOut, 0, 0, 0), step(opOut, 0, 1, 0), step(opOutSplitWait, 1, 0, 2), step(opOutSplitWait, 5, 1, 130),
		step(opCork, 0, 0, 0), step(opOutSplitWait, 4, 1, 77), step(opCork, 0, 0, 0), step(opUncork, 0, 0, 0),
		step(opContent, 0, 1, 0), step(opUncork, 0, 0, 0)))
	chans := []uint16{1, 2, 0, 65535}
	outFrame := func(kind, x byte, ch uint16) []byte {
		switch kind % 8 {
		case 0:
			return chanOpen(ch)
		case 1:
			return chanClose(ch, 200, "bye")
		case 2:
			return chanCloseOK(ch)
		case 3:
			return basicPublishMethod(ch, "", "q")
		case 4:
			return contentHeader(ch, 60, uint64(x))
		case 5:
			return bodyFrame(ch, pattern(int(x)%50))
		case 6:
			return heartbeat()
		default:
			return basicQos(ch, uint16(x))
		}
	}
	inFrames := func(kind, x byte, ch uint16) []byte {
		switch kind % 4 {
		case 0:
			return chanClose(ch, 300+uint16(x), "err")
		case 1:
			return chanCloseOK(ch)
		case 2:
			return delivery(ch, uint64(x), pattern(int(x)%40))
		default:
			return basicAck(ch, uint64(x))
		}
	}
	f.Fuzz(func(t *testing.T, prog []byte) {
		if len(prog) > 200 {
			prog = prog[:200]
		}
		r := newMemRig(t)
		// Both large-body paths: writev (a TCP socket) and runs of frames
		// (TLS), by the program's length.
		r.c.vectored = len(prog)%2 == 0
		m := newModel()
		r.write([]byte(protoHeader))
		m.out = append(m.out, protoHeader...)
		corks, flushed := 0, len(m.out) // m.out[:flushed] must have reached the socket
		large := 0
		content := func(ch uint16, size, maxBody int) {
			head, body := contentHead(ch, size), pattern(size)
			err := r.c.WriteContent(ch, 0, head, body, maxBody)
			m.contentOut(t, ch, head, body, maxBody, err)
		}
		for step := 0; len(prog) >= 2; step++ {
			op, kind, chi, x := int(prog[0]>>5), int(prog[0]>>2)&7, int(prog[0]&3), prog[1]
			prog = prog[2:]
			ch := chans[chi]
			switch op {
			case opOut:
				fr := outFrame(byte(kind), x, ch)
				r.write(fr)
				m.outFrame(fr)
			case opOutSplit, opOutSplitWait:
				fr := outFrame(byte(kind), x, ch)
				k := 1 + int(x)%(len(fr)-1)
				r.write(fr[:k])
				if op == opOutSplit {
					r.write(fr[k:])
					m.outFrame(fr)
					break
				}
				cch := chans[int(x>>6)%len(chans)]
				size, maxBody := int(x)%20, int(x>>4)%5
				head, body := contentHead(cch, size), pattern(size)
				done := goContent(r.c, cch, head, body, maxBody)
				waitWaiters(t, r.c, 1)
				r.write(fr[k:])
				err := result(t, done)
				m.outFrame(fr)
				m.contentOut(t, cch, head, body, maxBody, err)
			case opContent:
				content(ch, int(x)%64, int(x>>5))
			case opContentLarge:
				if large < 3 {
					large++
					content(ch, copyMax+1+int(x), 4000+int(x))
				}
			case opQueueRead:
				m.queueIn(inFrames(byte(kind), x, ch))
				r.sizes, r.nread = []int{4096}, 0
				r.feed(m.inData[m.delivered:])
				m.deliver(m.pending())
			case opCork:
				if corks < 3 {
					r.c.Cork()
					corks++
				}
			case opUncork:
				if corks > 0 {
					if err := r.c.Uncork(); err != nil {
						t.Fatal(err)
					}
					corks--
				}
			}
			if corks == 0 {
				flushed = len(m.out)
			}
			if got := r.mc.out; !bytes.Equal(got, m.out[:flushed]) {
				t.Fatalf("step %d (op %d kind %d ch %d x %d, corks %d): broker received: %s", step, op, kind, ch, x, corks, diff(got, m.out[:flushed]))
			}
			if d := r.c.Dropped(); d != m.dropped {
				t.Fatalf("step %d: Dropped() = %d, want %d", step, d, m.dropped)
			}
		}
		for ; corks > 0; corks-- {
			if err := r.c.Uncork(); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(r.mc.out, m.out) {
			t.Fatalf("after the last Uncork: %s", diff(r.mc.out, m.out))
		}
		frames, err := readFramesAny(r.mc.out[len(protoHeader):])
		if err != nil {
			t.Fatalf("the stream is not whole frames: %v after %d", err, len(frames))
		}
	})
}

// contentOut is what WriteContent must have done: written the content if
// the channel is open and not closing, else returned ErrChannelClosed.
func (m *model) contentOut(t *testing.T, ch uint16, head, body []byte, maxBody int, err error) {
	t.Helper()
	if ch != 0 && m.open[ch] && !m.awaiting[ch] && !m.closeSent[ch] {
		if err != nil {
			t.Fatalf("WriteContent on open channel %d: %v", ch, err)
		}
		m.out = append(m.out, contentWant(ch, head, body, maxBody)...)
		return
	}
	if !errors.Is(err, ErrChannelClosed) {
		t.Fatalf("WriteContent on channel %d (open %v, awaiting %v, closeSent %v): %v, want ErrChannelClosed",
			ch, m.open[ch], m.awaiting[ch], m.closeSent[ch], err)
	}
}

// readFramesAny cuts b into frames of any size, checking each frame end.
func readFramesAny(b []byte) ([][]byte, error) {
	var fs [][]byte
	for len(b) > 0 {
		if len(b) < frameHeaderLen {
			return fs, errors.New("a partial frame header at the end")
		}
		n := frameHeaderLen + int(uint32(b[3])<<24|uint32(b[4])<<16|uint32(b[5])<<8|uint32(b[6])) + 1
		if n > len(b) {
			return fs, errors.New("a partial frame at the end")
		}
		if b[n-1] != frameEnd {
			return fs, errors.New("bad frame end")
		}
		fs = append(fs, b[:n])
		b = b[n:]
	}
	return fs, nil
}
