package warren_test

// Credentials that change, against the scripted broker: the provider at
// every dial, UpdateSecret on the wire (accepted, refused, abandoned), the
// refresher, and the sweep that no printed Credentials, option or error
// holds a secret.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	fb "github.com/warrenmq/warren/internal/fakebroker"
)

var (
	methodUpdateSecret   = fb.ID(10, 70)
	methodUpdateSecretOK = fb.ID(10, 71)
)

// readUpdateSecret reads the next method, which must be
// connection.update-secret, and returns its secret and reason.
func readUpdateSecret(c *fb.Conn) (secret, reason string) {
	m := c.ExpectOn(0, methodUpdateSecret)
	r := m.Reader()
	secret, reason = r.LongStr(), r.ShortStr()
	if r.Err() != nil {
		panic(r.Err())
	}
	return secret, reason
}

// serveUpdates is Serve that also accepts every update-secret, sending the
// secrets it saw on got (when not nil).
func serveUpdates(got chan<- string) func(*fb.Conn) {
	return func(c *fb.Conn) {
		for {
			m, err := c.Next()
			if err != nil {
				return
			}
			if m.ID == methodUpdateSecret {
				secret := m.Reader().LongStr()
				c.Send(0, methodUpdateSecretOK, nil)
				if got != nil {
					select {
					case got <- secret:
					case <-c.Quit():
					}
				}
				continue
			}
			if c.Answer(m) != nil {
				return
			}
		}
	}
}

func TestWithCredentialsReplacesTheURLsUserAndPasswordAtDial(t *testing.T) {
	leakCheck(t)
	b := fb.Start(t, fb.Config{User: "svc", Password: "Token-One-Xq9"}, serve)
	var calls atomic.Int32
	ctx := testCtx(t)
	c, err := warren.Dial(ctx, "amqp://nobody:wrong@"+b.Addr()+"/", warren.WithCredentials(func(context.Context) (warren.Credentials, error) {
		calls.Add(1)
		return warren.Credentials{Username: "svc", Secret: "Token-One-Xq9"}, nil
	}))
	if err != nil {
		t.Fatalf("Dial with the provider's credentials: %v", err)
	}
	defer c.Close(ctx)
	if n := calls.Load(); n != 1 {
		t.Errorf("provider called %d times for one dial, want 1", n)
	}
	if got, want := c.Endpoint(), "amqp://svc@"+b.Addr()+"/%2F"; got != want {
		t.Errorf("Endpoint() = %q, want %q (the provider's user)", got, want)
	}
}

func TestWithCredentialsEmptyUsernameKeepsTheURLsUser(t *testing.T) {
	leakCheck(t)
	b := fb.Start(t, fb.Config{User: "app", Password: "pw-from-provider"}, serve)
	ctx := testCtx(t)
	c, err := warren.Dial(ctx, "amqp://app@"+b.Addr()+"/", warren.WithCredentials(func(context.Context) (warren.Credentials, error) {
		return warren.Credentials{Secret: "pw-from-provider"}, nil
	}))
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	_ = c.Close(ctx)
}

