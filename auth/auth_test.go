package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/revenprox/revenprox/config"
	"github.com/revenprox/revenprox/telemetry"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestNewRefusesNoWebhookWithoutAnonymous(t *testing.T) {
	cfg := config.Default().Auth
	cfg.WebhookURL, cfg.AllowAnonymous = "", false
	_, err := New(cfg, "n", telemetry.NewMetrics(), slogDiscard())
	if err == nil || !strings.Contains(err.Error(), "allow_anonymous") || !strings.Contains(err.Error(), "webhook_url") {
		t.Fatalf("want an error naming webhook_url and allow_anonymous, got %v", err)
	}
	cfg.WebhookURL = "ftp://x/?key=hunter2"
	_, err = New(cfg, "n", telemetry.NewMetrics(), slogDiscard())
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("want a URL error without the query, got %v", err)
	}
	cfg.WebhookURL, cfg.AllowAnonymous = "", true
	cfg.Anonymous.Subscribe = []string{"a.>.b"}
	if _, err = New(cfg, "n", telemetry.NewMetrics(), slogDiscard()); err == nil {
		t.Fatal("want an error for an invalid anonymous pattern")
	}
}

func TestAnonymousMode(t *testing.T) {
	cfg := config.Default().Auth
	cfg.AllowAnonymous = true
	cfg.Anonymous.Subscribe = []string{"public.>"}
	cfg.Anonymous.Publish = nil
	h := newHarness(t, cfg)
	if !strings.Contains(h.logs.String(), "level=WARN") {
		t.Fatal("anonymous mode without a webhook must log a WARN at start")
	}
	for _, tok := range []string{"", "some-token"} {
		d := h.mustAllow(t, tok)
		if !d.Anonymous || !d.CanSubscribe("public.news") || d.CanSubscribe("private.x") || d.CanPublish("public.news") {
			t.Fatalf("token %q: wrong anonymous decision %+v", tok, d)
		}
	}
	if !h.a.Ready() || h.a.BreakerState() != "closed" {
		t.Fatal("no webhook: ready and closed")
	}
	if got := h.requests(t, telemetry.AuthAllow); got != 2 {
		t.Fatalf("auth_requests_total{allow} = %v, want 2", got)
	}

	// With a webhook too: empty token is anonymous, a token goes to the webhook.
	wh := newTestWebhook(t)
	cfg2 := testConfig(wh.URL())
	cfg2.AllowAnonymous = true
	cfg2.Anonymous = cfg.Anonymous
	h3 := newHarness(t, cfg2)
	if d := h3.mustAllow(t, ""); !d.Anonymous {
		t.Fatal("empty token must be anonymous")
	}
	if wh.calls.Load() != 0 {
		t.Fatal("anonymous connect must not call the webhook")
	}
	if d := h3.mustAllow(t, "tok-1"); d.Anonymous || d.User != "u-42" {
		t.Fatalf("token must go to the webhook, got %+v", d)
	}
	if wh.calls.Load() != 1 {
		t.Fatalf("webhook calls = %d, want 1", wh.calls.Load())
	}
}

func TestNoCredentialsDenied(t *testing.T) {
	wh := newTestWebhook(t)
	h := newHarness(t, testConfig(wh.URL()))
	_, err := h.auth("")
	mustErr(t, err, ErrDenied)
	if wh.calls.Load() != 0 {
		t.Fatal("no token must not call the webhook")
	}
	if got := h.requests(t, telemetry.AuthDeny); got != 1 {
		t.Fatalf("auth_requests_total{deny} = %v, want 1", got)
	}
}

