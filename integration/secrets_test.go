package integration

// The password sweep against a real RabbitMQ: logins the broker refuses,
// and the values a live Client hands out (deliveries, channels, pools,
// publishers, transactions, the broker's errors), printed with every verb,
// by pointer and by value, plus the log. The root package's sweep
// (secrets_test.go, against the scripted fake broker) covers every shape
// of URL; this one covers what only a real broker produces.

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

// secretCorpus holds passwords with the characters a URL reserves. Every
// run of four or more letters or digits in each is distinctive, so that a
// leak of any piece of one is found.
var secretCorpus = []struct{ name, user, pass string }{
	{"slash", "app", "Hunter2Secret/Xq9Wv"},
	{"question mark", "app", "Qz7Kp?Rt4Ld"},
	{"hash", "app", "Mv3Bn#Yc8Fj"},
	{"at", "app", "Wq5Ex@Tz2Hs"},
	{"colon", "app", "Pk4Lm:Zx9Qa"},
	{"percent", "app", "Ns6Dv%GhJk"},
	{"brackets and space", "app", "Rf8[Ty3] Uu7Ii"},
	{"digits then slash", "app", "73519264/Xc7Vb"},
	{"unicode", "app", "Ünïcødé-Pässwörd-Zz9"},
	{"reserved in user too", "a/b?c#d@e:f", "Vv7Cc/Xx2?Zz5#Ll8"},
}

// secretNeedles returns what must never appear of password pass of user:
// the password, its escaped and hex forms, and each run of four or more
// letters and digits in it. When the password is the user name (guest on
// a shared broker) only the forms that join the two are looked for.
func secretNeedles(user, pass string) []string {
	if pass == "" {
		return nil
	}
	if pass == user {
		return []string{user + ":" + pass, ":" + pass + "@", url.UserPassword(user, pass).String()}
	}
	out := []string{
		pass,
		url.QueryEscape(pass),
		url.PathEscape(pass),
		strings.TrimPrefix(url.UserPassword("", pass).String(), ":"),
		hex.EncodeToString([]byte(pass)),
	}
	for _, f := range strings.FieldsFunc(pass, func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) }) {
		if len([]rune(f)) >= 4 {
			out = append(out, f, hex.EncodeToString([]byte(f)))
		}
	}
	return out
}

// checkSecretKept fails the test if any of texts holds one of needles.
func checkSecretKept(t *testing.T, what string, needles, texts []string) {
	t.Helper()
	for _, s := range texts {
		for _, n := range needles {
			if strings.Contains(s, n) {
				t.Errorf("%s: %q holds %q of the password", what, s, n)
				return
			}
		}
	}
}

// printedForms returns v printed with every verb that shows fields, and
// the same for the value v points to (read by reflection: fmt then calls
// no method with a pointer receiver) or, for a non-pointer, for a pointer
// to a copy.
func printedForms(v any) []string {
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
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
			out = append(out, fmt.Sprintf(verb, f))
		}
	}
	return out
}

// errorForms returns err and every error in its chain, printed.
func errorForms(err error) []string {
	var out []string
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		out = append(out, e.Error())
		out = append(out, printedForms(e)...)
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

// lockedBuffer is the writer of a slog handler that warren's goroutines
// write to while the test reads.
type lockedBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// userinfoURL returns the broker's URL with user and pass as its
// credentials, percent-encoded (escape) or written as they are.
func userinfoURL(t *testing.T, b *brokertest.Broker, user, pass string, escape bool) string {
	t.Helper()
	if escape {
		return b.URLWith(user, pass, "")
	}
	u, err := url.Parse(b.URL)
	if err != nil {
		t.Fatalf("parse broker URL: %v", err)
	}
	s := u.Scheme + "://" + user + ":" + pass + "@" + u.Host + u.EscapedPath()
	if u.RawQuery != "" {
		s += "?" + u.RawQuery
	}
	return s
}

// The broker refuses each login (an unknown user, or guest with a wrong
// password); neither the error, any error in its chain printed with any
// verb, nor the log holds the password. An unescaped URL is refused by
// warren itself or reaches the broker; either way nothing shows the
// password.
func TestRefusedLoginsNeverShowThePassword(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	var logs lockedBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	type attempt struct {
		what, user, pass string
		escaped          bool
		err              error
	}
	var attempts []*attempt
	for _, c := range secretCorpus {
		attempts = append(attempts,
			&attempt{what: c.name + ", unknown user", user: c.user, pass: c.pass, escaped: true},
			&attempt{what: c.name + ", guest with it as a wrong password", user: "guest", pass: c.pass, escaped: true},
			&attempt{what: c.name + ", unescaped", user: c.user, pass: c.pass})
	}
	// RabbitMQ answers a refused login after a pause of a few seconds:
	// the attempts run at once.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, a := range attempts {
		rawURL := userinfoURL(t, b, a.user, a.pass, a.escaped)
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := warren.Dial(ctx, rawURL, warren.WithLogger(logger))
			if err == nil {
				_ = c.Close(ctx)
				err = errors.New("no error")
			}
			a.err = err
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatalf("the refused logins took more than 30 s")
	}
	for _, a := range attempts {
		t.Logf("%s: %v", a.what, a.err)
		if a.escaped && !errors.Is(a.err, warren.ErrAccessRefused) {
			t.Errorf("%s: got %v, want ErrAccessRefused", a.what, a.err)
		}
		if !a.escaped && !errors.Is(a.err, warren.ErrAccessRefused) && !errors.Is(a.err, warren.ErrInvalidArgument) {
			t.Errorf("%s: got %v, want ErrAccessRefused or ErrInvalidArgument", a.what, a.err)
		}
		checkSecretKept(t, a.what+": error", secretNeedles(a.user, a.pass), errorForms(a.err))
	}
	for _, c := range secretCorpus {
		checkSecretKept(t, "log output", secretNeedles(c.user, c.pass), []string{logs.String()})
	}
}

