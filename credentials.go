package warren

// Credentials that change: a provider asked at every dial, update-secret on
// the live connection (Client.UpdateSecret), and the refresher that calls
// both before the credentials expire.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Credentials are a user name and a secret (a password, or an OAuth 2
// access token) for the SASL handshake, with the time the secret stops
// being accepted.
//
// A Credentials value never prints its Secret: String, GoString and
// Format (every fmt verb that formats a value, %v, %+v, %#v, %s and %q
// included) show "REDACTED" in its place, so a Credentials logged or
// wrapped in an error does not leak it. The one exception is fmt's %p of
// a Credentials value (not a pointer): fmt reports that bad verb by
// printing the fields raw, without calling any method; print a pointer or
// use %v.
type Credentials struct {
	// Username is the user to log in as. Empty keeps the URL's user (or
	// "guest", amqp091-go's default, when the URL has none).
	Username string
	// Secret is the password or token. It must not be empty.
	Secret string
	// ValidUntil is when Secret expires; the zero time means it does not.
	// The refresher (WithCredentialRefresh) uses it to schedule the next
	// refresh.
	ValidUntil time.Time
}

// redactedSecret is what a printed Credentials shows for a non-empty
// Secret.
const redactedSecret = "REDACTED"

func (c Credentials) shownSecret() string {
	if c.Secret == "" {
		return ""
	}
	return redactedSecret
}

// String returns the credentials with the secret replaced by "REDACTED".
func (c Credentials) String() string {
	s := "Credentials{Username: " + strconv.Quote(c.Username) + ", Secret: " + c.shownSecret()
	if !c.ValidUntil.IsZero() {
		s += ", ValidUntil: " + c.ValidUntil.Format(time.RFC3339Nano)
	}
	return s + "}"
}

// GoString returns the credentials as a Go literal (for %#v) with the
// secret replaced by "REDACTED".
func (c Credentials) GoString() string {
	s := "warren.Credentials{Username:" + strconv.Quote(c.Username) + ", Secret:" + strconv.Quote(c.shownSecret())
	if !c.ValidUntil.IsZero() {
		s += ", ValidUntil:" + c.ValidUntil.Format(time.RFC3339Nano)
	}
	return s + "}"
}

// Format implements fmt.Formatter so that no verb prints the secret: %#v
// prints GoString, %q the quoted String, every other verb String.
func (c Credentials) Format(f fmt.State, verb rune) {
	switch {
	case verb == 'v' && f.Flag('#'):
		_, _ = f.Write([]byte(c.GoString()))
	case verb == 'q':
		_, _ = f.Write([]byte(strconv.Quote(c.String())))
	default:
		_, _ = f.Write([]byte(c.String()))
	}
}

// CredentialsProvider returns the credentials for the next dial or
// refresh. See WithCredentials.
type CredentialsProvider func(ctx context.Context) (Credentials, error)

// RefreshPolicy schedules the refresh of expiring credentials (see
// WithCredentialRefresh). Zero fields take their defaults.
type RefreshPolicy struct {
	// Fraction is the part of the credentials' life (from when warren got
	// them to their ValidUntil) after which they are refreshed, greater
	// than 0 and less than 1; default 0.8, as RabbitMQ's Java client: a
	// token of 60 s is refreshed after 48 s, leaving a fifth of its life
	// to retry a failed refresh before it expires (.NET's client uses two
	// thirds, which refreshes earlier for no gain in safety at these
	// lifetimes).
	Fraction float64
	// Jitter spreads the refreshes of many clients: each refresh happens
	// at a random point between (Fraction−Jitter) and Fraction of the
	// life, never later. From 0 to Fraction; default 0.05. (A negative
	// value is refused; to have no jitter at all, use a tiny value such
	// as 1e-9.)
	Jitter float64
	// MinBackoff and MaxBackoff bound the wait between failed refresh
	// attempts (exponential with full jitter, as ReconnectPolicy); while
	// the credentials are still valid, a wait is also cut to half the time
	// left, so that several attempts fit before they expire. Defaults 500
	// ms and 30 s. Two refreshes are at least MinBackoff apart, however
	// short the credentials' life (a provider answering with an expiry
	// already past is not asked in a loop).
	MinBackoff time.Duration
	MaxBackoff time.Duration
}