func TestAProviderErrorFailsTheDialBeforeAnythingIsSent(t *testing.T) {
	leakCheck(t)
	addr, accepted := acceptCounter(t)
	boom := errors.New("vault unreachable")
	ctx := testCtx(t)
	for name, p := range map[string]warren.CredentialsProvider{
		"error":        func(context.Context) (warren.Credentials, error) { return warren.Credentials{}, boom },
		"empty secret": func(context.Context) (warren.Credentials, error) { return warren.Credentials{Username: "u"}, nil },
	} {
		_, err := warren.Dial(ctx, "amqp://"+addr+"/", warren.WithCredentials(p))
		if !errors.Is(err, warren.ErrCredentialsProvider) {
			t.Errorf("%s: Dial error %v, want ErrCredentialsProvider", name, err)
		}
		if name == "error" && !errors.Is(err, boom) {
			t.Errorf("%s: Dial error %v does not wrap the provider's error", name, err)
		}
		_, err = warren.DialCluster(ctx, []string{"amqp://" + addr + "/", "amqp://" + addr + "/"}, warren.WithCredentials(p))
		if !errors.Is(err, warren.ErrCredentialsProvider) {
			t.Errorf("%s: DialCluster error %v, want ErrCredentialsProvider", name, err)
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("%d connections reached the listener, want 0: the provider fails the attempt first", n)
	}
}

func TestCredentialOptionsAreCheckedBeforeDialling(t *testing.T) {
	leakCheck(t)
	addr, accepted := acceptCounter(t)
	ctx := testCtx(t)
	p := func(context.Context) (warren.Credentials, error) { return warren.Credentials{Secret: "x"}, nil }
	cases := map[string][]warren.Option{
		"nil provider":               {warren.WithCredentials(nil)},
		"refresh without a provider": {warren.WithCredentialRefresh(warren.RefreshPolicy{})},
		"fraction 1":                 {warren.WithCredentials(p), warren.WithCredentialRefresh(warren.RefreshPolicy{Fraction: 1})},
		"negative fraction":          {warren.WithCredentials(p), warren.WithCredentialRefresh(warren.RefreshPolicy{Fraction: -0.5})},
		"jitter above fraction":      {warren.WithCredentials(p), warren.WithCredentialRefresh(warren.RefreshPolicy{Fraction: 0.5, Jitter: 0.6})},
		"negative jitter":            {warren.WithCredentials(p), warren.WithCredentialRefresh(warren.RefreshPolicy{Jitter: -0.1})},
		"negative backoff":           {warren.WithCredentials(p), warren.WithCredentialRefresh(warren.RefreshPolicy{MinBackoff: -1})},
		"max below min":              {warren.WithCredentials(p), warren.WithCredentialRefresh(warren.RefreshPolicy{MinBackoff: time.Second, MaxBackoff: time.Millisecond})},
	}
	for name, opts := range cases {
		if _, err := warren.Dial(ctx, "amqp://"+addr+"/", opts...); !errors.Is(err, warren.ErrInvalidArgument) {
			t.Errorf("%s: Dial error %v, want ErrInvalidArgument", name, err)
		}
		if _, err := warren.DialCluster(ctx, []string{"amqp://" + addr + "/"}, opts...); !errors.Is(err, warren.ErrInvalidArgument) {
			t.Errorf("%s: DialCluster error %v, want ErrInvalidArgument", name, err)
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("%d connections reached the listener, want 0", n)
	}
}

func TestUpdateSecretSendsTheSecretAndReasonAndReturnsOnTheBrokersOK(t *testing.T) {
	got := make(chan [2]string, 1)
	c := startFake(t, fb.Config{}, func(c *fb.Conn) {
		s, r := readUpdateSecret(c)
		c.Send(0, methodUpdateSecretOK, nil)
		got <- [2]string{s, r}
		serve(c)
	})
	ctx := testCtx(t)
	if err := c.UpdateSecret(ctx, "New-Secret-Zz8", "rotation"); err != nil {
		t.Fatalf("UpdateSecret: %v", err)
	}
	if g := <-got; g != [2]string{"New-Secret-Zz8", "rotation"} {
		t.Errorf("broker saw secret/reason %q, want %q", g, [2]string{"New-Secret-Zz8", "rotation"})
	}
	ch, err := c.Channel(ctx)
	if err != nil {
		t.Fatalf("Channel after UpdateSecret: %v", err)
	}
	_ = ch.Close(ctx)
}

func TestUpdateSecretRefusedByTheBrokerIsErrSecretRefused(t *testing.T) {
	c := startFake(t, fb.Config{}, func(c *fb.Conn) {
		readUpdateSecret(c)
		c.CloseConnection(530, "NOT_ALLOWED - New secret was refused by one of the backends")
		_ = c.Serve()
	})
	ctx := testCtx(t)
	err := c.UpdateSecret(ctx, "Bad-Token-Kk4", "refresh")
	if !errors.Is(err, warren.ErrSecretRefused) || !errors.Is(err, warren.ErrNotAllowed) {
		t.Fatalf("UpdateSecret error %v, want ErrSecretRefused and ErrNotAllowed", err)
	}
	var ce *warren.ConnectionError
	if !errors.As(err, &ce) || ce.Code != 530 || !ce.Server {
		t.Errorf("UpdateSecret error %v: want a *ConnectionError with code 530 from the broker", err)
	}
	if err := c.Err(); !errors.Is(err, warren.ErrNotAllowed) {
		t.Errorf("Client.Err() = %v, want the 530 close", err)
	}
}

func TestUpdateSecretRefusesBadInputBeforeSending(t *testing.T) {
	c := startFake(t, fb.Config{}, serve) // serve ignores update-secret: a send would hang
	ctx := testCtx(t)
	long := string(make([]byte, 256))
	for name, args := range map[string][2]string{"empty secret": {"", "r"}, "reason over 255 bytes": {"s", long}} {
		if err := c.UpdateSecret(ctx, args[0], args[1]); !errors.Is(err, warren.ErrInvalidArgument) {
			t.Errorf("%s: UpdateSecret error %v, want ErrInvalidArgument", name, err)
		}
	}
	_ = c.Close(ctx)
	if err := c.UpdateSecret(ctx, "s", "r"); !errors.Is(err, warren.ErrClientClosed) {
		t.Errorf("UpdateSecret after Close: %v, want ErrClientClosed", err)
	}
}

// An update-secret the broker does not answer is abandoned when ctx ends;
// the next one waits for its answer instead of reading it as its own.
func TestUpdateSecretAbandonedByCtxKeepsTheNextOneFromStealingItsReply(t *testing.T) {
	release := make(chan struct{})
	second := make(chan string, 1)
	c := startFake(t, fb.Config{}, func(c *fb.Conn) {
		readUpdateSecret(c)
		select {
		case <-release:
		case <-c.Quit():
			return
		}
		c.Send(0, methodUpdateSecretOK, nil)
		s, _ := readUpdateSecret(c)
		c.Send(0, methodUpdateSecretOK, nil)
		second <- s
		serve(c)
	})
	ctx := testCtx(t)
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	err := c.UpdateSecret(short, "first", "")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("unanswered UpdateSecret: %v, want DeadlineExceeded", err)
	}
	short, cancel = context.WithTimeout(ctx, 100*time.Millisecond)
	err = c.UpdateSecret(short, "second", "")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("UpdateSecret behind an unanswered one: %v, want DeadlineExceeded (it waits)", err)
	}
	close(release)
	if err := c.UpdateSecret(ctx, "third", ""); err != nil {
		t.Fatalf("UpdateSecret once the first was answered: %v", err)
	}
	if s := <-second; s != "third" {
		t.Errorf("second update-secret on the wire carried %q, want %q", s, "third")
	}
	if err := c.Err(); err != nil {
		t.Errorf("connection ended: %v", err)
	}
}