func TestAllowIsCachedOnRepeat(t *testing.T) {
	wh := newTestWebhook(t)
	h := newHarness(t, testConfig(wh.URL()))
	for i := 0; i < 5; i++ {
		d := h.mustAllow(t, "tok-a")
		if d.User != "u-42" || d.Anonymous || !d.CanSubscribe("chat.lobby") || !d.CanPublish("chat.lobby") || d.CanPublish("news.x") {
			t.Fatalf("wrong decision %+v", d)
		}
	}
	if got := wh.calls.Load(); got != 1 {
		t.Fatalf("webhook calls = %d, want 1 (cache hit on repeat)", got)
	}
	h.mustAllow(t, "tok-b")
	if got := wh.calls.Load(); got != 2 {
		t.Fatalf("webhook calls = %d, want 2 (another token)", got)
	}
	checks := map[string]float64{
		"hits":     value(t, h.m.AuthCacheHits),
		"misses":   value(t, h.m.AuthCacheMisses),
		"allow":    h.requests(t, telemetry.AuthAllow),
		"failures": value(t, h.m.AuthFailures),
		"webhook":  value(t, h.m.AuthWebhookDuration),
	}
	want := map[string]float64{"hits": 4, "misses": 2, "allow": 6, "failures": 0, "webhook": 2}
	for k, v := range want {
		if checks[k] != v {
			t.Errorf("%s = %v, want %v", k, checks[k], v)
		}
	}
}

func TestDenyAnswersAreCachedForNegativeTTL(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode webhookMode
	}{{"explicit", modeDenyBody}, {"401", modeDeny401}, {"403", modeDeny403}} {
		t.Run(tc.name, func(t *testing.T) {
			wh := newTestWebhook(t)
			wh.setMode(tc.mode)
			cfg := testConfig(wh.URL())
			cfg.Cache.NegativeTTL = config.Duration(150 * time.Millisecond)
			h := newHarness(t, cfg)
			_, err := h.auth("tok-denied")
			mustErr(t, err, ErrDenied)
			if tc.mode == modeDenyBody && !strings.Contains(err.Error(), "account suspended") {
				t.Fatalf("deny reason missing: %v", err)
			}
			_, err = h.auth("tok-denied")
			mustErr(t, err, ErrDenied)
			if got := wh.calls.Load(); got != 1 {
				t.Fatalf("webhook calls = %d, want 1 (deny cached)", got)
			}
			// After negative_ttl the webhook is asked again (and now allows).
			wh.setMode(modeAllow)
			eventually(t, 5*time.Second, func() bool {
				d, err := h.auth("tok-denied")
				return err == nil && d.User == "u-42"
			})
			if got := wh.calls.Load(); got != 2 {
				t.Fatalf("webhook calls = %d, want 2", got)
			}
			if value(t, h.m.AuthFailures) != 0 || h.a.BreakerState() != "closed" {
				t.Fatal("a deny is not a failure")
			}
			if h.requests(t, telemetry.AuthDeny) < 2 {
				t.Fatal("auth_requests_total{deny} not counted")
			}
		})
	}
}

func TestZeroNegativeTTLDoesNotCacheDenies(t *testing.T) {
	wh := newTestWebhook(t)
	wh.setMode(modeDeny403)
	cfg := testConfig(wh.URL())
	cfg.Cache.NegativeTTL = 0
	h := newHarness(t, cfg)
	for i := 0; i < 3; i++ {
		_, err := h.auth("tok")
		mustErr(t, err, ErrDenied)
	}
	if got := wh.calls.Load(); got != 3 {
		t.Fatalf("webhook calls = %d, want 3", got)
	}
}

func TestTTL(t *testing.T) {
	for _, tc := range []struct {
		name   string
		body   string
		maxTTL time.Duration
	}{
		{"absent ttl uses max_ttl", `{"allow":true,"user":"u"}`, 100 * time.Millisecond},
		{"zero ttl uses max_ttl", `{"allow":true,"user":"u","ttl":0}`, 100 * time.Millisecond},
		{"max_ttl caps a long ttl", `{"allow":true,"user":"u","ttl":3600}`, 100 * time.Millisecond},
		{"short ttl below max_ttl", `{"allow":true,"user":"u","ttl":0.1}`, time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wh := newTestWebhook(t)
			wh.setAllowBody(tc.body)
			cfg := testConfig(wh.URL())
			cfg.Cache.MaxTTL = config.Duration(tc.maxTTL)
			h := newHarness(t, cfg)
			start := time.Now()
			h.mustAllow(t, "tok")
			eventually(t, 5*time.Second, func() bool {
				h.mustAllow(t, "tok")
				return wh.calls.Load() == 2
			})
			if el := time.Since(start); el < 100*time.Millisecond {
				t.Fatalf("entry expired after %v, before its 100ms TTL", el)
			}
		})
	}
	// And a long TTL under a long max_ttl really is long: many lookups, one call.
	wh := newTestWebhook(t)
	h := newHarness(t, testConfig(wh.URL()))
	for i := 0; i < 50; i++ {
		h.mustAllow(t, "tok")
	}
	if wh.calls.Load() != 1 {
		t.Fatalf("webhook calls = %d, want 1", wh.calls.Load())
	}
}

