package wire

import (
	"math/rand/v2"
	"testing"
)

// fitByFeed is argsFit's judgement of a whole method frame's argument
// bytes, fed in pieces of at most step bytes: every byte belongs to the
// arguments and they are complete at the end.
func fitByFeed(id uint32, args []byte, step int) bool {
	var w argWalker
	w.start(id)
	for len(args) > 0 {
		k := min(step, len(args))
		if w.done() || w.feed(args[:k]) < k {
			return false
		}
		args = args[k:]
	}
	return w.done()
}

// TestFitWholeAgreesWithFeed: the one-pass walk of a whole frame's
// arguments judges every method's arguments as the streaming walk does,
// for well-formed arguments, for every truncation of them, for trailing
// bytes, and for random bytes.
func TestFitWholeAgreesWithFeed(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	check := func(id uint32, args []byte) {
		t.Helper()
		var w argWalker
		if !w.start(id) {
			t.Fatalf("method %#x unknown", id)
		}
		got := w.fitWhole(args)
		for _, step := range []int{1, 3, len(args) + 1} {
			if want := fitByFeed(id, args, step); got != want {
				t.Fatalf("method %#x, args % x: fitWhole %t, feed in steps of %d %t", id, args, got, step, want)
			}
		}
	}
	for id, fields := range methodArgs {
		for range 200 {
			// Well-formed arguments with random lengths.
			var args []byte
			for _, f := range []byte(fields) {
				switch f {
				case 's':
					n := r.IntN(4)
					if r.IntN(20) == 0 {
						n = 255
					}
					args = append(args, byte(n))
					args = append(args, make([]byte, n)...)
				case 'S':
					n := r.IntN(6)
					args = append(args, 0, 0, byte(n>>8), byte(n))
					args = append(args, make([]byte, n)...)
				default:
					args = append(args, make([]byte, f-'0')...)
				}
			}
			check(id, args)
			for cut := range len(args) {
				check(id, args[:cut])
			}
			check(id, append(args, byte(r.IntN(256))))
			junk := make([]byte, r.IntN(40))
			for i := range junk {
				junk[i] = byte(r.IntN(256))
				if r.IntN(3) == 0 {
					junk[i] = byte(r.IntN(4))
				}
			}
			check(id, junk)
		}
	}
	// A long-string length beyond any buffer, and beyond 31 bits.
	check(10<<16|20, []byte{0xFF, 0xFF, 0xFF, 0xFF})
	check(10<<16|20, []byte{0x80, 0, 0, 1, 0})
}

// TestLookupArgsMatchesTheMap: the table lookup answers like methodArgs for
// every class and method id.
func TestLookupArgsMatchesTheMap(t *testing.T) {
	for class := range 256 {
		for method := range 256 {
			id := uint32(class)<<16 | uint32(method)
			want, wantOK := methodArgs[id]
			if got, ok := lookupArgs(id); got != want || ok != wantOK {
				t.Fatalf("lookupArgs(%d.%d) = %q, %t; want %q, %t", class, method, got, ok, want, wantOK)
			}
		}
	}
	if _, ok := lookupArgs(60<<16 | 60 | 1<<15); ok {
		t.Fatal("a method id above 127 found")
	}
}
