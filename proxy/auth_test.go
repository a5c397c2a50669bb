package proxy

// End-to-end authentication through a real node: a real HTTP webhook (httptest) that tests
// switch at runtime between allow, deny, 401, 403, 5xx, slow, hang and down/up, and real
// WebSocket clients. Every test also checks that no token reached a log line or /metrics.

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/revenprox/revenprox/auth"
	"github.com/revenprox/revenprox/config"
	"github.com/revenprox/revenprox/telemetry"
)

// webhookMode is how the test webhook answers.
type webhookMode int

const (
	hookAllow     webhookMode = iota // 200 with the token's allow answer
	hookDenyBody                     // 200 {"allow":false}
	hookStatus401                    // 401
	hookStatus403                    // 403
	hookStatus503                    // 503
	hookHang                         // never answers (until the caller gives up or the server goes down)
)

// hookAnswer is the allow body the webhook sends (design §5).
type hookAnswer struct {
	User      string   `json:"user"`
	TTL       float64  `json:"ttl,omitempty"`
	Subscribe []string `json:"subscribe,omitempty"`
	Publish   []string `json:"publish,omitempty"`
}

// hookCall is one request as the webhook saw it.
type hookCall struct {
	Token       string            `json:"token"`
	RemoteAddr  string            `json:"remote_addr"`
	Headers     map[string]string `json:"headers"`
	Node        string            `json:"node"`
	SignatureOK bool              `json:"-"`
}

// authWebhook is the customer's webhook: a real HTTP server on a fixed loopback port, so it can
// go down (listener closed, connections cut) and come back on the same address.
type authWebhook struct {
	t      testing.TB
	secret string
	addr   string

	mu       sync.Mutex
	srv      *httptest.Server
	quit     chan struct{} // closed by down: releases hanging handlers of that server
	mode     webhookMode
	delay    time.Duration         // added before an allow answer ("slow")
	answers  map[string]hookAnswer // per token; others get fallback
	fallback hookAnswer
	seen     []hookCall
	perToken map[string]int

	calls atomic.Int64
}

func startWebhook(t testing.TB) *authWebhook {
	t.Helper()
	w := &authWebhook{
		t:        t,
		secret:   "whsec-" + randomHex(8),
		answers:  map[string]hookAnswer{},
		fallback: hookAnswer{User: "u-default", TTL: 60, Subscribe: []string{"chat.>"}, Publish: []string{"chat.>"}},
		perToken: map[string]int{},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w.addr = ln.Addr().String()
	w.serveOn(ln)
	t.Cleanup(w.down)
	return w
}

func (w *authWebhook) URL() string { return "http://" + w.addr + "/verify" }

func (w *authWebhook) serveOn(ln net.Listener) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(w.serve))
	_ = srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	w.mu.Lock()
	w.srv, w.quit = srv, make(chan struct{})
	w.mu.Unlock()
}

// down closes the listener and every connection: calls now fail with connection refused.
// Safe to call when already down.
func (w *authWebhook) down() {
	w.mu.Lock()
	srv, quit := w.srv, w.quit
	w.srv, w.quit = nil, nil
	w.mu.Unlock()
	if srv == nil {
		return
	}
	close(quit)
	srv.CloseClientConnections()
	srv.Close()
}

