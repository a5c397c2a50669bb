package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/singleflight"

	"github.com/revenprox/revenprox/config"
	"github.com/revenprox/revenprox/telemetry"
	"github.com/revenprox/revenprox/topics"
)

// Sentinel errors. Authenticate's errors wrap exactly one of them, followed by a reason.
var (
	// ErrDenied: the webhook said no (explicit deny, 401, 403), or there are no credentials and
	// anonymous mode is off. The proxy closes with 4001 (do not retry with the same token).
	ErrDenied = errors.New("auth: denied")
	// ErrUnavailable: the webhook failed or the breaker is open and no usable cached decision
	// exists. The proxy closes with 1013 (try again later).
	ErrUnavailable = errors.New("auth: unavailable")
)

// failureLogEvery rate-limits the repeated "Webhook verification failed" warning.
const failureLogEvery = 5 * time.Second

// maxReasonBytes bounds a deny reason taken from the webhook.
const maxReasonBytes = 200

// Request is what the proxy knows about one connection attempt.
type Request struct {
	Token      string      // from TokenFromRequest; may be ""
	RemoteAddr string      // "ip:port"
	Headers    http.Header // the upgrade request's headers; only cfg.Headers names are forwarded
}

// Authenticator answers "may this connection open, and what may it do". See the package doc.
type Authenticator struct {
	cfg       config.AuthConfig
	metrics   *telemetry.Metrics
	log       *slog.Logger
	anonymous *Decision
	webhook   *webhookClient // nil: anonymous mode only
	cache     *decisionCache
	breaker   *gobreaker.CircuitBreaker[webhookAnswer]
	flights   singleflight.Group

	// base is cancelled by Close to abort webhook calls in flight.
	base       context.Context
	cancelBase context.CancelFunc
	closed     atomic.Bool
	closeOnce  sync.Once

	mu            sync.Mutex  // guards halfOpenTimer
	halfOpenTimer *time.Timer // makes open → half-open visible in the gauge without a caller

	failLog rateLimitedLog

	// auth_requests_total children, resolved once (no label lookup per connect).
	allowed, denied, errored prometheus.Counter
}

// New builds an Authenticator. It fails when neither a webhook nor anonymous mode is
// configured (every connection would be refused), or when the configuration is unusable.
// node is sent to the webhook; m and log must not be nil.
func New(cfg config.AuthConfig, node string, m *telemetry.Metrics, log *slog.Logger) (*Authenticator, error) {
	if m == nil || log == nil {
		return nil, errors.New("auth: metrics and logger are required")
	}
	if cfg.WebhookURL == "" && !cfg.AllowAnonymous {
		return nil, errors.New("auth: no webhook configured (auth.webhook_url) and auth.allow_anonymous is false: every connection would be refused")
	}
	for _, list := range [][]string{cfg.Anonymous.Subscribe, cfg.Anonymous.Publish} {
		for _, p := range list {
			if err := topics.ValidatePattern(p); err != nil {
				return nil, fmt.Errorf("auth: auth.anonymous pattern %q: %w", p, err)
			}
		}
	}
	a := &Authenticator{
		cfg:     cfg,
		metrics: m,
		log:     log,
		anonymous: &Decision{
			User:      "anonymous",
			Anonymous: true,
			Subscribe: append([]string(nil), cfg.Anonymous.Subscribe...),
			Publish:   append([]string(nil), cfg.Anonymous.Publish...),
		},
		failLog: rateLimitedLog{every: failureLogEvery},
		allowed: m.AuthRequests.WithLabelValues(telemetry.AuthAllow),
		denied:  m.AuthRequests.WithLabelValues(telemetry.AuthDeny),
		errored: m.AuthRequests.WithLabelValues(telemetry.AuthError),
	}
	a.base, a.cancelBase = context.WithCancel(context.Background())
	m.CircuitBreakerState.Set(0)
	if cfg.WebhookURL == "" {
		log.Warn("Authentication webhook not configured: every connection is accepted as anonymous (auth.allow_anonymous is true)")
		return a, nil
	}
	switch {
	case cfg.Timeout.D() <= 0:
		return nil, errors.New("auth: auth.timeout must be positive")
	case cfg.Cache.Size < 1:
		return nil, errors.New("auth: auth.cache.size must be at least 1")
	case cfg.Cache.MaxTTL.D() <= 0:
		return nil, errors.New("auth: auth.cache.max_ttl must be positive")
	case cfg.Breaker.FailureThreshold < 1:
		return nil, errors.New("auth: auth.breaker.failure_threshold must be at least 1")
	case cfg.Breaker.HalfOpenProbes < 1:
		return nil, errors.New("auth: auth.breaker.half_open_probes must be at least 1")
	case cfg.Breaker.OpenTimeout.D() <= 0:
		return nil, errors.New("auth: auth.breaker.open_timeout must be positive")
	}
	wh, err := newWebhookClient(cfg.WebhookURL, cfg.WebhookSecret, cfg.Timeout.D(), cfg.Headers, node)
	if err != nil {
		return nil, err
	}
	cache, err := newDecisionCache(cfg.Cache.Size)
	if err != nil {
		return nil, fmt.Errorf("auth: decision cache: %w", err)
	}
	a.webhook, a.cache = wh, cache
	threshold := uint32(cfg.Breaker.FailureThreshold)
	a.breaker = gobreaker.NewCircuitBreaker[webhookAnswer](gobreaker.Settings{
		Name:        "auth-webhook",
		MaxRequests: uint32(cfg.Breaker.HalfOpenProbes),
		Timeout:     cfg.Breaker.OpenTimeout.D(),
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= threshold },
		// A deny is an answer, so it is a success; only *webhookFailure counts against the
		// webhook. Calls aborted by Close say nothing about the webhook.
		IsExcluded:    func(err error) bool { return errors.Is(err, errClosed) },
		OnStateChange: a.onBreakerChange,
	})
	if cfg.AllowAnonymous {
		log.Warn("Anonymous connections allowed (auth.allow_anonymous is true): clients without a token skip the webhook")
	}
	return a, nil
}