const (
	defaultRefreshFraction   = 0.8
	defaultRefreshJitter     = 0.05
	defaultRefreshMinBackoff = 500 * time.Millisecond
	defaultRefreshMaxBackoff = 30 * time.Second
	// refreshTimeout bounds one refresh (the provider and update-secret)
	// when the reconnect policy gives no DialTimeout.
	refreshTimeout = 30 * time.Second
)

// WithCredentials makes warren ask p for the user and secret at every
// dial: the first one of Dial, each endpoint DialCluster tries, and every
// reconnect and failover attempt, so that a reconnect logs in with the
// provider's current secret, not the one the Client started with.
//
// Precedence: the provider's Secret replaces the URL's password, and its
// Username, when not empty, the URL's user; with WithCredentials the URL
// needs no userinfo at all. (The SASL mechanism EXTERNAL, chosen with the
// URL's auth_mechanism parameter, sends neither.) The provider's answer
// also wins over a secret set by Client.UpdateSecret.
//
// p gets the dial's ctx (bounded as the dial is). An error from p, or an
// empty Secret, fails that dial attempt with an error wrapping
// ErrCredentialsProvider (and p's error): Dial and DialCluster return it,
// and a reconnect counts it as a failed attempt and goes on with its
// backoff. p may be called from several goroutines at once (the
// reconnect and the refresher) and must be safe for that. It should return
// when ctx ends: Client.Close cancels a call in progress and waits for it
// (bounded by Close's ctx).
func WithCredentials(p CredentialsProvider) Option {
	return func(o *options) error {
		if p == nil {
			return fmt.Errorf("%w: WithCredentials: nil provider", ErrInvalidArgument)
		}
		o.provider = p
		return nil
	}
}

// WithCredentialRefresh refreshes expiring credentials on the live
// connection: when the credentials the connection was opened (or last
// refreshed) with have a ValidUntil, warren calls the WithCredentials
// provider at p.Fraction of their life (see RefreshPolicy) and sends its
// Secret to the broker with connection.update-secret, as
// Client.UpdateSecret does. A failure (of the provider or of the broker)
// is retried with backoff; a secret the broker refuses makes it close the
// connection (see ErrSecretRefused), which WithReconnect then replaces by
// dialling with the provider's current credentials. Credentials without a
// ValidUntil are never refreshed. update-secret cannot change the user: a
// different Username from the provider takes effect at the next dial.
//
// Each refresh is reported to WithStateCallback (StateCredentialsRefreshed
// or StateCredentialsRefreshFailed) and to MetricsHook.CredentialsRefreshed.
// The refresher is a goroutine of the Client: it follows each new
// connection after a reconnect and ends with the Client.
//
// It requires WithCredentials: without it, Dial and DialCluster fail with
// ErrInvalidArgument before dialling. A Fraction outside (0, 1), a Jitter
// outside [0, Fraction], a negative backoff, or MaxBackoff below
// MinBackoff is refused the same way.
func WithCredentialRefresh(p RefreshPolicy) Option {
	return func(o *options) error {
		if p.Fraction == 0 {
			p.Fraction = defaultRefreshFraction
		}
		if !(p.Fraction > 0 && p.Fraction < 1) {
			return fmt.Errorf("%w: WithCredentialRefresh: Fraction %v is not between 0 and 1", ErrInvalidArgument, p.Fraction)
		}
		if p.Jitter == 0 {
			p.Jitter = min(defaultRefreshJitter, p.Fraction)
		}
		if !(p.Jitter >= 0 && p.Jitter <= p.Fraction) {
			return fmt.Errorf("%w: WithCredentialRefresh: Jitter %v is not between 0 and Fraction %v", ErrInvalidArgument, p.Jitter, p.Fraction)
		}
		if p.MinBackoff < 0 || p.MaxBackoff < 0 {
			return fmt.Errorf("%w: WithCredentialRefresh: negative backoff", ErrInvalidArgument)
		}
		if p.MinBackoff == 0 {
			p.MinBackoff = defaultRefreshMinBackoff
		}
		if p.MaxBackoff == 0 {
			p.MaxBackoff = max(defaultRefreshMaxBackoff, p.MinBackoff)
		}
		if p.MaxBackoff < p.MinBackoff {
			return fmt.Errorf("%w: WithCredentialRefresh: MaxBackoff %v below MinBackoff %v", ErrInvalidArgument, p.MaxBackoff, p.MinBackoff)
		}
		o.refresh = &p
		return nil
	}
}