// A reconnect after UpdateSecret logs in with the new secret: the first
// endpoint knows only the URL's password, the second only the new one.
func TestAReconnectAfterUpdateSecretLogsInWithTheNewSecret(t *testing.T) {
	leakCheck(t)
	first := fb.Start(t, fb.Config{User: "app", Password: "Old-Pass-Aa1"}, func(c *fb.Conn) {
		readUpdateSecret(c)
		c.Send(0, methodUpdateSecretOK, nil)
		c.CloseConnection(320, "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'")
		_ = c.Serve()
	})
	second := fb.Start(t, fb.Config{User: "app", Password: "New-Pass-Bb2"}, serve)
	ctx := testCtx(t)
	reconnected := make(chan warren.StateEvent, 4)
	c, err := warren.DialCluster(ctx, []string{"amqp://app:Old-Pass-Aa1@" + first.Addr() + "/", "amqp://app:Old-Pass-Aa1@" + second.Addr() + "/"},
		warren.WithEndpointOrder(warren.EndpointsInOrder),
		warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}),
		warren.WithStateCallback(func(e warren.StateEvent) {
			if e.State == warren.StateReconnected {
				reconnected <- e
			}
		}))
	if err != nil {
		t.Fatalf("DialCluster: %v", err)
	}
	defer c.Close(ctx)
	if err := c.UpdateSecret(ctx, "New-Pass-Bb2", "password rotated"); err != nil {
		t.Fatalf("UpdateSecret: %v", err)
	}
	select {
	case e := <-reconnected:
		if e.Endpoint != "amqp://app@"+second.Addr()+"/%2F" {
			t.Errorf("reconnected to %s, want the second endpoint", e.Endpoint)
		}
	case <-ctx.Done():
		t.Fatalf("no reconnect with the new secret: %v", c.Err())
	}
}

