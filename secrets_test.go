package warren_test

// The password sweep: for URLs whose user and password hold every
// character that is reserved in a URL (unescaped and percent-encoded),
// nothing warren makes — an error from Dial, DialCluster or HostURLs, a log
// record, or any exported value printed with any verb, by pointer or by
// value — holds the password, its percent-encoded form, or a piece of it.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode"

	"github.com/warrenmq/warren"
	fb "github.com/warrenmq/warren/internal/fakebroker"
)

// credCase is a user and password as meant (not escaped). Every run of
// four or more letters or digits in a password is distinctive, so that a
// leak of any piece of it is found.
type credCase struct {
	name       string
	user, pass string
	userOnly   bool // the URL has no password (amqp091-go then sends "guest")
}

var credCorpus = []credCase{
	{name: "slash in password (the report)", user: "app", pass: "Hunter2Secret/Xq9Wv"},
	{name: "question mark in password", user: "app", pass: "Qz7Kp?Rt4Ld"},
	{name: "hash in password", user: "app", pass: "Mv3Bn#Yc8Fj"},
	{name: "at in password", user: "app", pass: "Wq5Ex@Tz2Hs"},
	{name: "colon in password", user: "app", pass: "Pk4Lm:Zx9Qa"},
	{name: "percent in password", user: "app", pass: "Ns6Dv%GhJk"},
	{name: "escape-shaped percent in password", user: "app", pass: "Cd2Fg%41Hj5Kl"},
	{name: "brackets in password", user: "app", pass: "Rf8[Ty3]Uu7Ii"},
	{name: "space in password", user: "app", pass: "Oo2Pp Aa5Ss"},
	{name: "digits then slash in password", user: "app", pass: "73519264/Xc7Vb"},
	{name: "digits then question mark in password", user: "app", pass: "84620375?Gb2Nm"},
	{name: "every reserved character in password", user: "app", pass: "Bb1Nn/Mm2?Qq3#Ww4@Ee5:Rr6%Tt7[Yy8]Uu9 Ii0"},
	{name: "unicode password", user: "app", pass: "Ünïcødé-Pässwörd-Zz9"},
	{name: "reserved characters in user", user: "us/er?#@:%[] x", pass: "Kk3Jj8Hh2Gg"},
	{name: "reserved characters in user and password", user: "a/b?c#d", pass: "Vv7Cc/Xx2?Zz5#Ll8"},
	{name: "empty password", user: "app", pass: ""},
	{name: "user only, reserved characters", user: "Ll5Kk/Jj9?Hh", userOnly: true},
}

// rawURL writes the user and password into the URL unescaped, as a user
// pasting them would.
func (c credCase) rawURL(scheme, addr string) string {
	if c.userOnly {
		return scheme + "://" + c.user + "@" + addr + "/"
	}
	return scheme + "://" + c.user + ":" + c.pass + "@" + addr + "/"
}

// encodedURL percent-encodes the user and password, as url.UserPassword
// does: the right way.
func (c credCase) encodedURL(scheme, addr string) string {
	u := &url.URL{Scheme: scheme, User: url.UserPassword(c.user, c.pass), Host: addr, Path: "/"}
	if c.userOnly {
		u.User = url.User(c.user)
	}
	return u.String()
}

// needles returns what must never appear: the password, its escaped
// forms, its hex form (%x), and each run of four or more letters and
// digits in it (net/url's port error quoted such a run).
func (c credCase) needles() []string {
	if c.pass == "" {
		return nil
	}
	out := []string{
		c.pass,
		url.QueryEscape(c.pass),
		url.PathEscape(c.pass),
		strings.TrimPrefix(url.UserPassword("", c.pass).String(), ":"),
		hex.EncodeToString([]byte(c.pass)),
	}
	for _, f := range strings.FieldsFunc(c.pass, func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) }) {
		if len([]rune(f)) >= 4 {
			out = append(out, f, hex.EncodeToString([]byte(f)))
		}
	}
	return out
}

// leak returns the needle of c that s holds, or "".
func (c credCase) leak(s string) string {
	for _, n := range c.needles() {
		if strings.Contains(s, n) {
			return n
		}
	}
	return ""
}

// printVerbs are the verbs that print a value's fields.
var printVerbs = []string{"%v", "%+v", "%#v", "%s", "%q", "%x"}