// checkCredentialOptions refuses option combinations that cannot work.
func checkCredentialOptions(op string, o *options) error {
	if o.refresh != nil && o.provider == nil {
		return fmt.Errorf("%w: %s: WithCredentialRefresh needs WithCredentials (a provider to refresh from)", ErrInvalidArgument, op)
	}
	return nil
}

// secretCell holds the secret of the last successful Client.UpdateSecret,
// for later dials. It is shared by a Client's options (a pointer, which
// fmt prints as an address) and keeps the secret in a closure, where no
// fmt verb reaches it.
type secretCell struct {
	v atomic.Pointer[func() string]
}

func (c *secretCell) set(secret string) {
	if c == nil {
		return
	}
	f := func() string { return secret }
	c.v.Store(&f)
}

func (c *secretCell) get() (string, bool) {
	if c == nil {
		return "", false
	}
	f := c.v.Load()
	if f == nil {
		return "", false
	}
	return (*f)(), true
}

// credLife is what a connection knows of its credentials' life: when
// warren got them and when they expire (zero: never). No secret.
type credLife struct {
	got        time.Time
	validUntil time.Time
}

// applyCredentials puts the credentials for one dial into uri: the
// provider's (asked now, under ctx), else a secret set by UpdateSecret,
// else the URL's own. It returns their life (nil without a provider).
func applyCredentials(ctx context.Context, uri *amqp.URI, o *options) (*credLife, error) {
	if o.provider == nil {
		if s, ok := o.secret.get(); ok {
			uri.Password = s
		}
		return nil, nil
	}
	cr, err := o.provider(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCredentialsProvider, err)
	}
	if cr.Secret == "" {
		return nil, fmt.Errorf("%w: it returned an empty Secret", ErrCredentialsProvider)
	}
	if cr.Username != "" {
		uri.Username = cr.Username
	}
	uri.Password = cr.Secret
	return &credLife{got: time.Now(), validUntil: cr.ValidUntil}, nil
}