// The provider is asked again at each reconnect attempt, and a failing
// provider is one more failed attempt: the backoff goes on.
func TestEveryReconnectAttemptAsksTheProviderAgain(t *testing.T) {
	leakCheck(t)
	var conns atomic.Int32
	b := fb.Start(t, fb.Config{User: "svc", Password: "Current-Token-Cc3"}, func(c *fb.Conn) {
		if conns.Add(1) == 1 {
			c.CloseConnection(320, "CONNECTION_FORCED - closed via management plugin")
		}
		_ = c.Serve()
	})
	var calls atomic.Int32
	provider := func(context.Context) (warren.Credentials, error) {
		switch calls.Add(1) {
		case 1:
			return warren.Credentials{Username: "svc", Secret: "Current-Token-Cc3"}, nil
		case 2:
			return warren.Credentials{}, errors.New("token endpoint down")
		}
		return warren.Credentials{Username: "svc", Secret: "Current-Token-Cc3"}, nil
	}
	ctx := testCtx(t)
	var mu sync.Mutex
	var events []warren.StateEvent
	done := make(chan struct{})
	c, err := warren.Dial(ctx, "amqp://"+b.Addr()+"/", warren.WithCredentials(provider),
		warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}),
		warren.WithStateCallback(func(e warren.StateEvent) {
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
			if e.State == warren.StateReconnected {
				close(done)
			}
		}))
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close(ctx)
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatalf("no reconnect: %v", c.Err())
	}
	mu.Lock()
	defer mu.Unlock()
	last := events[len(events)-1]
	if last.Attempt != 2 || calls.Load() != 3 {
		t.Errorf("reconnected at attempt %d with %d provider calls, want attempt 2 and 3 calls (1 dial + 2 attempts)", last.Attempt, calls.Load())
	}
}

