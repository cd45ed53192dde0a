package warren

import "sync/atomic"

// ClientStats is a snapshot of a Client's gauges and counters.
type ClientStats struct {
	Endpoint string // the endpoint of the connection (see Client.Endpoint)

	OpenChannels int  // channels warren has open on the connection
	Blocked      bool // the broker has blocked publishing (connection.blocked)

	// Reconnects counts the connections that replaced a lost one
	// (WithReconnect). The counters below add up over all of the Client's
	// connections.
	Reconnects uint64

	// ChannelsOpened and ChannelsClosed count channels: their rate is the
	// channel churn RabbitMQ's monitoring guide warns about.
	ChannelsOpened uint64
	ChannelsClosed uint64

	// LateFramesDropped counts frames amqp091-go tried to send on a channel
	// after its close-ok, or a channel.close that would only have crossed
	// the broker's; RabbitMQ would have closed the connection for the
	// former (504 "expected 'channel.open'"). Non-zero is normal under
	// channel errors; it means the guard worked.
	LateFramesDropped uint64
	// StrayCloseOKsDropped counts channel.close-ok frames that answered a
	// channel.close which crossed the broker's own: amqp091-go would have
	// handed them to whichever channel reused the id next.
	StrayCloseOKsDropped uint64
	// StrayReturns and StrayConfirms count basic.return, basic.ack and
	// basic.nack frames that matched no pending publish (zero unless the
	// broker misbehaves).
	StrayReturns  uint64
	StrayConfirms uint64
}

// counters are the counts of ClientStats that a Client's connections share
// (each session adds to its Client's), so that they add up over reconnects,
// including what happens on a lost connection's channels afterwards.
type counters struct {
	opened, closed atomic.Uint64 // channels opened and closed (churn)
	strayReturns   atomic.Uint64 // basic.return matching no pending publish
	strayConfirms  atomic.Uint64 // acks or nacks matching no pending publish
}

// addWire adds the wire guard's counts of o to s: they live in each
// connection's wire and stop moving once its socket is closed.
func (s *ClientStats) addWire(o ClientStats) {
	s.LateFramesDropped += o.LateFramesDropped
	s.StrayCloseOKsDropped += o.StrayCloseOKsDropped
}

// Stats: see Client.Stats.
func (c *session) Stats() ClientStats {
	return ClientStats{
		Endpoint:             c.endpoint,
		OpenChannels:         c.OpenChannels(),
		Blocked:              c.Blocked(),
		ChannelsOpened:       c.cnt.opened.Load(),
		ChannelsClosed:       c.cnt.closed.Load(),
		LateFramesDropped:    c.wire.Dropped(),
		StrayCloseOKsDropped: c.wire.DroppedInbound(),
		StrayReturns:         c.cnt.strayReturns.Load(),
		StrayConfirms:        c.cnt.strayConfirms.Load(),
	}
}