// Authenticate decides for one connection attempt. The error wraps ErrDenied or ErrUnavailable
// followed by a reason; it never contains the token. ctx bounds only this caller's wait: the
// shared webhook call runs to its own auth.timeout so other callers of the same token are not
// cut short.
func (a *Authenticator) Authenticate(ctx context.Context, req Request) (*Decision, error) {
	d, source, err := a.authenticate(ctx, req)
	switch {
	case err == nil:
		a.allowed.Inc()
	case errors.Is(err, ErrDenied):
		a.denied.Inc()
	default:
		a.errored.Inc()
	}
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		result := "allow"
		if err != nil {
			result = err.Error()
		}
		span.SetAttributes(attribute.String("auth.source", source), attribute.String("auth.result", result))
	}
	return d, err
}

// Decision sources, for traces.
const (
	sourceAnonymous = "anonymous"
	sourceCache     = "cache"
	sourceWebhook   = "webhook"
	sourceStale     = "stale-cache"
	sourceNone      = "none"
)

func (a *Authenticator) authenticate(ctx context.Context, req Request) (*Decision, string, error) {
	if a.closed.Load() {
		return nil, sourceNone, fmt.Errorf("%w: authenticator closed", ErrUnavailable)
	}
	if req.Token == "" || a.webhook == nil {
		if a.cfg.AllowAnonymous {
			return a.anonymous, sourceAnonymous, nil
		}
		return nil, sourceNone, fmt.Errorf("%w: no credentials", ErrDenied)
	}

	key := keyOf(req.Token)
	entry, fresh := a.cache.get(key, time.Now())
	if fresh {
		a.metrics.AuthCacheHits.Inc()
		d, err := a.entryResult(entry)
		return d, sourceCache, err
	}
	a.metrics.AuthCacheMisses.Inc()
	return a.authenticateMiss(ctx, key, req, entry)
}