// The refresher sends the provider's new secret before the old one
// expires, again and again, and reports each refresh.
func TestTheRefresherUpdatesTheSecretBeforeItExpires(t *testing.T) {
	got := make(chan string, 16)
	var calls atomic.Int32
	provider := func(context.Context) (warren.Credentials, error) {
		n := calls.Add(1)
		return warren.Credentials{Username: "guest", Secret: fmt.Sprintf("Tok-%d", n), ValidUntil: time.Now().Add(300 * time.Millisecond)}, nil
	}
	var refreshed, failed, metered atomic.Int32
	events := make(chan warren.StateEvent, 16)
	leakCheck(t)
	b := fb.Start(t, fb.Config{User: "guest", Password: "Tok-1"}, serveUpdates(got))
	ctx := testCtx(t)
	c, err := warren.Dial(ctx, "amqp://"+b.Addr()+"/", warren.WithCredentials(provider),
		warren.WithCredentialRefresh(warren.RefreshPolicy{}),
		warren.WithMetrics(warren.MetricsHook{CredentialsRefreshed: func(ok bool, _ time.Duration) {
			if ok {
				metered.Add(1)
			}
		}}),
		warren.WithStateCallback(func(e warren.StateEvent) {
			switch e.State {
			case warren.StateCredentialsRefreshed:
				refreshed.Add(1)
				select {
				case events <- e:
				default:
				}
			case warren.StateCredentialsRefreshFailed:
				failed.Add(1)
			}
		}))
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	start := time.Now()
	for i, want := range []string{"Tok-2", "Tok-3"} {
		select {
		case s := <-got:
			if s != want {
				t.Errorf("refresh %d sent %q, want %q", i+1, s, want)
			}
		case <-ctx.Done():
			t.Fatalf("refresh %d never came", i+1)
		}
	}
	// Two refreshes of 300 ms credentials at 0.75–0.8 of their life.
	if el := time.Since(start); el > 1500*time.Millisecond {
		t.Errorf("two refreshes took %v; the credentials lived 300 ms each", el)
	}
	for range 2 {
		select {
		case e := <-events:
			if e.ValidUntil.IsZero() || e.Err != nil {
				t.Errorf("StateCredentialsRefreshed event %+v: want a ValidUntil and no Err", e)
			}
		case <-ctx.Done():
			t.Fatal("refresh not reported")
		}
	}
	if err := c.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if failed.Load() != 0 || refreshed.Load() < 2 || metered.Load() < 2 {
		t.Errorf("refreshed %d, failed %d, metered %d: want at least 2 refreshes reported to both and no failure",
			refreshed.Load(), failed.Load(), metered.Load())
	}
}

// A failing provider is retried with backoff and reported; credentials
// without a ValidUntil are never refreshed.
func TestTheRefresherRetriesAFailingProviderAndReportsIt(t *testing.T) {
	var calls atomic.Int32
	provider := func(context.Context) (warren.Credentials, error) {
		if calls.Add(1) == 1 {
			return warren.Credentials{Secret: "guest", ValidUntil: time.Now().Add(200 * time.Millisecond)}, nil
		}
		if calls.Load() < 4 {
			return warren.Credentials{}, errors.New("idp down")
		}
		return warren.Credentials{Secret: "guest"}, nil // no expiry: the last refresh
	}
	failures := make(chan warren.StateEvent, 8)
	ok := make(chan struct{}, 8)
	got := make(chan string, 8)
	c := startFake(t, fb.Config{}, serveUpdates(got), warren.WithCredentials(provider),
		warren.WithCredentialRefresh(warren.RefreshPolicy{MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}),
		warren.WithStateCallback(func(e warren.StateEvent) {
			switch e.State {
			case warren.StateCredentialsRefreshFailed:
				failures <- e
			case warren.StateCredentialsRefreshed:
				ok <- struct{}{}
			}
		}))
	ctx := testCtx(t)
	for i := 1; i <= 2; i++ {
		select {
		case e := <-failures:
			if e.Attempt != i || !errors.Is(e.Err, warren.ErrCredentialsProvider) {
				t.Errorf("failure event %d: Attempt %d, Err %v; want Attempt %d and ErrCredentialsProvider", i, e.Attempt, e.Err, i)
			}
		case <-ctx.Done():
			t.Fatalf("failure %d not reported", i)
		}
	}
	select {
	case <-ok:
	case <-ctx.Done():
		t.Fatal("no successful refresh after the failures")
	}
	time.Sleep(300 * time.Millisecond) // no expiry now: nothing more may come
	if n := calls.Load(); n != 4 {
		t.Errorf("provider called %d times, want 4 (dial, two failures, the refresh without expiry)", n)
	}
	if err := c.Err(); err != nil {
		t.Errorf("connection ended: %v", err)
	}
}