func TestSingleflightOneCallFor100ConcurrentMisses(t *testing.T) {
	wh := newTestWebhook(t)
	release := wh.hold()
	defer release()
	h := newHarness(t, testConfig(wh.URL()))
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := h.auth("storm-token")
			if err == nil && d.User != "u-42" {
				err = fmt.Errorf("wrong decision %+v", d)
			}
			errs <- err
		}()
	}
	eventually(t, 5*time.Second, func() bool { return wh.calls.Load() == 1 })
	release()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := wh.calls.Load(); got != 1 {
		t.Fatalf("webhook calls = %d, want exactly 1", got)
	}
	if got := h.requests(t, telemetry.AuthAllow); got != n {
		t.Fatalf("auth_requests_total{allow} = %v, want %d", got, n)
	}
}

func TestFailuresAreUnavailableAndNeverCached(t *testing.T) {
	for _, tc := range []struct {
		name   string
		set    func(*testWebhook)
		reason string
	}{
		{"5xx", func(w *testWebhook) { w.setMode(mode5xx) }, "status 503"},
		{"429", func(w *testWebhook) { w.setMode(mode429) }, "status 429"},
		{"garbage body", func(w *testWebhook) { w.setMode(modeGarbage) }, "invalid response"},
		{"allow missing", func(w *testWebhook) { w.setAllowBody(`{"user":"u"}`) }, "invalid response"},
		{"404", func(w *testWebhook) { w.setMode(modeNotFound) }, "unexpected status 404"},
		{"hang", func(w *testWebhook) { w.setMode(modeHang) }, "timeout"},
		{"slow", func(w *testWebhook) { w.setSlow(2 * time.Second) }, "timeout"},
		{"down", func(w *testWebhook) { w.down() }, "connection error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wh := newTestWebhook(t)
			cfg := testConfig(wh.URL() + "?apikey=hunter2")
			cfg.Timeout = config.Duration(150 * time.Millisecond)
			h := newHarness(t, cfg)
			tc.set(wh)
			const token = "tok-SECRET-0123456789"
			for i := 1; i <= 2; i++ {
				_, err := h.auth(token)
				mustErr(t, err, ErrUnavailable)
				if !strings.Contains(err.Error(), tc.reason) {
					t.Fatalf("error %q does not say %q", err, tc.reason)
				}
				if strings.Contains(err.Error(), token) || strings.Contains(err.Error(), "hunter2") {
					t.Fatalf("error leaks token or URL query: %v", err)
				}
				if got := value(t, h.m.AuthFailures); got != float64(i) {
					t.Fatalf("auth_failures_total = %v, want %d (failures are not cached)", got, i)
				}
			}
			if got := h.requests(t, telemetry.AuthError); got != 2 {
				t.Fatalf("auth_requests_total{error} = %v, want 2", got)
			}
			if !strings.Contains(h.logs.String(), "Webhook verification failed: "+tc.reason) {
				t.Fatalf("missing failure log; logs:\n%s", h.logs.String())
			}
		})
	}
}

func TestSlowWebhookWithinTimeoutAllows(t *testing.T) {
	wh := newTestWebhook(t)
	wh.setSlow(50 * time.Millisecond)
	h := newHarness(t, testConfig(wh.URL()))
	h.mustAllow(t, "tok")
}

