package warrentest

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Version is a RabbitMQ version as the broker reports it in its server
// properties.
type Version struct {
	Major, Minor, Patch int
	// Raw is the version string as reported, for example "4.3.6" or
	// "4.3.0-rc.1".
	Raw string
}

// String returns v.Raw.
func (v Version) String() string { return v.Raw }

// AtLeast reports whether v is major.minor or later.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || v.Major == major && v.Minor >= minor
}

// matches reports whether v is the version want names: "4.3" matches 4.3.x,
// "4" matches 4.x, "4.3.6" only itself.
func (v Version) matches(want string) bool {
	return v.Raw == want || strings.HasPrefix(v.Raw, want+".")
}

// parseVersion parses "MAJOR.MINOR[.PATCH][suffix]".
func parseVersion(raw string) (Version, error) {
	v := Version{Raw: raw}
	parts := strings.SplitN(raw, ".", 3)
	if len(parts) < 2 {
		return v, fmt.Errorf("warrentest: server version %q is not MAJOR.MINOR[.PATCH]", raw)
	}
	nums := []*int{&v.Major, &v.Minor, &v.Patch}
	for i, p := range parts {
		if i == 2 { // the patch may carry a suffix: "4.3.6+1", "4.3.0-rc.1"
			p = p[:len(p)-len(strings.TrimLeft(p, "0123456789"))]
		}
		n, err := strconv.Atoi(p)
		if err != nil {
			return v, fmt.Errorf("warrentest: server version %q is not MAJOR.MINOR[.PATCH]", raw)
		}
		*nums[i] = n
	}
	return v, nil
}

// readVersion dials url with amqp091-go and reads the version from the
// connection's server properties.
func readVersion(ctx context.Context, url string) (Version, error) {
	var d net.Dialer
	conn, err := amqp.DialConfig(url, amqp.Config{Dial: func(network, addr string) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		// Bound the handshake too: a broker that accepts and never answers
		// must not hang the search.
		c.SetDeadline(time.Now().Add(15 * time.Second))
		return c, nil
	}})
	if err != nil {
		return Version{}, fmt.Errorf("warrentest: reading the server version: %w", err)
	}
	defer conn.Close()
	raw, ok := conn.Properties["version"].(string)
	if !ok {
		return Version{}, fmt.Errorf("warrentest: reading the server version: the server properties carry no version string (%v)", conn.Properties["version"])
	}
	return parseVersion(raw)
}