// The secret sweep for the new values: Credentials printed with every
// verb, by value, by pointer and inside other values; the options; the
// errors of a failing provider and of a refused secret; the log.
func TestPrintedCredentialsOptionsAndErrorsNeverHoldTheSecret(t *testing.T) {
	for _, cc := range credCorpus {
		if cc.pass == "" {
			continue
		}
		t.Run(cc.name, func(t *testing.T) {
			leakCheck(t)
			cr := warren.Credentials{Username: cc.user, Secret: cc.pass, ValidUntil: time.Now().Add(time.Hour)}
			type holder struct {
				C   warren.Credentials
				P   *warren.Credentials
				Any any
			}
			values := map[string]any{
				"Credentials": cr, "[]Credentials": []warren.Credentials{cr}, "map": map[string]warren.Credentials{"k": cr},
				"struct holding it": holder{C: cr, P: &cr, Any: cr},
				"Option":            warren.WithCredentials(func(context.Context) (warren.Credentials, error) { return cr, nil }),
				"RefreshPolicy":     warren.RefreshPolicy{},
			}
			for what, v := range values {
				checkNoLeak(t, cc, what, printed(v))
			}
			if s := cr.String(); s == "" || cr.GoString() == "" {
				t.Errorf("String %q / GoString %q: want both non-empty", s, cr.GoString())
			}

			logger, logs := debugLogger()
			ctx := testCtx(t)
			_, err := warren.Dial(ctx, "amqp://"+closedAddr(t)+"/", warren.WithLogger(logger),
				warren.WithCredentials(func(context.Context) (warren.Credentials, error) {
					return warren.Credentials{}, fmt.Errorf("vault: %v", cr)
				}))
			if !errors.Is(err, warren.ErrCredentialsProvider) {
				t.Fatalf("Dial error %v, want ErrCredentialsProvider", err)
			}
			checkNoLeak(t, cc, "provider error", errPrints(err))

			b := fb.Start(t, fb.Config{User: cc.user, Password: cc.pass}, func(c *fb.Conn) {
				readUpdateSecret(c)
				c.CloseConnection(530, "NOT_ALLOWED - New secret was refused by one of the backends")
				_ = c.Serve()
			})
			c, err := warren.Dial(ctx, "amqp://"+b.Addr()+"/", warren.WithLogger(logger),
				warren.WithCredentials(func(context.Context) (warren.Credentials, error) { return cr, nil }),
				warren.WithCredentialRefresh(warren.RefreshPolicy{}))
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			err = c.UpdateSecret(ctx, cc.pass+"-next", "rotation")
			if !errors.Is(err, warren.ErrSecretRefused) {
				t.Fatalf("UpdateSecret error %v, want ErrSecretRefused", err)
			}
			checkNoLeak(t, cc, "refused UpdateSecret", errPrints(err))
			_ = c.Close(ctx)
			checkNoLeak(t, cc, "*Client", printed(c))
			checkNoLeak(t, cc, "log output", []string{logs.String()})
		})
	}
}

// Credentials that are always already expired do not make the refresher
// spin: refreshes stay MinBackoff apart.
func TestTheRefresherDoesNotSpinOnCredentialsAlreadyExpired(t *testing.T) {
	var calls atomic.Int32
	provider := func(context.Context) (warren.Credentials, error) {
		calls.Add(1)
		return warren.Credentials{Secret: "guest", ValidUntil: time.Now().Add(-time.Minute)}, nil
	}
	c := startFake(t, fb.Config{}, serveUpdates(nil), warren.WithCredentials(provider),
		warren.WithCredentialRefresh(warren.RefreshPolicy{MinBackoff: 100 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}))
	time.Sleep(450 * time.Millisecond)
	_ = c.Close(testCtx(t))
	// The dial, then a refresh at once and one every 100 ms: 6 at most.
	if n := calls.Load(); n < 2 || n > 6 {
		t.Errorf("provider called %d times in 450 ms with MinBackoff 100 ms, want 2 to 6", n)
	}
}