// printed returns v printed with every verb of printVerbs, and the same
// for the value v points to (fmt reads its fields by reflection and calls
// no method with a pointer receiver) or, when v is no pointer, for a
// pointer to it. Reading through reflection copies the value without a
// vet copylocks report.
func printed(v any) []string {
	forms := []any{v}
	switch rv := reflect.ValueOf(v); {
	case !rv.IsValid():
	case rv.Kind() == reflect.Pointer:
		if !rv.IsNil() {
			forms = append(forms, rv.Elem().Interface())
		}
	default:
		p := reflect.New(rv.Type())
		p.Elem().Set(rv)
		forms = append(forms, p.Interface())
	}
	var out []string
	for _, f := range forms {
		for _, verb := range printVerbs {
			out = append(out, fmt.Sprintf(verb, f))
		}
	}
	return out
}

// errPrints returns err printed (see printed), and every error in its
// chain printed too: a wrapper's text may hide what an inner error's
// fields hold.
func errPrints(err error) []string {
	var out []string
	seen := map[error]bool{}
	var walk func(error)
	walk = func(e error) {
		if e == nil || !reflect.TypeOf(e).Comparable() || seen[e] {
			return
		}
		seen[e] = true
		out = append(out, e.Error())
		out = append(out, printed(e)...)
		switch u := e.(type) {
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		case interface{ Unwrap() []error }:
			for _, inner := range u.Unwrap() {
				walk(inner)
			}
		}
	}
	walk(err)
	return out
}

// checkNoLeak fails the test if any of texts holds a needle of c.
func checkNoLeak(t *testing.T, c credCase, what string, texts []string) {
	t.Helper()
	for _, s := range texts {
		if n := c.leak(s); n != "" {
			t.Errorf("%s: %q holds %q of the password %q", what, s, n, c.pass)
			return
		}
	}
}

// syncBuffer is a bytes.Buffer for a slog handler written by warren's
// goroutines and read by the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// debugLogger returns a logger recording everything, at every level.
func debugLogger() (*slog.Logger, *syncBuffer) {
	var buf syncBuffer
	return slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), &buf
}

// closedAddr returns a loopback host:port nothing listens on: a dial to
// it is refused at once.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// FIXED BUG (issue 17, defect 1): a password with an unescaped '/', '?' or
// '#' made net/url read part of it as the port, and its error, which
// quoted that part, reached the caller of Dial and DialCluster; a password
// all digits before the '/' even became the port that was dialled, and was
// named in the dial error.
func TestURLErrorsNeverHoldThePassword(t *testing.T) {
	leakCheck(t)
	dead := closedAddr(t)
	logger, logs := debugLogger()
	for _, c := range credCorpus {
		t.Run(c.name, func(t *testing.T) {
			forms := map[string]func(scheme, addr string) string{
				"unescaped":       c.rawURL,
				"percent-encoded": c.encodedURL,
			}
			for form, url := range forms {
				u := url("amqp", dead)
				ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
				var errs []error
				add := func(err error) {
					if err != nil {
						errs = append(errs, err)
					}
				}
				client, err := warren.Dial(ctx, u, warren.WithLogger(logger))
				if err == nil {
					_ = client.Close(ctx)
					t.Fatalf("%s: Dial to a closed port succeeded", form)
				}
				add(err)
				if form == "percent-encoded" && errors.Is(err, warren.ErrInvalidArgument) {
					t.Errorf("%s: Dial(%q) = %v, want the URL accepted (and the dial refused)", form, u, err)
				}
				_, err = warren.DialCluster(ctx, []string{"amqp://guest:guest@" + dead + "/", u},
					warren.WithLogger(logger), warren.WithEndpointOrder(warren.EndpointsInOrder))
				add(err)
				_, err = warren.DialCluster(ctx, []string{u, "amqp://guest:guest@" + dead + "/"},
					warren.WithLogger(logger), warren.WithEndpointOrder(warren.EndpointsInOrder))
				add(err)
				_, err = warren.Dial(ctx, u, warren.WithLogger(logger), warren.WithTLS(&tls.Config{}))
				add(err)
				_, err = warren.Dial(ctx, url("amqps", dead)+"?heartbeat=5", warren.WithLogger(logger))
				add(err)
				_, err = warren.HostURLs(u, "rabbit-1", "rabbit-2:5673")
				add(err)
				cancel()
				for _, err := range errs {
					checkNoLeak(t, c, form+" URL, error", errPrints(err))
				}
			}
		})
	}
	for _, c := range credCorpus {
		checkNoLeak(t, c, "log output", []string{logs.String()})
	}
}