// authenticateMiss asks the webhook (once per token at a time) and falls back to stale, an
// allow entry past its TTL but within stale_grace, when the call fails. It is split from
// authenticate so the closure below does not move the cache-hit path's variables to the heap.
func (a *Authenticator) authenticateMiss(ctx context.Context, key tokenKey, req Request, stale *cacheEntry) (*Decision, string, error) {
	ch := a.flights.DoChan(string(key[:]), func() (any, error) {
		return a.resolve(ctx, key, req)
	})
	var res singleflight.Result
	select {
	case res = <-ch:
	case <-ctx.Done():
		return nil, sourceNone, fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())
	}
	if res.Err == nil {
		d, err := a.entryResult(res.Val.(*cacheEntry))
		return d, sourceWebhook, err
	}
	// The webhook failed or the breaker refused the call: serve a stale allow if we have one.
	if stale != nil && !stale.denied() && time.Now().Before(stale.staleUntil) {
		return stale.decision, sourceStale, nil
	}
	if errors.Is(res.Err, errClosed) {
		return nil, sourceNone, fmt.Errorf("%w: authenticator closed", ErrUnavailable)
	}
	return nil, sourceNone, fmt.Errorf("%w: webhook %w", ErrUnavailable, res.Err)
}

// entryResult turns a cached entry into Authenticate's result.
func (a *Authenticator) entryResult(e *cacheEntry) (*Decision, error) {
	if e.denied() {
		return nil, fmt.Errorf("%w: %s", ErrDenied, e.reason)
	}
	return e.decision, nil
}

// resolve runs once per token at a time (singleflight): it asks the webhook through the
// breaker and caches the answer. Its ctx is the first caller's, detached from that caller's
// cancellation (its trace context stays) and bound to Close instead.
func (a *Authenticator) resolve(callerCtx context.Context, key tokenKey, req Request) (*cacheEntry, error) {
	// Another flight for this token may have finished between our cache miss and this flight:
	// look again so concurrent misses make exactly one call.
	if e, fresh := a.cache.get(key, time.Now()); fresh {
		return e, nil
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(callerCtx))
	defer cancel()
	stop := context.AfterFunc(a.base, cancel)
	defer stop()

	ans, err := a.breaker.Execute(func() (webhookAnswer, error) {
		return a.webhook.call(ctx, req, a.observeCall)
	})
	if err != nil {
		if errors.Is(err, errClosed) {
			return nil, err
		}
		if errors.Is(err, gobreaker.ErrOpenState) {
			err = failure("circuit breaker open")
		} else if errors.Is(err, gobreaker.ErrTooManyRequests) {
			err = failure("circuit breaker half-open, probe in progress")
		}
		a.metrics.AuthFailures.Inc()
		a.logFailure(err)
		return nil, err
	}
	now := time.Now()
	e := a.entryFor(ans, req.Token, now)
	a.cache.put(key, e, now)
	if len(ans.Dropped) > 0 {
		a.log.Warn("Webhook answer contained invalid topic patterns; they were ignored",
			"user", ans.User, "dropped", len(ans.Dropped))
	}
	return e, nil
}

// entryFor builds the cache entry of a webhook answer with its expiry.
func (a *Authenticator) entryFor(ans webhookAnswer, token string, now time.Time) *cacheEntry {
	if !ans.Allow {
		exp := now.Add(a.cfg.Cache.NegativeTTL.D())
		return &cacheEntry{reason: denyReason(ans.Reason, token), expires: exp, staleUntil: exp}
	}
	ttl := a.cfg.Cache.MaxTTL.D()
	if ans.TTL > 0 && ans.TTL < ttl {
		ttl = ans.TTL
	}
	exp := now.Add(ttl)
	return &cacheEntry{
		decision: &Decision{User: ans.User, Subscribe: ans.Subscribe, Publish: ans.Publish},
		expires:  exp,
		// stale_grace and max_ttl are bounded by config, so this cannot overflow in practice.
		staleUntil: exp.Add(a.cfg.Cache.StaleGrace.D()),
	}
}

// denyReason makes the webhook's reason safe to put in an error: bounded, printable, and
// without the token should the webhook echo it.
func denyReason(reason, token string) string {
	if reason == "" {
		return "denied by webhook"
	}
	if token != "" {
		reason = strings.ReplaceAll(reason, token, "[token]")
	}
	if len(reason) > maxReasonBytes {
		reason = reason[:maxReasonBytes]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(reason, "?"))
}