// UpdateSecret sends connection.update-secret with secret (a new password
// or token for the connection's user) and reason (a short text for the
// broker's log, at most 255 bytes) on the live connection, bounded by ctx,
// and makes later dials of this Client (reconnects, failovers) log in with
// secret instead of the URL's password. The user cannot change.
//
// It returns nil once the broker has accepted the secret. A secret the
// broker refuses (an invalid or expired OAuth 2 token) makes the broker
// close the connection, 530 NOT_ALLOWED on RabbitMQ; UpdateSecret then
// returns an error matching ErrSecretRefused that wraps the
// *ConnectionError (errors.Is ErrNotAllowed), and the secret is not kept
// for later dials. With WithReconnect the Client then reconnects as after
// any loss. Note that RabbitMQ's internal user database (passwords set
// with rabbitmqctl) accepts any secret in update-secret without checking
// it (checked on 3.10 and 4.3): it checks a password only at login, so a
// wrong password shows only at the next dial.
//
// An empty secret, or a reason longer than 255 bytes, is refused with
// ErrInvalidArgument before anything is sent; after Close it returns
// ErrClientClosed. With WithReconnect, while the Client is between
// connections there is no connection to update: the secret is kept for
// the next dial and UpdateSecret returns nil. When the connection is lost
// during the call for another reason than a refusal, the secret is kept
// too and the *ConnectionError returned.
//
// update-secret cannot be interrupted on the wire: when ctx ends first,
// UpdateSecret returns an error wrapping ctx.Err() at once, the broker may
// still apply the secret, and the secret is kept for later dials if it
// does. A later UpdateSecret waits for the abandoned one's answer (bounded
// by its own ctx).
//
// With WithCredentials, later dials use the provider's answer instead of
// secret (see WithCredentials); UpdateSecret still updates the live
// connection.
func (c *Client) UpdateSecret(ctx context.Context, secret, reason string) error {
	if secret == "" {
		return fmt.Errorf("%w: UpdateSecret: empty secret", ErrInvalidArgument)
	}
	if len(reason) > 255 {
		return fmt.Errorf("%w: UpdateSecret: reason of %d bytes is longer than 255", ErrInvalidArgument, len(reason))
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("warren: connection.update-secret: %w", err)
	}
	select {
	case <-c.closing:
		return ErrClientClosed
	case <-c.done:
		return c.endError()
	default:
	}
	keep := func() { c.opts.secret.set(secret) }
	s := c.s()
	if s.isDead.Load() {
		if c.opts.reconnect == nil {
			return s.connError("connection.update-secret")
		}
		keep()
		return nil
	}
	err := s.updateSecret(ctx, secret, reason, keep)
	if err != nil && !errors.Is(err, ErrSecretRefused) && ctx.Err() == nil && s.isDead.Load() {
		keep() // lost on the way, not refused: the next dial tries it
	}
	return err
}

// endError is the error that ended the Client, or ErrClientClosed.
func (c *Client) endError() error {
	if b := c.endErr.Load(); b != nil && b.err != nil {
		return b.err
	}
	return ErrClientClosed
}

// updateSecret sends connection.update-secret and waits for its answer,
// bounded by ctx; accepted is called once the broker has accepted it,
// even after ctx has ended. One update-secret at a time: amqp091-go
// matches a connection-level reply by type to whichever caller reads it.
func (c *session) updateSecret(ctx context.Context, secret, reason string, accepted func()) error {
	const op = "connection.update-secret"
	if c.isClosing() {
		return ErrClientClosed
	}
	if err := c.secretLock.lock(ctx, c.dead); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("warren: %s: waiting for an earlier update-secret: %w", op, err)
		}
		return c.connError(op)
	}
	var err error
	done := make(chan struct{})
	if !c.goTracked(func() {
		defer close(done)
		err = c.conn.UpdateSecret(secret, reason)
	}) {
		c.secretLock.unlock()
		return ErrClientClosed
	}
	select {
	case <-done:
		c.secretLock.unlock()
	case <-ctx.Done():
		// The broker may still answer. Keep the lock until it does (or
		// the connection ends), so that its answer is not read by the
		// next update-secret.
		reap := func() {
			<-done
			if err == nil {
				accepted()
			}
			c.secretLock.unlock()
		}
		if !c.goTracked(reap) {
			reap() // Close has begun: the call ends with the connection
		}
		return fmt.Errorf("warren: %s abandoned (the broker may still apply it): %w", op, ctx.Err())
	}
	if err == nil {
		accepted()
		return nil
	}
	var ae *amqp.Error
	refused := errors.As(err, &ae) && ae.Server
	// amqp091-go returns the close before warren's watcher has recorded
	// it; the watcher is quick (it only stores the cause).
	t := time.NewTimer(c.opts.closeTimeout)
	defer t.Stop()
	select {
	case <-c.dead:
	case <-t.C:
	}
	cause := c.connError(op)
	if refused {
		return fmt.Errorf("warren: %s: %w: %w", op, ErrSecretRefused, cause)
	}
	return cause
}

// startRefresher starts the credential refresher, when there is one to
// run, as a goroutine of the Client.
func (c *Client) startRefresher() {
	if c.opts.refresh == nil || c.opts.provider == nil {
		return
	}
	c.goTracked(c.refreshLoop)
}