func TestBreakerOpenHalfOpenClosed(t *testing.T) {
	wh := newTestWebhook(t)
	cfg := testConfig(wh.URL())
	cfg.Breaker.FailureThreshold = 3
	cfg.Breaker.OpenTimeout = config.Duration(150 * time.Millisecond)
	cfg.Breaker.HalfOpenProbes = 1
	h := newHarness(t, cfg)
	gauge := func() float64 { return value(t, h.m.CircuitBreakerState) }
	if gauge() != 0 || h.a.BreakerState() != "closed" {
		t.Fatal("breaker starts closed")
	}

	wh.setMode(mode5xx)
	for i := 0; i < 3; i++ {
		_, err := h.auth(fmt.Sprintf("tok-%d", i))
		mustErr(t, err, ErrUnavailable)
	}
	if h.a.BreakerState() != "open" || gauge() != 1 {
		t.Fatalf("after 3 failures: state %s gauge %v, want open 1", h.a.BreakerState(), gauge())
	}
	// Open: no webhook call, fail closed.
	calls := wh.calls.Load()
	_, err := h.auth("tok-new")
	mustErr(t, err, ErrUnavailable)
	if !strings.Contains(err.Error(), "circuit breaker open") || wh.calls.Load() != calls {
		t.Fatalf("open breaker must refuse without calling: %v (calls %d→%d)", err, calls, wh.calls.Load())
	}

	// After open_timeout the gauge moves to half-open by itself (no caller needed).
	eventually(t, 5*time.Second, func() bool { return gauge() == 2 })
	if h.a.BreakerState() != "half-open" {
		t.Fatalf("state %s, want half-open", h.a.BreakerState())
	}
	// A failed probe reopens it.
	_, err = h.auth("tok-probe-1")
	mustErr(t, err, ErrUnavailable)
	if h.a.BreakerState() != "open" || gauge() != 1 {
		t.Fatalf("failed probe: state %s gauge %v, want open 1", h.a.BreakerState(), gauge())
	}
	// Webhook healthy again: half-open, a successful probe closes it.
	wh.setMode(modeAllow)
	eventually(t, 5*time.Second, func() bool { return gauge() == 2 })
	h.mustAllow(t, "tok-probe-2")
	if h.a.BreakerState() != "closed" || gauge() != 0 {
		t.Fatalf("after success: state %s gauge %v, want closed 0", h.a.BreakerState(), gauge())
	}
	logs := h.logs.String()
	for _, want := range []string{
		"level=WARN msg=\"Auth webhook circuit breaker open",
		"level=WARN msg=\"Auth webhook circuit breaker half-open",
		"level=INFO msg=\"Auth webhook circuit breaker closed",
		"level=WARN msg=\"Webhook verification failed: status 503",
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("missing log %q; logs:\n%s", want, logs)
		}
	}
	// The repeated failure warning is rate-limited: 5 failures, one line.
	if n := strings.Count(logs, "Webhook verification failed"); n != 1 {
		t.Errorf("failure warning logged %d times, want 1 (rate-limited)", n)
	}
}

func TestDenyDoesNotTripBreaker(t *testing.T) {
	wh := newTestWebhook(t)
	wh.setMode(modeDeny401)
	cfg := testConfig(wh.URL())
	cfg.Breaker.FailureThreshold = 2
	h := newHarness(t, cfg)
	for i := 0; i < 5; i++ {
		_, err := h.auth(fmt.Sprintf("tok-%d", i))
		mustErr(t, err, ErrDenied)
	}
	if h.a.BreakerState() != "closed" {
		t.Fatal("denies must count as successes")
	}
}

func TestHalfOpenLetsOnlyProbesThrough(t *testing.T) {
	wh := newTestWebhook(t)
	cfg := testConfig(wh.URL())
	cfg.Breaker.FailureThreshold = 1
	cfg.Breaker.OpenTimeout = config.Duration(50 * time.Millisecond)
	h := newHarness(t, cfg)
	wh.setMode(mode5xx)
	_, err := h.auth("tok-fail")
	mustErr(t, err, ErrUnavailable)
	eventually(t, 5*time.Second, func() bool { return h.a.BreakerState() == "half-open" })

	wh.setMode(modeAllow)
	release := wh.hold()
	defer release()
	probe := make(chan error, 1)
	go func() { _, err := h.auth("tok-probe"); probe <- err }()
	eventually(t, 5*time.Second, func() bool { return wh.calls.Load() == 2 })
	// The probe is in flight: another unknown token is refused without a call.
	_, err = h.auth("tok-other")
	mustErr(t, err, ErrUnavailable)
	if wh.calls.Load() != 2 {
		t.Fatal("half-open must let only half_open_probes calls through")
	}
	release()
	if err := <-probe; err != nil {
		t.Fatalf("probe: %v", err)
	}
	if h.a.BreakerState() != "closed" {
		t.Fatalf("state %s, want closed", h.a.BreakerState())
	}
}