// Every value a Client connected to the real broker hands out, printed
// with every verb, and the log hold no password. On a private node the
// user has a password with every reserved character; on a shared broker
// the URL's own credentials (guest:guest) are looked for.
func TestLiveValuesFromARealBrokerNeverShowThePassword(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, 30*time.Second)
	rawURL := b.URL
	if b.Private() {
		user, pass := uniqueName(t, "user-"), "Hunter2Secret/Xq9Wv?Mm2#Ww4@Ee5:Rr6%Tt7[Yy8] Ünïcødé-"+randHex(4)
		addUser(t, b, user, pass, ".*", ".*", ".*")
		rawURL = b.URLWith(user, pass, "")
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatalf("parse URL: %v", err)
	}
	pass, _ := u.User.Password()
	needles := secretNeedles(u.User.Username(), pass)
	if len(needles) == 0 {
		t.Fatalf("the broker's URL has no password to look for")
	}

	var logs lockedBuffer
	var (
		mu     sync.Mutex
		events []warren.StateEvent
	)
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := dial(t, rawURL, warren.WithLogger(logger), warren.WithStateCallback(func(e warren.StateEvent) {
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
	}))
	ch := openChannel(t, ctx, c)
	q, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
	if err != nil {
		t.Fatalf("QueueDeclare: %v", err)
	}
	if err := ch.Publish(ctx, "", q.Name, warren.Publishing{Body: []byte("x")}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	d := getOne(t, ctx, ch, q.Name)
	if err := d.Ack(ctx); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	bad := openChannel(t, ctx, c)
	_, brokerErr := bad.QueueDeclare(ctx, uniqueName(t, "missing-"), warren.QueueOptions{Passive: true})
	if !errors.Is(brokerErr, warren.ErrNotFound) {
		t.Fatalf("passive QueueDeclare of a missing queue: got %v, want ErrNotFound", brokerErr)
	}
	pool, err := c.NewPool(ctx, warren.PoolOptions{Size: 2})
	if err != nil {
		t.Fatalf("NewPool: %v", err)
	}
	pub, err := c.NewPublisher(ctx, warren.PublisherOptions{Channels: 1})
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	if err := pub.Publish(ctx, "", q.Name, warren.Publishing{Body: []byte("y")}); err != nil {
		t.Fatalf("Publisher.Publish: %v", err)
	}
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	checkSecretKept(t, "live *Client", needles, []string{fmt.Sprintf("%#v", c), fmt.Sprintf("%v", c), c.String(), c.Endpoint()})
	checkSecretKept(t, "live Channel", needles, printedForms(ch))

	if err := tx.Rollback(ctx); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	if err := pub.Close(ctx); err != nil {
		t.Fatalf("Publisher.Close: %v", err)
	}
	if err := pool.Close(ctx); err != nil {
		t.Fatalf("Pool.Close: %v", err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}

	// Everything, now that warren's goroutines have ended.
	mu.Lock()
	evs := append([]warren.StateEvent(nil), events...)
	mu.Unlock()
	values := map[string]any{
		"*Client": c, "Channel": ch, "*Delivery": d, "*Pool": pool, "*Publisher": pub, "*Tx": tx,
		"ClientStats": c.Stats(), "PoolStats": pool.Stats(), "PublisherStats": pub.Stats(), "[]StateEvent": evs,
	}
	for what, v := range values {
		checkSecretKept(t, what, needles, printedForms(v))
	}
	for what, err := range map[string]error{"broker's channel error": brokerErr, "Client.Err": c.Err(), "closed Channel.Err": bad.Err()} {
		checkSecretKept(t, what, needles, errorForms(err))
	}
	out := logs.String()
	if out == "" {
		t.Errorf("the logger saw nothing; want at least the connect and close events")
	}
	checkSecretKept(t, "log output", needles, []string{out})
}
