package wire

// amqp091-go v1.16 reads a method frame's arguments field by field and then
// expects the frame-end octet: it never looks at the frame's size field. A
// frame whose size says more (or less) than its arguments take makes
// amqp091-go and Conn disagree on where the next frame starts, and
// amqp091-go then acts on bytes Conn never judged (the fuzzer found a
// basic.nack with a huge tag hidden this way: amqp091-go counts up to it,
// one tag at a time, on its reader). Conn therefore walks every method's
// arguments the way amqp091-go reads them, and fails the connection
// (ErrMalformed) when they do not end exactly where the size says.

// methodArgs holds, for every method amqp091-go's parser knows (class<<16 |
// method), the fields its read method reads, in order: '1', '2', '4', '8'
// fixed-size fields (packed bits are one octet), 's' a short string (octet
// length), 'S' a long string or field table (32-bit length). Generated from
// the read methods of amqp091-go v1.16.0's spec091.go; methods it does not
// know make it fail the connection itself.
var methodArgs = map[uint32]string{
	10<<16 | 10:  "11SSS",  // connection.start
	10<<16 | 11:  "SsSs",   // connection.start-ok
	10<<16 | 20:  "S",      // connection.secure
	10<<16 | 21:  "S",      // connection.secure-ok
	10<<16 | 30:  "242",    // connection.tune
	10<<16 | 31:  "242",    // connection.tune-ok
	10<<16 | 40:  "ss1",    // connection.open
	10<<16 | 41:  "s",      // connection.open-ok
	10<<16 | 50:  "2s22",   // connection.close
	10<<16 | 51:  "",       // connection.close-ok
	10<<16 | 60:  "s",      // connection.blocked
	10<<16 | 61:  "",       // connection.unblocked
	10<<16 | 70:  "Ss",     // connection.update-secret
	10<<16 | 71:  "",       // connection.update-secret-ok
	20<<16 | 10:  "s",      // channel.open
	20<<16 | 11:  "S",      // channel.open-ok
	20<<16 | 20:  "1",      // channel.flow
	20<<16 | 21:  "1",      // channel.flow-ok
	20<<16 | 40:  "2s22",   // channel.close
	20<<16 | 41:  "",       // channel.close-ok
	40<<16 | 10:  "2ss1S",  // exchange.declare
	40<<16 | 11:  "",       // exchange.declare-ok
	40<<16 | 20:  "2s1",    // exchange.delete
	40<<16 | 21:  "",       // exchange.delete-ok
	40<<16 | 30:  "2sss1S", // exchange.bind
	40<<16 | 31:  "",       // exchange.bind-ok
	40<<16 | 40:  "2sss1S", // exchange.unbind
	40<<16 | 51:  "",       // exchange.unbind-ok
	50<<16 | 10:  "2s1S",   // queue.declare
	50<<16 | 11:  "s44",    // queue.declare-ok
	50<<16 | 20:  "2sss1S", // queue.bind
	50<<16 | 21:  "",       // queue.bind-ok
	50<<16 | 30:  "2s1",    // queue.purge
	50<<16 | 31:  "4",      // queue.purge-ok
	50<<16 | 40:  "2s1",    // queue.delete
	50<<16 | 41:  "4",      // queue.delete-ok
	50<<16 | 50:  "2sssS",  // queue.unbind
	50<<16 | 51:  "",       // queue.unbind-ok
	60<<16 | 10:  "421",    // basic.qos
	60<<16 | 11:  "",       // basic.qos-ok
	60<<16 | 20:  "2ss1S",  // basic.consume
	60<<16 | 21:  "s",      // basic.consume-ok
	60<<16 | 30:  "s1",     // basic.cancel
	60<<16 | 31:  "s",      // basic.cancel-ok
	60<<16 | 40:  "2ss1",   // basic.publish
	60<<16 | 50:  "2sss",   // basic.return
	60<<16 | 60:  "s81ss",  // basic.deliver
	60<<16 | 70:  "2s1",    // basic.get
	60<<16 | 71:  "81ss4",  // basic.get-ok
	60<<16 | 72:  "s",      // basic.get-empty
	60<<16 | 80:  "81",     // basic.ack
	60<<16 | 90:  "81",     // basic.reject
	60<<16 | 100: "1",      // basic.recover-async
	60<<16 | 110: "1",      // basic.recover
	60<<16 | 111: "",       // basic.recover-ok
	60<<16 | 120: "81",     // basic.nack
	85<<16 | 10:  "1",      // confirm.select
	85<<16 | 11:  "",       // confirm.select-ok
	90<<16 | 10:  "",       // tx.select
	90<<16 | 11:  "",       // tx.select-ok
	90<<16 | 20:  "",       // tx.commit
	90<<16 | 21:  "",       // tx.commit-ok
	90<<16 | 30:  "",       // tx.rollback
	90<<16 | 31:  "",       // tx.rollback-ok
}