// up listens again on the same address.
func (w *authWebhook) up() {
	w.t.Helper()
	var ln net.Listener
	deadline := time.Now().Add(5 * time.Second)
	for {
		var err error
		if ln, err = net.Listen("tcp", w.addr); err == nil {
			break
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("webhook cannot listen again on %s: %v", w.addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	w.serveOn(ln)
}

func (w *authWebhook) setMode(m webhookMode) {
	w.mu.Lock()
	w.mode = m
	w.mu.Unlock()
}

func (w *authWebhook) setDelay(d time.Duration) {
	w.mu.Lock()
	w.delay = d
	w.mu.Unlock()
}

func (w *authWebhook) setAnswer(token string, a hookAnswer) {
	w.mu.Lock()
	w.answers[token] = a
	w.mu.Unlock()
}

func (w *authWebhook) callsFor(token string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.perToken[token]
}

func (w *authWebhook) requests() []hookCall {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.seen)
}

func (w *authWebhook) serve(rw http.ResponseWriter, r *http.Request) {
	w.calls.Add(1)
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	var call hookCall
	if err := json.Unmarshal(body, &call); err != nil {
		http.Error(rw, "bad body", http.StatusBadRequest)
		return
	}
	// Verify the signature as the customer's webhook would: HMAC-SHA256 of the raw body.
	mac := hmac.New(sha256.New, []byte(w.secret))
	mac.Write(body)
	want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
	call.SignatureOK = hmac.Equal([]byte(r.Header.Get(auth.SignatureHeader)), []byte(want))

	w.mu.Lock()
	w.seen = append(w.seen, call)
	w.perToken[call.Token]++
	mode, delay, quit := w.mode, w.delay, w.quit
	ans, ok := w.answers[call.Token]
	if !ok {
		ans = w.fallback
	}
	w.mu.Unlock()

	if !call.SignatureOK {
		http.Error(rw, "bad signature", http.StatusUnauthorized)
		return
	}
	switch mode {
	case hookDenyBody:
		writeHookJSON(rw, map[string]any{"allow": false, "reason": "account suspended"})
	case hookStatus401:
		http.Error(rw, "no", http.StatusUnauthorized)
	case hookStatus403:
		http.Error(rw, "no", http.StatusForbidden)
	case hookStatus503:
		http.Error(rw, "overloaded", http.StatusServiceUnavailable)
	case hookHang:
		select {
		case <-r.Context().Done():
		case <-quit:
		}
	default:
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-r.Context().Done():
			case <-quit:
			}
			t.Stop()
		}
		writeHookJSON(rw, map[string]any{"allow": true, "user": ans.User, "ttl": ans.TTL, "subscribe": ans.Subscribe, "publish": ans.Publish})
	}
}

func writeHookJSON(rw http.ResponseWriter, v any) {
	rw.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(rw).Encode(v)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// authEnv is a node authenticating against a test webhook, plus the tokens the test used.
type authEnv struct {
	t  *testing.T
	wh *authWebhook
	n  *testNode

	mu     sync.Mutex
	tokens []string
}

// Breaker and timeout settings shared by the tests (short so outages resolve quickly).
const (
	testAuthTimeout      = 300 * time.Millisecond
	testFailureThreshold = 2
)

// newAuthEnv starts a webhook and a node using it (anonymous mode off). After the test it
// checks that no token appeared in /metrics (while the node runs) or in any log line
// (after the node shut down, so shutdown logs are covered too).
func newAuthEnv(t *testing.T, mutate func(c *config.Config)) *authEnv {
	t.Helper()
	e := &authEnv{t: t, wh: startWebhook(t)}
	t.Cleanup(e.checkLogs) // registered before the node: runs after its shutdown
	e.n = runNode(t, func(c *config.Config) {
		c.Auth.AllowAnonymous = false
		c.Auth.WebhookURL = e.wh.URL()
		c.Auth.WebhookSecret = e.wh.secret
		c.Auth.Timeout = config.Duration(testAuthTimeout)
		c.Auth.Breaker.FailureThreshold = testFailureThreshold
		c.Auth.Breaker.OpenTimeout = config.Duration(time.Minute)
		if mutate != nil {
			mutate(c)
		}
	})
	t.Cleanup(e.checkMetrics) // runs before the node's shutdown
	return e
}

// token returns a fresh secret-looking token and remembers it for the leak checks.
func (e *authEnv) token(name string) string {
	tok := "tok-" + name + "-" + randomHex(12)
	e.mu.Lock()
	e.tokens = append(e.tokens, tok)
	e.mu.Unlock()
	return tok
}

// secrets returns every token and its random part (a truncated token must not leak either).
func (e *authEnv) secrets() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, tok := range e.tokens {
		out = append(out, tok, tok[strings.LastIndexByte(tok, '-')+1:])
	}
	return out
}

