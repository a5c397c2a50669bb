package auth

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/revenprox/revenprox/config"
	"github.com/revenprox/revenprox/telemetry"
)

// webhookMode is how the test webhook behaves; switchable at runtime.
type webhookMode int

const (
	modeAllow    webhookMode = iota // 200 with the configured allow body
	modeDenyBody                    // 200 {"allow":false,...}
	modeDeny401                     // 401
	modeDeny403                     // 403
	modeSlow                        // answers allow after slowBy
	mode5xx                         // 503
	mode429                         // 429
	modeGarbage                     // 200 with a body that is not JSON
	modeHang                        // never answers until the client gives up
	modeNotFound                    // 404
)

// testWebhook is a real HTTP webhook server (httptest) whose behaviour tests switch at runtime.
// It can also be stopped and restarted on the same address.
type testWebhook struct {
	t      testing.TB
	secret []byte // when set, requests with a bad signature get 401

	mu        sync.Mutex
	mode      webhookMode
	allowBody string
	slowBy    time.Duration
	gate      chan struct{} // when non-nil, every call waits for it to close
	lastBody  webhookRequest
	lastHdr   http.Header
	srv       *httptest.Server
	addr      string

	calls   atomic.Int64
	badSigs atomic.Int64
	stop    chan struct{} // closed at cleanup: releases hanging handlers
}

func newTestWebhook(t testing.TB) *testWebhook {
	t.Helper()
	w := &testWebhook{
		t:         t,
		allowBody: `{"allow":true,"user":"u-42","ttl":60,"subscribe":["chat.>"],"publish":["chat.>"]}`,
		stop:      make(chan struct{}),
	}
	w.srv = httptest.NewServer(http.HandlerFunc(w.serve))
	w.addr = w.srv.Listener.Addr().String()
	t.Cleanup(func() {
		close(w.stop)
		w.mu.Lock()
		srv := w.srv
		w.mu.Unlock()
		if srv != nil {
			srv.Close()
		}
	})
	return w
}

func (w *testWebhook) URL() string { return "http://" + w.addr + "/verify" }

func (w *testWebhook) setMode(m webhookMode) {
	w.mu.Lock()
	w.mode = m
	w.mu.Unlock()
}

func (w *testWebhook) setAllowBody(body string) {
	w.mu.Lock()
	w.mode, w.allowBody = modeAllow, body
	w.mu.Unlock()
}

func (w *testWebhook) setSlow(d time.Duration) {
	w.mu.Lock()
	w.mode, w.slowBy = modeSlow, d
	w.mu.Unlock()
}

// hold makes calls wait until the returned release func is called.
func (w *testWebhook) hold() (release func()) {
	gate := make(chan struct{})
	w.mu.Lock()
	w.gate = gate
	w.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			w.mu.Lock()
			w.gate = nil
			w.mu.Unlock()
			close(gate)
		})
	}
}

// down closes the server: calls now fail with connection refused.
func (w *testWebhook) down() {
	w.mu.Lock()
	srv := w.srv
	w.srv = nil
	w.mu.Unlock()
	srv.Close()
}

// up restarts the server on the same address.
func (w *testWebhook) up() {
	w.t.Helper()
	var ln net.Listener
	eventually(w.t, 5*time.Second, func() bool {
		var err error
		ln, err = net.Listen("tcp", w.addr)
		return err == nil
	})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(w.serve))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	w.mu.Lock()
	w.srv = srv
	w.mu.Unlock()
}

func (w *testWebhook) last() (webhookRequest, http.Header) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastBody, w.lastHdr.Clone()
}