// argWalker follows a method's arguments as their bytes stream past, without
// keeping them: it knows which field comes next and how many of its bytes
// are still to come.
type argWalker struct {
	on     bool   // a method frame of a known method is being walked
	fields string // fields not yet started
	skip   int    // bytes of the current field's value still to come
	lenN   int    // length-prefix octets still to come (a string being started)
	length int    // the length prefix collected so far
}

// argsTable is methodArgs by class slot (see classSlot) and method id,
// for a lookup without hashing on every inbound method frame.
var argsTable = func() (t [7][128]struct {
	fields string
	known  bool
}) {
	for id, fields := range methodArgs {
		class, method := classSlot(uint16(id>>16)), id&0xFFFF
		if class < 0 || method >= 128 {
			panic("wire: methodArgs holds a method outside argsTable")
		}
		t[class][method].fields, t[class][method].known = fields, true
	}
	return t
}()

// classSlot is the row of argsTable for an AMQP class id; -1 for a class
// amqp091-go does not know.
func classSlot(class uint16) int {
	switch class {
	case 10:
		return 0
	case 20:
		return 1
	case 40:
		return 2
	case 50:
		return 3
	case 60:
		return 4
	case 85:
		return 5
	case 90:
		return 6
	}
	return -1
}

// lookupArgs returns methodArgs[id] (id is class<<16 | method).
func lookupArgs(id uint32) (fields string, known bool) {
	class, method := classSlot(uint16(id>>16)), id&0xFFFF
	if class < 0 || method >= 128 {
		return "", false
	}
	e := &argsTable[class][method]
	return e.fields, e.known
}

// start begins walking the arguments of method id (class<<16 | method); it
// reports false for a method amqp091-go does not know.
func (w *argWalker) start(id uint32) bool {
	fields, ok := lookupArgs(id)
	*w = argWalker{on: ok, fields: fields}
	return ok
}

// fitWhole reports whether args, all the bytes of a method frame between
// its method id and its frame end, are exactly the arguments of the method
// just started: the same judgement as feeding them in pieces, in one pass.
// The walker is spent afterwards.
func (w *argWalker) fitWhole(args []byte) bool {
	i := 0
	for k := 0; k < len(w.fields); k++ {
		switch f := w.fields[k]; f {
		case 's':
			if i >= len(args) {
				return false
			}
			i++
			if n := int(args[i-1]); n > len(args)-i {
				return false
			} else {
				i += n
			}
		case 'S':
			if len(args)-i < 4 {
				return false
			}
			n := uint64(args[i])<<24 | uint64(args[i+1])<<16 | uint64(args[i+2])<<8 | uint64(args[i+3])
			i += 4
			if n > uint64(len(args)-i) {
				return false
			}
			i += int(n)
		default:
			if n := int(f - '0'); n > len(args)-i {
				return false
			} else {
				i += n
			}
		}
	}
	w.fields = ""
	return i == len(args)
}

// done reports whether every argument has been read.
func (w *argWalker) done() bool { return w.fields == "" && w.skip == 0 && w.lenN == 0 }

// feed walks b, the next argument bytes, and returns how many of them belong
// to the arguments: less than len(b) only when the arguments ended inside b.
func (w *argWalker) feed(b []byte) int {
	i := 0
	for i < len(b) {
		switch {
		case w.skip > 0:
			k := min(w.skip, len(b)-i)
			w.skip -= k
			i += k
		case w.lenN > 0:
			w.length = w.length<<8 | int(b[i])
			w.lenN--
			i++
			if w.lenN == 0 {
				w.skip = w.length
			}
		case w.fields == "":
			return i
		default:
			f := w.fields[0]
			w.fields = w.fields[1:]
			w.length = 0
			switch f {
			case 's':
				w.lenN = 1
			case 'S':
				w.lenN = 4
			default:
				w.skip = int(f - '0')
			}
		}
	}
	return i
}