func (e *authEnv) checkLogs() {
	logs := e.n.logs.String()
	for _, s := range e.secrets() {
		if strings.Contains(logs, s) {
			e.t.Errorf("a token (%s…) appears in the logs:\n%s", s[:8], logs)
		}
	}
}

func (e *authEnv) checkMetrics() {
	body := e.scrape()
	for _, s := range e.secrets() {
		if strings.Contains(body, s) {
			e.t.Errorf("a token (%s…) appears in /metrics", s[:8])
		}
	}
}

func (e *authEnv) scrape() string {
	resp, err := http.Get(e.n.http + "/metrics")
	if err != nil {
		e.t.Errorf("GET /metrics: %v", err)
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// breakerGauge reads revenprox_circuit_breaker_state from the registry.
func (e *authEnv) breakerGauge() float64 {
	return testutil.ToFloat64(e.n.Metrics().CircuitBreakerState)
}

func (e *authEnv) rejected(reason string) float64 {
	return metricValue(e.t, e.n, "connections_rejected_total", reason)
}

// connectOutcome dials with token (Authorization header, or ?token= when viaQuery) and reads the
// first frame. It returns the open connection after a welcome, or the close code the server
// sent. Safe to call from any goroutine.
func connectOutcome(wsURL, token string, viaQuery bool) (ws *websocket.Conn, closeCode int, err error) {
	h := http.Header{}
	h.Set("Origin", "https://app.example")
	h.Set("User-Agent", "authtest/1")
	h.Set("X-Not-Forwarded", "private")
	if viaQuery {
		wsURL += "?token=" + url.QueryEscape(token)
	} else if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	ws, resp, err := websocket.DefaultDialer.Dial(wsURL, h)
	if err != nil {
		if resp != nil {
			_ = resp.Body.Close()
			return nil, 0, fmt.Errorf("dial: %w (HTTP %d)", err, resp.StatusCode)
		}
		return nil, 0, fmt.Errorf("dial: %w", err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, msg, err := ws.ReadMessage()
	if err != nil {
		_ = ws.Close()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return nil, ce.Code, nil
		}
		return nil, 0, fmt.Errorf("first read: %w", err)
	}
	var f serverFrame
	if err := json.Unmarshal(msg, &f); err != nil || f.Op != "welcome" {
		_ = ws.Close()
		return nil, 0, fmt.Errorf("first frame %q, want welcome", msg)
	}
	_ = ws.SetReadDeadline(time.Time{})
	return ws, 0, nil
}

// welcome connects with token and fails the test unless the node welcomes it.
func (e *authEnv) welcome(t *testing.T, token string, viaQuery bool) *client {
	t.Helper()
	ws, code, err := connectOutcome(e.n.url, token, viaQuery)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	if ws == nil {
		t.Fatalf("connect: closed with %d, want welcome", code)
	}
	t.Cleanup(func() { _ = ws.Close() })
	return &client{t: t, ws: ws}
}

// refused connects with token and fails the test unless the node closes with want after the
// upgrade.
func (e *authEnv) refused(t *testing.T, token string, want CloseCode) {
	t.Helper()
	ws, code, err := connectOutcome(e.n.url, token, false)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	if ws != nil {
		_ = ws.Close()
		t.Fatalf("connect: welcomed, want close %d", want)
	}
	if code != int(want) {
		t.Fatalf("connect: closed with %d, want %d", code, want)
	}
}

func TestAuthAllowedTokenViaHeaderAndQuery(t *testing.T) {
	e := newAuthEnv(t, nil)
	headerTok, queryTok := e.token("header"), e.token("query")

	c := e.welcome(t, headerTok, false)
	e.welcome(t, queryTok, true)

	calls := e.wh.requests()
	if len(calls) != 2 {
		t.Fatalf("webhook saw %d calls, want 2", len(calls))
	}
	host, _, _ := net.SplitHostPort(c.ws.LocalAddr().String())
	for i, want := range []string{headerTok, queryTok} {
		got := calls[i]
		if got.Token != want {
			t.Errorf("call %d: webhook got another token", i)
		}
		if !got.SignatureOK {
			t.Errorf("call %d: %s did not verify with auth.webhook_secret", i, auth.SignatureHeader)
		}
		if h, _, err := net.SplitHostPort(got.RemoteAddr); err != nil || h != host {
			t.Errorf("call %d: remote_addr %q, want %s:port", i, got.RemoteAddr, host)
		}
		if got.Node != "test-1" {
			t.Errorf("call %d: node %q, want test-1", i, got.Node)
		}
		wantHeaders := map[string]string{"Origin": "https://app.example", "User-Agent": "authtest/1"}
		if fmt.Sprint(got.Headers) != fmt.Sprint(wantHeaders) {
			t.Errorf("call %d: forwarded headers %v, want exactly %v (auth.headers)", i, got.Headers, wantHeaders)
		}
	}
	// The Authorization header and the query string are not forwarded as headers.
	if v := testutil.ToFloat64(e.n.Metrics().AuthRequests.WithLabelValues(telemetry.AuthAllow)); v != 2 {
		t.Errorf("auth_requests_total{allow} = %v, want 2", v)
	}

	// Reconnecting with a cached token makes no webhook call.
	hits := testutil.ToFloat64(e.n.Metrics().AuthCacheHits)
	e.welcome(t, headerTok, false)
	e.welcome(t, queryTok, true)
	if got := e.wh.calls.Load(); got != 2 {
		t.Errorf("webhook calls after cached reconnects = %d, want 2", got)
	}
	if v := testutil.ToFloat64(e.n.Metrics().AuthCacheHits) - hits; v != 2 {
		t.Errorf("auth_cache_hits_total grew by %v, want 2", v)
	}
	// The welcomed connection works.
	if f := c.request(`{"op":"ping","id":1}`); f.Op != "pong" {
		t.Errorf("ping → %+v", f)
	}
}

func TestAuthNoTokenRefused4001(t *testing.T) {
	e := newAuthEnv(t, nil)
	e.refused(t, "", CloseUnauthorized)
	if got := e.wh.calls.Load(); got != 0 {
		t.Errorf("a connection without a token made %d webhook calls", got)
	}
	if v := e.rejected(telemetry.RejectUnauthorized); v != 1 {
		t.Errorf("connections_rejected_total{unauthorized} = %v, want 1", v)
	}
}

func TestAuthDeniedCloses4001AndIsCached(t *testing.T) {
	e := newAuthEnv(t, func(c *config.Config) { c.Auth.Cache.NegativeTTL = config.Duration(time.Minute) })
	for i, tc := range []struct {
		name string
		mode webhookMode
	}{
		{"allow-false", hookDenyBody},
		{"status-401", hookStatus401},
		{"status-403", hookStatus403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.wh.setMode(tc.mode)
			tok := e.token(tc.name)
			e.refused(t, tok, CloseUnauthorized)
			if got := e.wh.callsFor(tok); got != 1 {
				t.Fatalf("webhook calls for the token = %d, want 1", got)
			}
			if v := e.rejected(telemetry.RejectUnauthorized); v != float64(2*i+1) {
				t.Errorf("connections_rejected_total{unauthorized} = %v, want %d", v, 2*i+1)
			}
			// Negative caching: the second attempt is refused without asking the webhook, even
			// though the webhook would now allow it.
			e.wh.setMode(hookAllow)
			e.refused(t, tok, CloseUnauthorized)
			if got := e.wh.callsFor(tok); got != 1 {
				t.Errorf("webhook calls after the cached deny = %d, want 1", got)
			}
			if v := e.rejected(telemetry.RejectUnauthorized); v != float64(2*i+2) {
				t.Errorf("connections_rejected_total{unauthorized} = %v, want %d", v, 2*i+2)
			}
		})
	}
	if v := testutil.ToFloat64(e.n.Metrics().AuthRequests.WithLabelValues(telemetry.AuthDeny)); v != 6 {
		t.Errorf("auth_requests_total{deny} = %v, want 6", v)
	}
	if v := e.rejected(telemetry.RejectAuthUnavailable); v != 0 {
		t.Errorf("a deny counted as auth_unavailable (%v)", v)
	}
	if v := e.breakerGauge(); v != 0 {
		t.Errorf("denies moved the breaker (state %v): a deny is an answer, not a failure", v)
	}
}

// TestAuthUnavailableFailsClosed: with no cached decision, every kind of webhook failure closes
// with 1013, opens the breaker after failure_threshold, and takes the node out of /ready.
func TestAuthUnavailableFailsClosed(t *testing.T) {
	for _, tc := range []struct {
		name    string
		outage  func(w *authWebhook)
		logWord string
	}{
		{"5xx", func(w *authWebhook) { w.setMode(hookStatus503) }, "Webhook verification failed: status 503"},
		{"hang", func(w *authWebhook) { w.setMode(hookHang) }, "Webhook verification failed: timeout"},
		{"down", func(w *authWebhook) { w.down() }, "Webhook verification failed: connection error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newAuthEnv(t, nil)
			if code := getJSON(t, e.n.http+"/ready", nil); code != http.StatusOK {
				t.Fatalf("/ready before the outage = %d", code)
			}
			tc.outage(e.wh)
			for i := range testFailureThreshold {
				if v := e.breakerGauge(); v != 0 {
					t.Fatalf("breaker state %v after %d failures, want closed (threshold %d)", v, i, testFailureThreshold)
				}
				e.refused(t, e.token(fmt.Sprintf("unknown%d", i)), CloseTryAgainLater)
			}
			if v := e.rejected(telemetry.RejectAuthUnavailable); v != testFailureThreshold {
				t.Errorf("connections_rejected_total{auth_unavailable} = %v, want %d", v, testFailureThreshold)
			}
			if v := e.rejected(telemetry.RejectUnauthorized); v != 0 {
				t.Errorf("an outage counted as unauthorized (%v): clients would stop retrying", v)
			}
			if v := e.breakerGauge(); v != 1 {
				t.Fatalf("breaker state %v after %d failures, want 1 (open)", v, testFailureThreshold)
			}
			if !strings.Contains(e.scrape(), "\nrevenprox_circuit_breaker_state 1\n") {
				t.Errorf("/metrics does not show revenprox_circuit_breaker_state 1")
			}
			// Open breaker and nothing cached: auth cannot admit anyone, so the node is not ready.
			var rd Readiness
			if code := getJSON(t, e.n.http+"/ready", &rd); code != http.StatusServiceUnavailable || !slices.Contains(rd.Checks, "auth") {
				t.Errorf("/ready = %d %+v, want 503 failing auth", code, rd)
			}
			// While open, unknown tokens are refused without calling the webhook.
			before := e.wh.calls.Load()
			e.refused(t, e.token("while-open"), CloseTryAgainLater)
			if got := e.wh.calls.Load(); got != before {
				t.Errorf("open breaker still called the webhook (%d → %d)", before, got)
			}
			logs := e.n.logs.String()
			for _, want := range []string{tc.logWord, "circuit breaker open"} {
				if !strings.Contains(logs, want) {
					t.Errorf("logs lack %q:\n%s", want, logs)
				}
			}
		})
	}
}

// TestAuthCachedDecisionsSurviveOutage: a cached token reconnects without a webhook call, keeps
// reconnecting on its stale decision while the webhook is down, and the breaker goes open →
// half-open → closed when the webhook returns.
func TestAuthCachedDecisionsSurviveOutage(t *testing.T) {
	e := newAuthEnv(t, func(c *config.Config) {
		c.Auth.Breaker.OpenTimeout = config.Duration(300 * time.Millisecond)
	})
	known, unknown := e.token("known"), e.token("unknown")
	e.wh.setAnswer(known, hookAnswer{User: "u-1", TTL: 0.3, Subscribe: []string{"chat.>"}})
	e.welcome(t, known, false)

	e.wh.down()
	// Cache hit on reconnect: the fresh decision needs no webhook.
	e.welcome(t, known, true)
	if got := e.wh.callsFor(known); got != 1 {
		t.Fatalf("webhook calls for the cached token = %d, want 1", got)
	}
	e.refused(t, unknown, CloseTryAgainLater)

	// Keep reconnecting until the decision has expired (a cache miss): the connect must still
	// be welcomed, on the stale decision, while the webhook is down.
	misses := testutil.ToFloat64(e.n.Metrics().AuthCacheMisses)
	eventually(t, 10*time.Second, "the cached decision to expire", func() bool {
		e.welcome(t, known, false)
		return testutil.ToFloat64(e.n.Metrics().AuthCacheMisses) > misses
	})
	e.refused(t, unknown, CloseTryAgainLater)
	eventually(t, 5*time.Second, "breaker open", func() bool {
		if e.breakerGauge() == 1 {
			return true
		}
		e.welcome(t, known, false) // each stale-served reconnect retries the webhook and fails
		return false
	})
	before := e.rejected(telemetry.RejectAuthUnavailable)
	c := e.welcome(t, known, false)
	c.subscribe("chat.lobby") // the stale decision keeps its ACL
	if v := e.rejected(telemetry.RejectAuthUnavailable); v != before {
		t.Errorf("stale-served reconnect counted as rejected")
	}
	// The breaker is open but a cached decision can still be served: /ready stays 200 so the
	// node keeps its known clients (auth.Ready's documented choice).
	if code := getJSON(t, e.n.http+"/ready", nil); code != http.StatusOK {
		t.Errorf("/ready = %d during an outage with servable cached decisions, want 200", code)
	}

	e.wh.up()
	eventually(t, 5*time.Second, "breaker half-open after open_timeout", func() bool { return e.breakerGauge() == 2 })
	e.welcome(t, known, false) // the probe: a miss goes to the webhook, which answers
	eventually(t, 5*time.Second, "breaker closed", func() bool { return e.breakerGauge() == 0 })
	e.welcome(t, unknown, false)
	logs := e.n.logs.String()
	for _, want := range []string{"circuit breaker open", "circuit breaker half-open", "circuit breaker closed"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q", want)
		}
	}
}

