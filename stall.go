package warren

import "time"

// writeAborted marks a send whose stalled write warren cut short.
const writeAborted = ^uint64(0)

// stallGrace is how long a write may make no progress, after its ctx has
// ended, before warren declares it stalled and closes the connection.
const stallGrace = 250 * time.Millisecond

// The stall watch: one goroutine per connection, for its whole life, looks
// every stallGrace at the channels writing now (it takes the session's lock
// and walks its channels four times a second, idle or not). A write whose
// ctx has ended and during which the connection wrote nothing for a whole
// stallGrace is stalled (a blocked broker, a dead network): warren cuts the
// connection (abortWrites) and the send reports it. So a stalled write ends
// between one and two stallGrace after its ctx, and a send costs three
// atomic stores instead of a context.AfterFunc (three allocations).

// sendOps are the operations that go through send, named in the error of a
// stalled write. A send stores the index of its op (storing the string in
// an atomic.Value would allocate on every send).
var sendOps = [...]string{"a write", "basic.publish", "basic.ack", "basic.nack", "basic.reject"}

func sendOp(op string) uint32 {
	for i, o := range sendOps {
		if o == op {
			return uint32(i)
		}
	}
	return 0
}

func (c *session) stallLoop() {
	defer c.wg.Done()
	t := time.NewTicker(stallGrace)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-c.dead:
			return
		}
		if ch, op, seq := c.stalledWrite(); ch != nil && ch.writing.CompareAndSwap(seq, writeAborted) {
			c.abortWrites(op, ch.id)
		}
	}
}

// stalledWrite returns a channel whose write has been stalled since the
// previous look, with its operation and send number.
func (c *session) stalledWrite() (*channel, string, uint64) {
	written := c.wire.Written()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ch := range c.channels {
		seq := ch.writing.Load()
		done, _ := ch.wdone.Load().(<-chan struct{})
		if seq == 0 || seq == writeAborted || done == nil || !isDone(done) {
			ch.stallSeq = 0
			continue
		}
		if ch.stallSeq != seq || ch.stallMark != written {
			// First seen with its ctx ended, or the connection wrote
			// since: slow, not (yet) stalled.
			ch.stallSeq, ch.stallMark = seq, written
			continue
		}
		return ch, sendOps[min(int(ch.wop.Load()), len(sendOps)-1)], seq
	}
	return nil, "", 0
}

func isDone(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}