// The refusal of a user or password with an unescaped '/', '?' or '#'
// says what to do, and the valid spellings of the same credentials are
// accepted.
func TestUnescapedReservedCharactersInUserinfoAreRefusedWithAdvice(t *testing.T) {
	ctx := testCtx(t)
	dead := closedAddr(t)
	for _, u := range []string{
		"amqp://app:Hunter2Secret/xy@" + dead + "/",
		"amqp://app:Hunter2Secret?xy@" + dead + "/",
		"amqp://app:Hunter2Secret#xy@" + dead + "/",
		"amqp://app:73519264/xy@" + dead + "/",            // parses: port 73519264, vhost "xy@…"
		"amqp://app:Pw@127.0.0.9/Xy@" + dead + "/",        // parses: password "Pw", host 127.0.0.9
		"amqp://" + dead + "/vhost@x",                     // an '@' in a vhost is written %40
		"amqp://" + dead + "/?server_name_indication=a@b", // and in a query parameter
	} {
		_, err := warren.Dial(ctx, u)
		if !errors.Is(err, warren.ErrInvalidArgument) || !strings.Contains(fmt.Sprint(err), "percent-encode") {
			t.Errorf("Dial(%q) = %v, want ErrInvalidArgument saying to percent-encode", u, err)
		}
		_, err = warren.DialCluster(ctx, []string{"amqp://" + dead + "/", u})
		if !errors.Is(err, warren.ErrInvalidArgument) || !strings.Contains(fmt.Sprint(err), "endpoint 1") {
			t.Errorf("DialCluster(…, %q) = %v, want ErrInvalidArgument naming endpoint 1", u, err)
		}
		if _, err := warren.HostURLs(u, "h"); !errors.Is(err, warren.ErrInvalidArgument) {
			t.Errorf("HostURLs(%q) = %v, want ErrInvalidArgument", u, err)
		}
	}
	for _, c := range []struct{ url, want string }{
		{"amqp://app:50%zz@HOST/", "'%'"},
		{"amqp://app:p[w]@HOST/", "user or password"},
		{"amqp://app:pw@127.0.0.1:99999/", "port"},
		{"amqp://app:pw@127.0.0.1:0/", "port"},
		{"amqp://app:pw@127.0.0.1:x1/", "port"},
		{"http://app:pw@HOST/", "amqp://"},
		{"amqp:app:pw@HOST/", "amqp://"},
		{"amqp://app:p w@HOST/", "space"},
		{"amqp://app:pw@HOST/?heartbeat=x", "heartbeat"},
		{"amqp://app:pw@HOST/?heartbeat=0", "heartbeat"},
		{"amqp://app:pw@HOST/?channel_max=x", "channel_max"},
	} {
		_, err := warren.Dial(ctx, strings.Replace(c.url, "HOST", dead, 1))
		if !errors.Is(err, warren.ErrInvalidArgument) || !strings.Contains(fmt.Sprint(err), c.want) {
			t.Errorf("Dial(%q) = %v, want ErrInvalidArgument mentioning %s", c.url, err, c.want)
		}
	}
}