func TestAuthACLFromWebhookPatterns(t *testing.T) {
	e := newAuthEnv(t, func(c *config.Config) {
		c.Admin = config.AdminConfig{Listen: "127.0.0.1:0", APIKey: "admin-" + randomHex(8)}
	})
	chatTok, newsTok := e.token("chat"), e.token("news")
	e.wh.setAnswer(chatTok, hookAnswer{User: "u-chat", TTL: 60, Subscribe: []string{"chat.>", "alerts.>"}, Publish: []string{"chat.>"}})
	e.wh.setAnswer(newsTok, hookAnswer{User: "u-news", TTL: 60, Subscribe: []string{"news.*"}}) // no publish list: none

	c := e.welcome(t, chatTok, false)
	for _, tc := range []struct {
		topic string
		ok    bool
	}{
		{"chat.*", true},
		{"chat.a.b", true},
		{"chat.>", true},
		{"alerts.>", true},
		{">", false},
		{"news.x", false},
		{"chat", false},    // chat.> needs at least one more token
		{"*.lobby", false}, // would match news.lobby
		{"*.>", false},
	} {
		f := c.request(fmt.Sprintf(`{"op":"subscribe","topic":%q,"id":1}`, tc.topic))
		if tc.ok && f.Op != "ack" {
			t.Errorf("subscribe %s → %+v, want ack", tc.topic, f)
		}
		if !tc.ok && (f.Op != "error" || f.Code != CodeForbidden) {
			t.Errorf("subscribe %s → %+v, want forbidden", tc.topic, f)
		}
	}
	// Delivered to chat.> and to chat.a.b (once per matching subscription); chat.* does not
	// match. The deliveries may precede the ack.
	c.send(`{"op":"publish","topic":"chat.a.b","data":"hi","id":2}`)
	got, acked := map[string]bool{}, false
	for range 3 {
		switch f := c.read(); {
		case f.Op == "ack" && string(f.ID) == "2":
			acked = true
		case f.Op == "message" && f.Topic == "chat.a.b":
			got[f.Sub] = true
		default:
			t.Fatalf("publish chat.a.b: got %+v, want its ack and two messages", f)
		}
	}
	if !acked {
		t.Errorf("publish chat.a.b not acked")
	}
	if !got["chat.>"] || !got["chat.a.b"] {
		t.Errorf("deliveries by subscription %v", got)
	}
	for _, topic := range []string{"news.x", "alerts.fire", "chats.x"} {
		if f := c.request(fmt.Sprintf(`{"op":"publish","topic":%q,"data":1,"id":3}`, topic)); f.Code != CodeForbidden {
			t.Errorf("publish %s → %+v, want forbidden", topic, f)
		}
	}

	n := e.welcome(t, newsTok, false)
	n.subscribe("news.*")
	for _, topic := range []string{"news.>", "chat.a", "news.a.b"} {
		if f := n.request(fmt.Sprintf(`{"op":"subscribe","topic":%q,"id":4}`, topic)); f.Code != CodeForbidden {
			t.Errorf("news token: subscribe %s → %+v, want forbidden", topic, f)
		}
	}
	if f := n.request(`{"op":"publish","topic":"news.x","data":1,"id":5}`); f.Code != CodeForbidden {
		t.Errorf("news token: publish with no publish patterns → %+v, want forbidden", f)
	}

	// The admin API publishes as the server: client ACLs do not apply.
	postAdminPublish(t, e.n, `{"topic":"alerts.fire","data":{"level":"high"}}`)
	if f := c.read(); f.Op != "message" || f.Topic != "alerts.fire" || f.Sub != "alerts.>" || string(f.Data) != `{"level":"high"}` {
		t.Errorf("admin publish → %+v", f)
	}
	postAdminPublish(t, e.n, `{"topic":"news.x","data":7}`)
	if f := n.read(); f.Op != "message" || f.Topic != "news.x" {
		t.Errorf("admin publish to news.x → %+v", f)
	}
}