func TestStaleDecisionsServedDuringOutageUntilStaleGrace(t *testing.T) {
	wh := newTestWebhook(t)
	cfg := testConfig(wh.URL())
	cfg.Cache.MaxTTL = config.Duration(50 * time.Millisecond)
	cfg.Cache.StaleGrace = config.Duration(400 * time.Millisecond)
	cfg.Breaker.FailureThreshold = 2
	cfg.Breaker.OpenTimeout = config.Duration(time.Hour)
	h := newHarness(t, cfg)
	h.mustAllow(t, "known")
	cachedAt := time.Now()

	wh.down() // connection refused from now on
	// Once the entry is past max_ttl, lookups try the webhook, fail, and get the stale decision.
	eventually(t, 5*time.Second, func() bool {
		d, err := h.auth("known")
		if err != nil {
			t.Fatalf("known token refused during outage: %v", err)
		}
		return d.User == "u-42" && value(t, h.m.AuthFailures) >= 2
	})
	if h.a.BreakerState() != "open" {
		t.Fatalf("breaker %s, want open", h.a.BreakerState())
	}
	if !h.a.Ready() {
		t.Fatal("open breaker with servable cache must stay ready")
	}
	// Unknown tokens fail closed.
	_, err := h.auth("unknown")
	mustErr(t, err, ErrUnavailable)
	// Served stale while open, until stale_grace past expiry; then refused.
	eventually(t, 5*time.Second, func() bool {
		_, err := h.auth("known")
		if err != nil {
			mustErr(t, err, ErrUnavailable)
			return true
		}
		return false
	})
	if el := time.Since(cachedAt); el < 450*time.Millisecond {
		t.Fatalf("stale decision refused after %v, before max_ttl+stale_grace", el)
	}
	if h.a.Ready() {
		t.Fatal("open breaker with nothing servable must not be ready")
	}
}

func TestWebhookDownThenBack(t *testing.T) {
	wh := newTestWebhook(t)
	cfg := testConfig(wh.URL())
	cfg.Breaker.FailureThreshold = 2
	cfg.Breaker.OpenTimeout = config.Duration(100 * time.Millisecond)
	h := newHarness(t, cfg)
	h.mustAllow(t, "before")
	wh.down()
	for i := 0; i < 2; i++ {
		_, err := h.auth(fmt.Sprintf("during-%d", i))
		mustErr(t, err, ErrUnavailable)
	}
	if h.a.BreakerState() != "open" {
		t.Fatal("want open after the webhook went down")
	}
	h.mustAllow(t, "before") // fresh cache entry still served
	wh.up()
	eventually(t, 5*time.Second, func() bool {
		_, err := h.auth("after")
		return err == nil
	})
	if h.a.BreakerState() != "closed" {
		t.Fatalf("state %s, want closed after recovery", h.a.BreakerState())
	}
}

func TestSignatureVerifiedByWebhook(t *testing.T) {
	wh := newTestWebhook(t)
	wh.secret = []byte("s3cret")
	cfg := testConfig(wh.URL())
	cfg.WebhookSecret = "s3cret"
	h := newHarness(t, cfg)
	h.mustAllow(t, "tok")
	_, hdr := wh.last()
	if !strings.HasPrefix(hdr.Get(SignatureHeader), "sha256=") || len(hdr.Get(SignatureHeader)) != len("sha256=")+64 {
		t.Fatalf("bad signature header %q", hdr.Get(SignatureHeader))
	}
	if wh.badSigs.Load() != 0 {
		t.Fatal("webhook rejected a correct signature")
	}

	cfg.WebhookSecret = "wrong"
	h2 := newHarness(t, cfg)
	_, err := h2.auth("tok")
	mustErr(t, err, ErrDenied)
	if wh.badSigs.Load() != 1 {
		t.Fatal("webhook must have rejected the wrong signature")
	}

	cfg.WebhookSecret = ""
	h3 := newHarness(t, cfg)
	_, _ = h3.auth("tok2")
	if _, hdr := wh.last(); hdr.Get(SignatureHeader) != "" {
		t.Fatal("no secret: no signature header")
	}
}