func (a *Authenticator) observeCall(d time.Duration) {
	a.metrics.AuthWebhookDuration.Observe(d.Seconds())
}

func (a *Authenticator) logFailure(err error) {
	ok, suppressed := a.failLog.allow(time.Now())
	if !ok {
		return
	}
	args := []any{"breaker", a.BreakerState()}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	a.log.Warn("Webhook verification failed: "+err.Error(), args...)
}

// onBreakerChange runs under the breaker's lock: it must not call the breaker.
func (a *Authenticator) onBreakerChange(_ string, from, to gobreaker.State) {
	a.metrics.CircuitBreakerState.Set(gaugeValue(to))
	switch to {
	case gobreaker.StateOpen:
		a.log.Warn("Auth webhook circuit breaker open: refusing webhook calls, serving cached decisions only",
			"from", from.String(), "failure_threshold", a.cfg.Breaker.FailureThreshold,
			"open_timeout", a.cfg.Breaker.OpenTimeout.D().String())
		a.scheduleHalfOpen()
	case gobreaker.StateHalfOpen:
		a.log.Warn("Auth webhook circuit breaker half-open: probing the webhook",
			"probes", a.cfg.Breaker.HalfOpenProbes)
	case gobreaker.StateClosed:
		a.log.Info("Auth webhook circuit breaker closed: webhook healthy again", "from", from.String())
	}
}

// scheduleHalfOpen makes gobreaker (which changes state lazily, on the next call) move to
// half-open on time, so the gauge and /ready follow even when no client connects.
func (a *Authenticator) scheduleHalfOpen() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed.Load() {
		return
	}
	if a.halfOpenTimer != nil {
		a.halfOpenTimer.Stop()
	}
	a.halfOpenTimer = time.AfterFunc(a.cfg.Breaker.OpenTimeout.D()+time.Millisecond, func() {
		if !a.closed.Load() {
			a.breaker.State()
		}
	})
}

// gaugeValue maps breaker states onto circuit_breaker_state (0 closed, 1 open, 2 half-open);
// gobreaker's own numbering differs.
func gaugeValue(s gobreaker.State) float64 {
	switch s {
	case gobreaker.StateOpen:
		return 1
	case gobreaker.StateHalfOpen:
		return 2
	default:
		return 0
	}
}

// Ready reports whether authentication can currently admit anyone, for /ready: true with no
// webhook, or while the breaker is closed or half-open. While it is open, Ready stays true as
// long as some cached allow decision may still be served (within stale_grace): the node can
// still admit its known clients, and taking every node out of rotation during a webhook outage
// would drop them too. Unknown tokens are refused (1013) either way.
func (a *Authenticator) Ready() bool {
	if a.webhook == nil {
		return true
	}
	if a.breaker.State() != gobreaker.StateOpen {
		return true
	}
	return a.cache.mayServe(time.Now())
}

// BreakerState returns "closed", "open" or "half-open" ("closed" with no webhook).
func (a *Authenticator) BreakerState() string {
	if a.breaker == nil {
		return gobreaker.StateClosed.String()
	}
	return a.breaker.State().String()
}

// Close aborts webhook calls in flight, stops the half-open timer and closes idle keep-alive
// connections. Later Authenticate calls return ErrUnavailable. Safe to call more than once.
func (a *Authenticator) Close() {
	a.closeOnce.Do(func() {
		a.closed.Store(true)
		a.cancelBase()
		a.mu.Lock()
		if a.halfOpenTimer != nil {
			a.halfOpenTimer.Stop()
		}
		a.mu.Unlock()
		if a.webhook != nil {
			a.webhook.close()
		}
	})
}

// rateLimitedLog lets one message through per interval and counts the rest.
type rateLimitedLog struct {
	every      time.Duration
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (r *rateLimitedLog) allow(now time.Time) (ok bool, suppressed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.last.IsZero() && now.Sub(r.last) < r.every {
		r.suppressed++
		return false, 0
	}
	r.last = now
	suppressed, r.suppressed = r.suppressed, 0
	return true, suppressed
}