// postAdminPublish publishes through the admin API with the node's admin key.
func postAdminPublish(t *testing.T, n *testNode, body string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+n.AdminAddr()+"/v1/publish", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+n.cfg.Admin.APIKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("admin publish %s → HTTP %d", body, resp.StatusCode)
	}
}

// TestAuthSingleflight100ConcurrentConnects: 100 clients with one uncached token at once make
// exactly one webhook call and are all welcomed.
func TestAuthSingleflight100ConcurrentConnects(t *testing.T) {
	e := newAuthEnv(t, nil)
	e.wh.setDelay(100 * time.Millisecond) // keep the flight open while the others arrive
	tok := e.token("shared")
	const clients = 100
	var (
		wg       sync.WaitGroup
		welcomed atomic.Int64
		mu       sync.Mutex
		problems []string
		conns    []*websocket.Conn
	)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ws, code, err := connectOutcome(e.n.url, tok, false)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				problems = append(problems, err.Error())
			case ws == nil:
				problems = append(problems, fmt.Sprintf("closed %d", code))
			default:
				welcomed.Add(1)
				conns = append(conns, ws)
			}
		}()
	}
	wg.Wait()
	for _, ws := range conns {
		_ = ws.Close()
	}
	if len(problems) > 0 {
		t.Errorf("%d connects failed, e.g. %s", len(problems), problems[0])
	}
	if welcomed.Load() != clients {
		t.Errorf("welcomed %d of %d", welcomed.Load(), clients)
	}
	if got := e.wh.calls.Load(); got != 1 {
		t.Errorf("webhook calls = %d, want exactly 1 (singleflight + cache)", got)
	}
}