func TestRequestBodyAndForwardedHeaders(t *testing.T) {
	wh := newTestWebhook(t)
	cfg := testConfig(wh.URL())
	cfg.Headers = []string{"origin", "X-Tenant"}
	h := newHarness(t, cfg)
	hdr := http.Header{}
	hdr.Set("Origin", "https://app.example")
	hdr.Add("X-Tenant", "t1")
	hdr.Add("X-Tenant", "t2")
	hdr.Set("User-Agent", "not-forwarded")
	hdr.Set("Cookie", "session=zzz")
	hdr.Set("Authorization", "Bearer tok-xyz")
	_, err := h.a.Authenticate(context.Background(), Request{Token: "tok-xyz", RemoteAddr: "10.1.2.3:5555", Headers: hdr})
	if err != nil {
		t.Fatal(err)
	}
	body, reqHdr := wh.last()
	if body.Token != "tok-xyz" || body.RemoteAddr != "10.1.2.3:5555" || body.Node != "proxy-test" {
		t.Fatalf("body %+v", body)
	}
	want := map[string]string{"Origin": "https://app.example", "X-Tenant": "t1, t2"}
	if fmt.Sprint(body.Headers) != fmt.Sprint(want) {
		t.Fatalf("forwarded headers %v, want %v", body.Headers, want)
	}
	if reqHdr.Get("Content-Type") != "application/json" {
		t.Fatalf("content type %q", reqHdr.Get("Content-Type"))
	}
}

func TestFailClosedForUnknownTokens(t *testing.T) {
	wh := newTestWebhook(t)
	wh.setMode(modeHang)
	cfg := testConfig(wh.URL())
	cfg.Timeout = config.Duration(50 * time.Millisecond)
	cfg.Breaker.FailureThreshold = 1
	h := newHarness(t, cfg)
	_, err := h.auth("a")
	mustErr(t, err, ErrUnavailable)
	for i := 0; i < 20; i++ {
		d, err := h.auth(fmt.Sprintf("unknown-%d", i))
		if d != nil {
			t.Fatal("fail open: a decision was returned for an unknown token")
		}
		mustErr(t, err, ErrUnavailable)
	}
	if h.a.Ready() {
		t.Fatal("open breaker with an empty cache must not be ready")
	}
}

func TestCallerCancelDoesNotAbortSharedCall(t *testing.T) {
	wh := newTestWebhook(t)
	release := wh.hold()
	defer release()
	h := newHarness(t, testConfig(wh.URL()))
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		_, err := h.a.Authenticate(ctx, Request{Token: "shared"})
		first <- err
	}()
	eventually(t, 5*time.Second, func() bool { return wh.calls.Load() == 1 })
	second := make(chan error, 1)
	go func() { _, err := h.auth("shared"); second <- err }()
	cancel()
	err := <-first
	mustErr(t, err, ErrUnavailable)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled in %v", err)
	}
	release()
	if err := <-second; err != nil {
		t.Fatalf("second caller: %v", err)
	}
	if wh.calls.Load() != 1 {
		t.Fatal("want one call")
	}
}

func TestCloseAbortsInFlightAndIsIdempotent(t *testing.T) {
	wh := newTestWebhook(t)
	wh.setMode(modeHang)
	cfg := testConfig(wh.URL())
	cfg.Timeout = config.Duration(time.Minute)
	cfg.Breaker.FailureThreshold = 1
	h := newHarness(t, cfg)
	done := make(chan error, 1)
	go func() { _, err := h.auth("tok"); done <- err }()
	eventually(t, 5*time.Second, func() bool { return wh.calls.Load() == 1 })
	h.a.Close()
	h.a.Close()
	err := <-done
	mustErr(t, err, ErrUnavailable)
	if h.a.BreakerState() != "closed" {
		t.Fatal("a call aborted by Close must not count as a failure")
	}
	_, err = h.auth("tok")
	mustErr(t, err, ErrUnavailable)
}

