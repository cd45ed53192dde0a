package wire

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
)

// Deliveries (bodies split across reads), the broker's heartbeats and
// confirms the hook takes, cut into reads at random points and read with
// buffers of random sizes: amqp091-go gets whole frames only, every frame
// but the confirms, in order, with heartbeats warren adds only between
// frames.
func TestTakenConfirmsHeartbeatsOnlyBetweenFramesAtRandomSplits(t *testing.T) {
	take := func(uint16, uint64, bool, bool) bool { return false }
	for seed := uint64(0); seed < 2000; seed++ {
		rng := rand.New(rand.NewPCG(seed, 1))
		var stream, want []byte
		for i := 0; i < 1+rng.IntN(12); i++ {
			var f []byte
			switch rng.IntN(3) {
			case 0:
				f = delivery(4, uint64(i+1), pattern(rng.IntN(3000)))
				want = append(want, f...)
			case 1:
				f = heartbeat()
			default:
				f = basicAck(3, uint64(i+1))
			}
			stream = append(stream, f...)
		}
		var reads []scriptRead
		for rest := stream; len(rest) > 0; {
			n := min(len(rest), 1+rng.IntN(900))
			reads = append(reads, scriptRead{b: rest[:n]})
			rest = rest[n:]
		}
		c := New(newChunkConn(reads), nil)
		c.SetConfirmHooks(take, func(uint16) {}, func(uint16) {})
		var got []byte
		for k := 0; ; k++ {
			if k > 10*len(stream)+100 {
				t.Fatalf("seed %d: no end", seed)
			}
			size := 4096
			if rng.IntN(4) == 0 {
				size = 1 + rng.IntN(40) // the small-buffer path too
			}
			buf := make([]byte, size)
			n, err := c.Read(buf)
			got = append(got, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("seed %d: %v", seed, err)
			}
		}
		if g := withoutHeartbeats(t, got); !bytes.Equal(g, withoutHeartbeats(t, want)) {
			t.Fatalf("seed %d: amqp091-go got the wrong frames: %s", seed, diff(g, want))
		}
	}
}

// chunkConn is scriptConn that keeps what a small Read could not take.
type chunkConn struct{ scriptConn }

func newChunkConn(reads []scriptRead) *chunkConn { return &chunkConn{scriptConn{reads: reads}} }

func (s *chunkConn) Read(p []byte) (int, error) {
	if len(s.reads) == 0 {
		return 0, io.EOF
	}
	n := copy(p, s.reads[0].b)
	if s.reads[0].b = s.reads[0].b[n:]; len(s.reads[0].b) == 0 {
		s.reads = s.reads[1:]
	}
	return n, nil
}
