package warren

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

// add adds the counters of o (not its gauges) to s.
func (s *ClientStats) add(o ClientStats) {
	s.ChannelsOpened += o.ChannelsOpened
	s.ChannelsClosed += o.ChannelsClosed
	s.LateFramesDropped += o.LateFramesDropped
	s.StrayCloseOKsDropped += o.StrayCloseOKsDropped
	s.StrayReturns += o.StrayReturns
	s.StrayConfirms += o.StrayConfirms
}

// Stats: see Client.Stats.
func (c *session) Stats() ClientStats {
	return ClientStats{
		Endpoint:             c.endpoint,
		OpenChannels:         c.OpenChannels(),
		Blocked:              c.Blocked(),
		ChannelsOpened:       c.opened.Load(),
		ChannelsClosed:       c.closed.Load(),
		LateFramesDropped:    c.wire.Dropped(),
		StrayCloseOKsDropped: c.wire.DroppedInbound(),
		StrayReturns:         c.strayReturns.Load(),
		StrayConfirms:        c.strayConfirms.Load(),
	}
}