func TestConnectStorm2000Tokens(t *testing.T) {
	wh := newTestWebhook(t)
	cfg := testConfig(wh.URL())
	cfg.Timeout = config.Duration(10 * time.Second) // a loaded, shared machine; this test is about call counts
	h := newHarness(t, cfg)
	connects, tokens, workers := 20000, 2000, 64 // the target
	if raceEnabled {
		connects, tokens = 5000, 500 // same ratio, a quarter of the work
	}
	var wg sync.WaitGroup
	next := make(chan int, connects)
	for i := 0; i < connects; i++ {
		next <- i
	}
	close(next)
	var mu sync.Mutex
	var firstErr error
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if _, err := h.auth("storm-" + strconv.Itoa(i%tokens)); err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	if got := wh.calls.Load(); got > int64(tokens) {
		t.Fatalf("webhook calls = %d, want at most %d", got, tokens)
	}
	t.Logf("%d authentications of %d tokens in %v, %d webhook calls", connects, tokens, time.Since(start), wh.calls.Load())
}

func TestInvalidPatternsFromWebhookAreDropped(t *testing.T) {
	wh := newTestWebhook(t)
	wh.setAllowBody(`{"allow":true,"user":"u","subscribe":["chat.>","bad..x",">.x"],"publish":["*"]}`)
	h := newHarness(t, testConfig(wh.URL()))
	d := h.mustAllow(t, "tok")
	if len(d.Subscribe) != 1 || d.Subscribe[0] != "chat.>" || !d.CanPublish("x") || d.CanPublish("x.y") {
		t.Fatalf("decision %+v", d)
	}
	if !strings.Contains(h.logs.String(), "invalid topic patterns") {
		t.Fatal("dropped patterns must be logged")
	}
}

func TestNoTokenInLogsOrErrors(t *testing.T) {
	const secretTok = "tok-NEVER-LOG-ME-5f3a9c"
	wh := newTestWebhook(t)
	wh.secret = []byte("k")
	cfg := testConfig(wh.URL() + "?apikey=hunter2")
	cfg.WebhookSecret = "k"
	cfg.Timeout = config.Duration(50 * time.Millisecond)
	cfg.Breaker.FailureThreshold = 10 // opens on the last failure below
	cfg.Breaker.OpenTimeout = config.Duration(50 * time.Millisecond)
	cfg.Cache.NegativeTTL = 0
	cfg.Cache.MaxTTL = config.Duration(10 * time.Millisecond)
	h := newHarness(t, cfg)
	h.a.failLog.every = 0 // log every failure for this test
	var errs []string
	n := 0
	try := func() {
		n++ // a new token each time, so no answer comes from the cache
		_, err := h.auth(fmt.Sprintf("%s-%d", secretTok, n))
		if err != nil {
			errs = append(errs, err.Error())
		}
	}
	try()
	wh.setAllowBody(`{"allow":true,"user":"u","subscribe":["` + secretTok + `..x"]}`)
	try()
	for _, m := range []webhookMode{modeDenyBody, modeDeny401, mode5xx, mode429, modeGarbage, modeHang, modeHang, modeDenyBody} {
		wh.setMode(m)
		try()
		try()
	}
	wh.setMode(modeAllow)
	eventually(t, 5*time.Second, func() bool { try(); return h.a.BreakerState() == "closed" })
	wh.down()
	for i := 0; i < 5; i++ {
		try()
	}
	if len(errs) < 10 {
		t.Fatalf("only %d errors; scenario did not run", len(errs))
	}
	logs := h.logs.String()
	for _, want := range []string{"Webhook verification failed: timeout", "circuit breaker open", "status 503", "invalid topic patterns", "connection error"} {
		if !strings.Contains(logs, want) {
			t.Errorf("scenario did not run: no %q in logs", want)
		}
	}
	for _, leak := range []string{"NEVER-LOG-ME", "hunter2"} {
		if strings.Contains(logs, leak) {
			t.Fatalf("log output contains %q:\n%s", leak, logs)
		}
		for _, e := range errs {
			if strings.Contains(e, leak) {
				t.Fatalf("error contains %q: %s", leak, e)
			}
		}
	}
}

func TestDenyReasonIsSanitised(t *testing.T) {
	got := denyReason("bad token abc123\nreally", "abc123")
	if strings.Contains(got, "abc123") || strings.Contains(got, "\n") {
		t.Fatalf("reason %q", got)
	}
	if len(denyReason(strings.Repeat("x", 1000), "")) != maxReasonBytes {
		t.Fatal("reason not bounded")
	}
}