// FIXED BUG (issue 17, defect 2): %#v of a *Client (which does not call
// String) and any verb on a dereferenced Client printed the endpoint URLs
// with their password. Every exported value a Client hands out is printed
// here with every verb, by pointer and by value, live and after Close; and
// so is the log.
func TestPrintedValuesAndLogsNeverHoldThePassword(t *testing.T) {
	for _, c := range credCorpus {
		if c.pass == "" && !c.userOnly {
			continue // the fake broker has no empty password
		}
		t.Run(c.name, func(t *testing.T) {
			leakCheck(t)
			pass := c.pass
			if c.userOnly {
				pass = "guest" // what amqp091-go sends for a URL without one
			}
			b := fb.Start(t, fb.Config{User: c.user, Password: pass}, serve)
			logger, logs := debugLogger()
			var (
				mu     sync.Mutex
				events []warren.StateEvent
			)
			ctx := testCtx(t)
			opts := []warren.Option{warren.WithLogger(logger), warren.WithStateCallback(func(e warren.StateEvent) {
				mu.Lock()
				events = append(events, e)
				mu.Unlock()
			})}
			// A dead endpoint first: its failure is logged.
			client, err := warren.DialCluster(ctx, []string{c.encodedURL("amqp", closedAddr(t)), c.encodedURL("amqp", b.Addr())},
				append(opts, warren.WithEndpointOrder(warren.EndpointsInOrder))...)
			if err != nil {
				t.Fatalf("DialCluster: %v", err)
			}
			single, err := warren.Dial(ctx, c.encodedURL("amqp", b.Addr()), opts...)
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}

			ch, err := client.Channel(ctx)
			if err != nil {
				t.Fatalf("Channel: %v", err)
			}
			cch, err := client.Channel(ctx)
			if err != nil {
				t.Fatalf("Channel: %v", err)
			}
			if err := cch.SetMode(ctx, warren.ModeConfirm); err != nil {
				t.Fatalf("SetMode: %v", err)
			}
			conf, err := cch.PublishDeferred(ctx, warren.Message{Key: "q", Publishing: warren.Publishing{Body: []byte("x")}})
			if err != nil {
				t.Fatalf("PublishDeferred: %v", err)
			}
			if err := conf.Wait(ctx); err != nil {
				t.Fatalf("Confirmation.Wait: %v", err)
			}
			pool, err := client.NewPool(ctx, warren.PoolOptions{Size: 2})
			if err != nil {
				t.Fatalf("NewPool: %v", err)
			}
			lease, err := pool.Acquire(ctx)
			if err != nil {
				t.Fatalf("Acquire: %v", err)
			}
			pub, err := client.NewPublisher(ctx, warren.PublisherOptions{Channels: 1})
			if err != nil {
				t.Fatalf("NewPublisher: %v", err)
			}
			if err := pub.Publish(ctx, "", "q", warren.Publishing{Body: []byte("x")}); err != nil {
				t.Fatalf("Publisher.Publish: %v", err)
			}
			tx, err := client.Begin(ctx)
			if err != nil {
				t.Fatalf("Begin: %v", err)
			}

			// While everything is live, the forms of the report and those
			// whose printing reads nothing warren's goroutines write (a
			// dereferenced Client, or %s of one, is printed after Close).
			for _, cl := range []*warren.Client{client, single} {
				checkNoLeak(t, c, "live *Client", []string{fmt.Sprintf("%#v", cl), fmt.Sprintf("%v", cl), fmt.Sprintf("%+v", cl), cl.String()})
			}
			checkNoLeak(t, c, "live Channel", printed(ch))
			checkNoLeak(t, c, "Client.Endpoint", []string{client.Endpoint(), single.Endpoint()})
			checkNoLeak(t, c, "ClientStats", printed(client.Stats()))
			checkNoLeak(t, c, "PoolStats", printed(pool.Stats()))
			checkNoLeak(t, c, "PublisherStats", printed(pub.Stats()))

			if err := tx.Rollback(ctx); err != nil {
				t.Fatalf("Rollback: %v", err)
			}
			pool.Release(lease)
			if err := pub.Close(ctx); err != nil {
				t.Fatalf("Publisher.Close: %v", err)
			}
			if err := pool.Close(ctx); err != nil {
				t.Fatalf("Pool.Close: %v", err)
			}
			if err := ch.Close(ctx); err != nil {
				t.Fatalf("Channel.Close: %v", err)
			}
			if err := client.Close(ctx); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := single.Close(ctx); err != nil {
				t.Fatalf("Close: %v", err)
			}

			// Everything, now that no goroutine of warren's is left to
			// write what fmt reads.
			mu.Lock()
			evs := append([]warren.StateEvent(nil), events...)
			mu.Unlock()
			if len(evs) == 0 {
				t.Errorf("no StateEvent delivered, want at least StateConnected")
			}
			values := map[string]any{
				"*Client": client, "*Client (Dial)": single, "Channel": ch, "confirm Channel": cch,
				"leased Channel": lease, "*Confirmation": conf, "*Pool": pool, "*Publisher": pub, "*Tx": tx,
				"ClientStats": client.Stats(), "PoolStats": pool.Stats(), "PublisherStats": pub.Stats(),
				"[]StateEvent": evs, "Option": warren.WithTLS(&tls.Config{}),
			}
			for _, e := range evs {
				values[fmt.Sprintf("StateEvent %v", e.State)] = e
			}
			for what, v := range values {
				checkNoLeak(t, c, what, printed(v))
			}
			for what, err := range map[string]error{"Client.Err": client.Err(), "Channel.Err": ch.Err(), "Channel.Close again": ch.Close(ctx)} {
				checkNoLeak(t, c, what, errPrints(err))
			}
			for _, e := range evs {
				checkNoLeak(t, c, "StateEvent.Err", errPrints(e.Err))
			}
			out := logs.String()
			if !strings.Contains(out, "endpoint failed") || !strings.Contains(out, "connected") {
				t.Errorf("log output lacks the endpoint failure and the connect:\n%s", out)
			}
			checkNoLeak(t, c, "log output", []string{out})
		})
	}
}