// refreshAt returns when credentials of life l should be refreshed.
func (p *RefreshPolicy) refreshAt(l *credLife) time.Time {
	life := l.validUntil.Sub(l.got)
	if life <= 0 {
		return l.got
	}
	f := p.Fraction - rand.Float64()*p.Jitter
	return l.got.Add(time.Duration(float64(life) * f))
}

// backoff returns the wait after n failed refreshes in a row, cut to half
// of what is left of l's life while it lasts.
func (p *RefreshPolicy) backoff(n int, l *credLife) time.Duration {
	d := p.MaxBackoff
	if n < 32 {
		if b := p.MinBackoff << (n - 1); b > 0 && b < d {
			d = b
		}
	}
	d = time.Duration(rand.Int64N(int64(d) + 1))
	if left := time.Until(l.validUntil); left > 0 && d > left/2 {
		d = left / 2
	}
	return max(d, time.Millisecond)
}

// refreshLoop is the refresher: for each live connection whose
// credentials expire, it refreshes them in time, until the Client ends.
func (c *Client) refreshLoop() {
	p := c.opts.refresh
	stop := closingCtx{c.closing}
	var last time.Time // the last refresh attempt: the next waits MinBackoff at least
	for {
		s, err := c.live(stop)
		if err != nil {
			return // the Client has ended
		}
		fails := 0
		for !s.isDead.Load() {
			l := s.cred.Load()
			if l == nil || l.validUntil.IsZero() {
				break // nothing expires: wait for the next connection
			}
			wait := time.Until(p.refreshAt(l))
			if fails > 0 {
				wait = p.backoff(fails, l)
			}
			// Credentials that are due at once again and again (a
			// provider answering with an expiry already past) must not
			// spin.
			wait = max(wait, time.Until(last.Add(p.MinBackoff)))
			if !c.sleepOn(s, wait) {
				break
			}
			last = time.Now()
			if c.refreshOnce(s, fails+1) {
				fails = 0
			} else {
				fails++
			}
		}
		select {
		case <-s.dead:
		case <-c.closing:
			return
		}
	}
}

// sleepOn waits d; false if s died or the Client began closing first.
func (c *Client) sleepOn(s *session, d time.Duration) bool {
	if d <= 0 {
		return !s.isDead.Load()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.dead:
		return false
	case <-c.closing:
		return false
	}
}

// refreshOnce asks the provider for credentials and sends their secret
// to s; it reports the outcome and says whether it succeeded. attempt
// counts the attempts in a row, this one included.
func (c *Client) refreshOnce(s *session, attempt int) bool {
	d := refreshTimeout
	if c.opts.reconnect != nil {
		d = c.opts.reconnect.DialTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	stop := context.AfterFunc(closingCtx{c.closing}, cancel)
	defer stop()

	start := time.Now()
	cr, err := c.opts.provider(ctx)
	switch {
	case err != nil:
		err = fmt.Errorf("warren: credential refresh: %w: %w", ErrCredentialsProvider, err)
	case cr.Secret == "":
		err = fmt.Errorf("warren: credential refresh: %w: it returned an empty Secret", ErrCredentialsProvider)
	default:
		got := time.Now()
		err = s.updateSecret(ctx, cr.Secret, "warren credential refresh", func() {
			s.cred.Store(&credLife{got: got, validUntil: cr.ValidUntil})
		})
		if err != nil {
			err = fmt.Errorf("warren: credential refresh: %w", err)
		}
	}
	select {
	case <-c.closing:
		return false // Close cut it short: nothing to report
	default:
	}
	if h := c.opts.metrics.CredentialsRefreshed; h != nil {
		h(err == nil, time.Since(start))
	}
	if err != nil {
		c.emit(StateEvent{State: StateCredentialsRefreshFailed, Err: err, Attempt: attempt, Endpoint: s.endpoint})
		return false
	}
	c.emit(StateEvent{State: StateCredentialsRefreshed, ValidUntil: cr.ValidUntil, Endpoint: s.endpoint})
	return true
}
