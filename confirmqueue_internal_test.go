package warren

import (
	"fmt"
	"testing"
)

type noopReceiver struct{}

func (noopReceiver) receive(error) {}

// A sliding window of publishes (ack the oldest, publish the next) runs in
// the tracker's queue memory without allocating once the memory has grown,
// whatever the window's size (b6b9822: "the tracker's queue reuses its
// memory").
func TestTrackerQueueSlidingWindowReusesItsMemory(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	for _, window := range []int{64, 256, 512, 600, 1000} {
		t.Run(fmt.Sprint(window), func(t *testing.T) {
			st := &channel{c: &session{opts: defaultOptions(), cnt: new(counters)}, id: 7}
			tr := &confirmTracker{st: st}
			confs := make([]Confirmation, window)
			for i := range confs {
				confs[i].to = noopReceiver{}
			}
			next := uint64(1)
			enqueue := func() {
				c := &confs[next%uint64(window)]
				tr.mu.Lock()
				if len(tr.q) == 0 {
					tr.base = next
				}
				c.tag = next
				tr.enqueueLocked(c)
				tr.mu.Unlock()
				next++
			}
			for range window {
				enqueue()
			}
			step := func() {
				tr.confirmed(next-uint64(window), false, true) // the oldest
				enqueue()
			}
			for range 50 * window { // warm up: the memory grows to what the window needs
				step()
			}
			if n := testing.AllocsPerRun(20, func() {
				for range 1000 {
					step()
				}
			}); n != 0 {
				t.Errorf("window %d: %.1f allocations per 1000 publishes (queue len %d cap %d, memory cap %d)",
					window, n, len(tr.q), cap(tr.q), cap(tr.qmem))
			}
			if got := tr.pending(); got != window {
				t.Fatalf("pending %d, want %d", got, window)
			}
		})
	}
}

// The memory of a long backlog (a big PublishBatch) is let go once it has
// drained; a window's is kept.
func TestTrackerQueueLetsALongBacklogsMemoryGo(t *testing.T) {
	for _, tc := range []struct {
		n    int
		kept bool
	}{{1000, true}, {50000, false}} {
		st := &channel{c: &session{opts: defaultOptions(), cnt: new(counters)}, id: 7}
		tr := &confirmTracker{st: st}
		confs := make([]Confirmation, tc.n)
		tr.mu.Lock()
		tr.base = 1
		for i := range confs {
			confs[i].to = noopReceiver{}
			confs[i].tag = uint64(i + 1)
			tr.enqueueLocked(&confs[i])
		}
		tr.mu.Unlock()
		tr.confirmed(uint64(tc.n), true, true) // one multiple ack for all
		if got := tr.pending(); got != 0 {
			t.Fatalf("%d publishes: %d pending after the ack of all, want 0", tc.n, got)
		}
		if kept := cap(tr.qmem) > 0; kept != tc.kept {
			t.Errorf("%d publishes drained: memory kept %v (cap %d), want %v", tc.n, kept, cap(tr.qmem), tc.kept)
		}
	}
}