// acceptCounter listens on loopback and counts the connections it
// accepts, closing each at once.
func acceptCounter(t *testing.T) (addr string, accepted *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted = new(atomic.Int32)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln.Addr().String(), accepted
}

// FIXED BUG (issue 17): WithTLS with an amqp:// URL connected in plaintext,
// sending the password in the clear. The combination is refused before
// anything is dialled, for Dial and for every endpoint of DialCluster;
// amqps:// with WithTLS still dials.
func TestWithTLSAndAnAMQPURLIsRefusedBeforeDialling(t *testing.T) {
	leakCheck(t)
	ctx := testCtx(t)
	addr, accepted := acceptCounter(t)
	withTLS := warren.WithTLS(&tls.Config{ServerName: "localhost"})
	plain := "amqp://app:Pl41nText-Secret@" + addr + "/"
	secure := "amqps://app:Pl41nText-Secret@" + addr + "/"

	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, warren.ErrInvalidArgument) || !strings.Contains(fmt.Sprint(err), "amqps://") {
			t.Errorf("%s: got %v, want ErrInvalidArgument saying to use amqps://", what, err)
		}
		if strings.Contains(fmt.Sprint(err), "Pl41nText") {
			t.Errorf("%s: error %q holds the password", what, err)
		}
	}
	_, err := warren.Dial(ctx, plain, withTLS)
	check("Dial(amqp://, WithTLS)", err)
	_, err = warren.Dial(ctx, "AMQP://app:Pl41nText-Secret@"+addr+"/", withTLS)
	check("Dial(AMQP://, WithTLS)", err)
	// The amqps:// endpoint comes first and would be dialled first: the
	// amqp:// one is still refused before it.
	_, err = warren.DialCluster(ctx, []string{secure, plain}, withTLS, warren.WithEndpointOrder(warren.EndpointsInOrder))
	check("DialCluster(amqps://, amqp://; WithTLS)", err)
	if err != nil && !strings.Contains(err.Error(), "endpoint 1") {
		t.Errorf("DialCluster: %v, want it to name endpoint 1", err)
	}
	if n := accepted.Load(); n != 0 {
		t.Fatalf("refused combinations reached the listener %d times, want 0", n)
	}

	// amqps:// with WithTLS dials (and fails the handshake: the listener
	// hangs up).
	_, err = warren.Dial(ctx, secure, withTLS)
	if err == nil || errors.Is(err, warren.ErrInvalidArgument) {
		t.Errorf("Dial(amqps://, WithTLS): got %v, want a dial or handshake error", err)
	}
	if n := accepted.Load(); n != 1 {
		t.Errorf("Dial(amqps://, WithTLS) reached the listener %d times, want 1", n)
	}
	// amqp:// without WithTLS dials in plaintext, as asked.
	_, err = warren.Dial(ctx, plain)
	if err == nil || errors.Is(err, warren.ErrInvalidArgument) {
		t.Errorf("Dial(amqp://): got %v, want a dial or handshake error", err)
	}
	if n := accepted.Load(); n != 2 {
		t.Errorf("Dial(amqp://) reached the listener %d times in all, want 2", n)
	}
}
