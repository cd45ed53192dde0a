package integration

// amqps:// against the test broker, through a TLS-terminating proxy that
// the test runs with a CA and a server certificate made at test time.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

// tlsTestPKI makes a self-signed CA and a server certificate it signed for
// "localhost" and 127.0.0.1. It returns the server's certificate and a pool
// holding the CA.
func tlsTestPKI(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "warren test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

// tlsTerminator accepts TLS on 127.0.0.1 with cert and forwards the
// plaintext to target. It returns the port it listens on; the test's
// cleanup stops it and waits for its goroutines.
func tlsTerminator(t *testing.T, cert tls.Certificate, target string) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	track := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if conns == nil { // stopping
			c.Close()
			return false
		}
		conns[c] = struct{}{}
		return true
	}
	serve := func(client net.Conn) {
		defer wg.Done()
		defer client.Close()
		_ = client.SetDeadline(time.Now().Add(5 * time.Second))
		if err := client.(*tls.Conn).Handshake(); err != nil {
			return // the client refused our certificate
		}
		_ = client.SetDeadline(time.Time{})
		server, err := net.DialTimeout("tcp", target, 5*time.Second)
		if err != nil || !track(server) {
			return
		}
		defer server.Close()
		var copies sync.WaitGroup
		copies.Add(2)
		go func() { defer copies.Done(); _, _ = io.Copy(server, client); server.Close() }()
		go func() { defer copies.Done(); _, _ = io.Copy(client, server); client.Close() }()
		copies.Wait()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !track(c) {
				continue
			}
			wg.Add(1)
			go serve(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		conns = nil
		mu.Unlock()
		wg.Wait()
	})
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// tlsURL returns the broker's URL as amqps:// to host:port, with password
// pass instead of the broker's when pass is not empty.
func tlsURL(t *testing.T, b *brokertest.Broker, host, port, pass string) string {
	t.Helper()
	u, err := url.Parse(b.URL)
	if err != nil {
		t.Fatalf("parse broker URL: %v", err)
	}
	u.Scheme = "amqps"
	u.Host = net.JoinHostPort(host, port)
	if pass != "" {
		u.User = url.UserPassword(u.User.Username(), pass)
	}
	return u.String()
}

// tlsDial dials rawURL, bounded in time, and closes the client it gets
// when the test ends.
func tlsDial(t *testing.T, rawURL string, opts ...warren.Option) (*warren.Client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var c *warren.Client
	_, err := faultWithin(t, 15*time.Second, "Dial amqps://", func() (err error) {
		c, err = warren.Dial(ctx, rawURL, opts...)
		return err
	})
	if c != nil {
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = c.Close(ctx)
		})
	}
	return c, err
}

func TestTLSWithTheTrustedCACarriesMessages(t *testing.T) {
	b := brokertest.Need(t, broker)
	for _, host := range []string{"localhost", "127.0.0.1"} {
		t.Run(host, func(t *testing.T) {
			faultCheckLeaks(t)
			cert, pool := tlsTestPKI(t)
			port := tlsTerminator(t, cert, b.Addr())
			c, err := tlsDial(t, tlsURL(t, b, host, port, ""), warren.WithTLS(&tls.Config{RootCAs: pool}))
			if err != nil {
				t.Fatalf("Dial amqps:// with the CA: got %v, want nil", err)
			}
			faultRoundTrip(t, c)
			if err := c.Close(context.Background()); err != nil {
				t.Errorf("Close: got %v, want nil", err)
			}
		})
	}
}

func TestTLSWithSystemRootsRejectsAnUnknownAuthority(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	cert, _ := tlsTestPKI(t)
	port := tlsTerminator(t, cert, b.Addr())
	// The handshake fails before any credential is sent, so a made-up
	// password shows whether the error text leaks it.
	const secret = "tls-test-Secr3t-pw"
	c, err := tlsDial(t, tlsURL(t, b, "localhost", port, secret))
	if err == nil {
		t.Fatalf("Dial amqps:// without the CA: got a client (%v), want a certificate verification error", c)
	}
	t.Logf("Dial error: %v", err)
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Errorf("Dial: got %v (%T), want an error wrapping x509.UnknownAuthorityError", err, err)
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("Dial error text: got %q, want it without the password", err)
	}
}

func TestTLSWithAWrongServerNameFailsVerification(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	cert, pool := tlsTestPKI(t)
	port := tlsTerminator(t, cert, b.Addr())
	c, err := tlsDial(t, tlsURL(t, b, "localhost", port, ""),
		warren.WithTLS(&tls.Config{RootCAs: pool, ServerName: "not-the-broker.example"}))
	if err == nil {
		t.Fatalf("Dial amqps:// with ServerName %q: got a client (%v), want a certificate verification error", "not-the-broker.example", c)
	}
	t.Logf("Dial error: %v", err)
	var wrongHost x509.HostnameError
	if !errors.As(err, &wrongHost) {
		t.Errorf("Dial: got %v (%T), want an error wrapping x509.HostnameError", err, err)
	}
}

// WithTLS with an amqp:// URL is refused before anything is dialled,
// rather than connecting in plaintext and sending the password in the
// clear: by Dial, and by DialCluster even when a working amqps:// endpoint
// comes first. The same WithTLS with amqps:// endpoints only carries
// messages.
func TestTLSOptionWithAnAMQPURLIsRefusedBeforeDialling(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	cert, pool := tlsTestPKI(t)
	port := tlsTerminator(t, cert, b.Addr())
	withTLS := warren.WithTLS(&tls.Config{RootCAs: pool})
	secure := tlsURL(t, b, "localhost", port, "")
	plain := b.URL
	_, pass, _ := strings.Cut(strings.TrimPrefix(plain, "amqp://"), ":")
	pass, _, _ = strings.Cut(pass, "@")

	refused := func(what string, c *warren.Client, err error) {
		t.Helper()
		if c != nil {
			t.Errorf("%s: got a client (%v), want ErrInvalidArgument", what, c)
			return
		}
		if !errors.Is(err, warren.ErrInvalidArgument) || !strings.Contains(err.Error(), "amqps://") {
			t.Errorf("%s: got %v, want ErrInvalidArgument saying to use amqps://", what, err)
		}
		if pass != "" && strings.Contains(err.Error(), ":"+pass+"@") {
			t.Errorf("%s: error %q holds the password", what, err)
		}
	}
	c, err := tlsDial(t, plain, withTLS)
	refused("Dial(amqp://, WithTLS)", c, err)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	begin := time.Now()
	c, err = warren.DialCluster(ctx, []string{secure, plain}, withTLS, warren.WithEndpointOrder(warren.EndpointsInOrder))
	if c != nil {
		_ = c.Close(ctx)
	}
	refused("DialCluster(amqps://, amqp://; WithTLS)", c, err)
	if err != nil && !strings.Contains(err.Error(), "endpoint 1") {
		t.Errorf("DialCluster: %v, want it to name endpoint 1", err)
	}
	if d := time.Since(begin); d > time.Second {
		t.Errorf("DialCluster took %v to refuse, want no dial at all", d)
	}

	c, err = warren.DialCluster(ctx, []string{secure, tlsURL(t, b, "127.0.0.1", port, "")}, withTLS)
	if err != nil {
		t.Fatalf("DialCluster(amqps://, amqps://; WithTLS): got %v, want a client", err)
	}
	defer c.Close(ctx)
	faultRoundTrip(t, c)
	if err := c.Close(ctx); err != nil {
		t.Errorf("Close: got %v, want nil", err)
	}
}
