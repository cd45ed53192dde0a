package warren

import (
	"strconv"
	"strings"
)

// brokerVersion is a RabbitMQ version as the broker reports it in its
// connection.start server properties ("4.3.6", "3.10.8"). The zero value
// means unknown (another broker, or a property warren cannot read).
type brokerVersion struct{ major, minor, patch int }

// parseBrokerVersion reads "major.minor.patch" with anything after the
// numbers ignored ("4.3.0-rc.1", "3.10.8+1.g..."); the zero value when
// there is no major.minor.
func parseBrokerVersion(s string) brokerVersion {
	var v brokerVersion
	parts := strings.SplitN(s, ".", 3)
	if len(parts) < 2 {
		return v
	}
	num := func(p string) (int, bool) {
		end := 0
		for end < len(p) && p[end] >= '0' && p[end] <= '9' {
			end++
		}
		n, err := strconv.Atoi(p[:end])
		return n, err == nil
	}
	var ok1, ok2 bool
	v.major, ok1 = num(parts[0])
	v.minor, ok2 = num(parts[1])
	if !ok1 || !ok2 {
		return brokerVersion{}
	}
	if len(parts) == 3 {
		v.patch, _ = num(parts[2])
	}
	return v
}

// known reports whether the version was read.
func (v brokerVersion) known() bool { return v != brokerVersion{} }

// atLeast reports whether v is known and at least major.minor.
func (v brokerVersion) atLeast(major, minor int) bool {
	return v.known() && (v.major > major || v.major == major && v.minor >= minor)
}

// atLeastPatch reports whether v is known and at least major.minor.patch.
func (v brokerVersion) atLeastPatch(major, minor, patch int) bool {
	return v.atLeast(major, minor) && (v.major > major || v.minor > minor || v.patch >= patch)
}

func (v brokerVersion) String() string {
	if !v.known() {
		return "unknown"
	}
	return strconv.Itoa(v.major) + "." + strconv.Itoa(v.minor) + "." + strconv.Itoa(v.patch)
}

// broker returns the version the connection's broker reported.
func (c *session) broker() brokerVersion {
	if c.conn == nil {
		return brokerVersion{}
	}
	if p, ok := c.conn.Properties["product"].(string); ok && p != "RabbitMQ" {
		return brokerVersion{} // another AMQP 0-9-1 broker: its numbers mean something else
	}
	s, _ := c.conn.Properties["version"].(string)
	return parseBrokerVersion(s)
}

// ServerVersion returns the version the broker of the connection in use
// reported when the connection opened ("4.3.6"), or "" when it reported
// none. Behaviour that differs between RabbitMQ versions is documented
// where it matters (Qos, QueueOptions, Delivery.DeliveryCount).
func (c *Client) ServerVersion() string {
	s := c.s()
	if s == nil || s.conn == nil {
		return ""
	}
	v, _ := s.conn.Properties["version"].(string)
	return v
}