func (w *testWebhook) serve(rw http.ResponseWriter, r *http.Request) {
	w.calls.Add(1)
	body, _ := io.ReadAll(r.Body)
	var req webhookRequest
	_ = json.Unmarshal(body, &req)
	w.mu.Lock()
	w.lastBody, w.lastHdr = req, r.Header.Clone()
	mode, allowBody, slowBy, gate := w.mode, w.allowBody, w.slowBy, w.gate
	w.mu.Unlock()

	if gate != nil {
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		case <-w.stop:
			return
		}
	}
	if len(w.secret) > 0 {
		// The verification a webhook author writes (see docs/auth.md).
		want := sign(w.secret, body)
		if !hmac.Equal([]byte(r.Header.Get(SignatureHeader)), []byte(want)) {
			w.badSigs.Add(1)
			http.Error(rw, "bad signature", http.StatusUnauthorized)
			return
		}
	}
	switch mode {
	case modeAllow:
		io.WriteString(rw, allowBody)
	case modeSlow:
		select {
		case <-time.After(slowBy): // simulates a slow webhook; nothing waits on it
		case <-r.Context().Done():
			return
		}
		io.WriteString(rw, allowBody)
	case modeDenyBody:
		io.WriteString(rw, `{"allow":false,"reason":"account suspended"}`)
	case modeDeny401:
		rw.WriteHeader(http.StatusUnauthorized)
	case modeDeny403:
		rw.WriteHeader(http.StatusForbidden)
	case mode5xx:
		rw.WriteHeader(http.StatusServiceUnavailable)
	case mode429:
		rw.WriteHeader(http.StatusTooManyRequests)
	case modeGarbage:
		io.WriteString(rw, `<html>oops</html>`)
	case modeNotFound:
		rw.WriteHeader(http.StatusNotFound)
	case modeHang:
		select {
		case <-r.Context().Done():
		case <-w.stop:
		}
	}
}

// eventually polls cond until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", timeout)
		}
		time.Sleep(2 * time.Millisecond) // poll interval, not a wait for an event
	}
}

// syncBuffer collects log output from concurrent goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testConfig is a webhook config with short, test-friendly timings.
func testConfig(url string) config.AuthConfig {
	cfg := config.Default().Auth
	cfg.WebhookURL = url
	cfg.Timeout = config.Duration(300 * time.Millisecond)
	cfg.Headers = []string{"Origin", "User-Agent"}
	cfg.Cache.Size = 10000
	cfg.Cache.MaxTTL = config.Duration(time.Hour)
	cfg.Cache.NegativeTTL = config.Duration(time.Hour)
	cfg.Cache.StaleGrace = config.Duration(time.Hour)
	cfg.Breaker.FailureThreshold = 1000
	cfg.Breaker.OpenTimeout = config.Duration(time.Hour)
	cfg.Breaker.HalfOpenProbes = 1
	return cfg
}

type harness struct {
	a    *Authenticator
	m    *telemetry.Metrics
	logs *syncBuffer
}

func newHarness(t testing.TB, cfg config.AuthConfig) *harness {
	t.Helper()
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m := telemetry.NewMetrics()
	a, err := New(cfg, "proxy-test", m, log)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(a.Close)
	return &harness{a: a, m: m, logs: logs}
}

func (h *harness) auth(token string) (*Decision, error) {
	return h.a.Authenticate(context.Background(), Request{Token: token, RemoteAddr: "127.0.0.1:40000", Headers: http.Header{}})
}

// value reads a counter or gauge.
func value(t testing.TB, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	switch {
	case d.Counter != nil:
		return d.Counter.GetValue()
	case d.Gauge != nil:
		return d.Gauge.GetValue()
	case d.Histogram != nil:
		return float64(d.Histogram.GetSampleCount())
	}
	t.Fatal("unsupported metric")
	return 0
}

func (h *harness) requests(t testing.TB, result string) float64 {
	return value(t, h.m.AuthRequests.WithLabelValues(result))
}

func mustAllow(t testing.TB, d *Decision, err error) *Decision {
	t.Helper()
	if err != nil {
		t.Fatalf("want allow, got %v", err)
	}
	if d == nil {
		t.Fatal("want a decision, got nil")
	}
	return d
}

func mustErr(t testing.TB, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("want %v, got %v", want, err)
	}
}

func slogDiscard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func (h *harness) mustAllow(t testing.TB, token string) *Decision {
	t.Helper()
	d, err := h.auth(token)
	return mustAllow(t, d, err)
}
