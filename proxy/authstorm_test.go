package proxy

// A reconnect storm during a webhook outage, and the cost of a connect with a cached token.

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/revenprox/revenprox/config"
	"github.com/revenprox/revenprox/telemetry"
)

// stormResult counts the outcomes of one wave of connects.
type stormResult struct {
	mu       sync.Mutex
	conns    []*websocket.Conn
	welcomed map[string]int // by token
	codes    map[int]int    // close code → count
	errs     []string
}

// connectWave connects one client per entry of tokens with at most workers dials in flight and
// keeps the welcomed connections open.
func connectWave(wsURL string, tokens []string, workers int) *stormResult {
	r := &stormResult{welcomed: map[string]int{}, codes: map[int]int{}}
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(tokens) {
					return
				}
				ws, code, err := connectOutcome(wsURL, tokens[i], i%2 == 1)
				r.mu.Lock()
				switch {
				case err != nil:
					r.errs = append(r.errs, err.Error())
				case ws == nil:
					r.codes[code]++
				default:
					r.conns = append(r.conns, ws)
					r.welcomed[tokens[i]]++
				}
				r.mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return r
}

func (r *stormResult) closeAll() {
	for _, ws := range r.conns {
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		_ = ws.Close()
	}
	r.conns = nil
}

// TestAuthReconnectStormDuringOutage: 200 clients over 20 tokens are connected with a warm
// cache; the webhook goes down; everyone reconnects three times alongside clients with unknown
// tokens. Every cached client gets back in, unknown ones get 1013, the breaker opens; when the
// webhook returns the breaker closes and the node's goroutines return to where they started.
func TestAuthReconnectStormDuringOutage(t *testing.T) {
	const (
		distinct = 20
		perToken = 10
		rounds   = 3
		unknowns = 20
		workers  = 32
	)
	e := newAuthEnv(t, func(c *config.Config) {
		c.Limits.IPConnectRate = 0
		c.Auth.Breaker.FailureThreshold = 3
		c.Auth.Breaker.OpenTimeout = config.Duration(time.Second)
	})
	// Decisions live 3 s: the outage outlasts them, so later rounds run on stale decisions
	// (stale_grace, default 10 m), as a long outage would.
	var known []string
	for i := range distinct {
		tok := e.token(fmt.Sprintf("known%d", i))
		e.wh.setAnswer(tok, hookAnswer{User: fmt.Sprintf("u-%d", i), TTL: 3, Subscribe: []string{"chat.>"}})
		known = append(known, tok)
	}
	misses := func() float64 { return testutil.ToFloat64(e.n.Metrics().AuthCacheMisses) }
	var clients []string
	for i := range distinct * perToken {
		clients = append(clients, known[i%distinct])
	}
	waitIdle := func(what string) {
		eventually(t, 10*time.Second, what, func() bool { return e.n.active.Load() == 0 })
	}
	baseline := runtime.NumGoroutine()

	warm := connectWave(e.n.url, clients, workers)
	if len(warm.errs) > 0 || len(warm.conns) != len(clients) {
		warm.closeAll()
		t.Fatalf("warm-up: %d of %d welcomed, closes %v, errors %d (e.g. %v)", len(warm.conns), len(clients), warm.codes, len(warm.errs), warm.errs)
	}
	if got := e.wh.calls.Load(); got != distinct {
		t.Errorf("warm-up made %d webhook calls, want %d (one per distinct token)", got, distinct)
	}

	e.wh.down()
	warm.closeAll()
	var staleFrom float64
	waitIdle("every client to disconnect")
	for round := range rounds {
		wave := append([]string(nil), clients...)
		var strangers []string
		for i := range unknowns {
			strangers = append(strangers, e.token(fmt.Sprintf("stranger%d-%d", round, i)))
		}
		wave = append(wave, strangers...)
		r := connectWave(e.n.url, wave, workers)
		r.closeAll()
		if len(r.errs) > 0 {
			t.Fatalf("round %d: %d connect errors, e.g. %s", round, len(r.errs), r.errs[0])
		}
		for _, tok := range known {
			if r.welcomed[tok] != perToken {
				t.Fatalf("round %d: a cached token got %d of %d clients back in (closes %v)", round, r.welcomed[tok], perToken, r.codes)
			}
		}
		for _, tok := range strangers {
			if r.welcomed[tok] != 0 {
				t.Fatalf("round %d: a token nobody ever verified was let in during the outage", round)
			}
		}
		if r.codes[int(CloseTryAgainLater)] != unknowns || len(r.codes) != 1 {
			t.Fatalf("round %d: closes %v, want %d × 1013", round, r.codes, unknowns)
		}
		if round == 0 && e.breakerGauge() == 0 {
			t.Errorf("breaker closed after %d failed webhook calls", unknowns)
		}
		waitIdle(fmt.Sprintf("round %d clients to disconnect", round))
		if round == 0 {
			// Wait until every known token's decision has expired: a pass over them is all misses.
			eventually(t, 10*time.Second, "every cached decision to expire", func() bool {
				before := misses()
				pass := connectWave(e.n.url, known, 4)
				pass.closeAll()
				if len(pass.welcomed) != distinct {
					t.Fatalf("a known token was refused while its decision expired: closes %v, errors %v", pass.codes, pass.errs)
				}
				return misses()-before == distinct
			})
			waitIdle("expiry probes to disconnect")
			staleFrom = misses()
		}
	}
	if got := misses() - staleFrom; got != float64((rounds-1)*(len(clients)+unknowns)) {
		t.Errorf("rounds after expiry: %v cache misses, want %d (every connect served stale or refused)", got, (rounds-1)*(len(clients)+unknowns))
	}
	if v := e.rejected(telemetry.RejectAuthUnavailable); v != rounds*unknowns {
		t.Errorf("connections_rejected_total{auth_unavailable} = %v, want %d", v, rounds*unknowns)
	}
	if got := e.wh.calls.Load(); got != distinct {
		t.Errorf("webhook received %d calls while down?", got-distinct)
	}

	e.wh.up()
	recovery := e.token("recovery")
	eventually(t, 10*time.Second, "a new token admitted after the webhook returns", func() bool {
		ws, _, err := connectOutcome(e.n.url, recovery, false)
		if err != nil || ws == nil {
			return false
		}
		_ = ws.Close()
		return true
	})
	eventually(t, 5*time.Second, "breaker closed", func() bool { return e.breakerGauge() == 0 })
	waitIdle("recovery clients to disconnect")

	// Goroutines return to the count before the storm: the only extras allowed are idle
	// keep-alive connections (each a few goroutines) to the webhook and to /metrics.
	const margin = 8
	var now int
	deadline := time.Now().Add(5 * time.Second)
	for now = runtime.NumGoroutine(); now > baseline+margin && time.Now().Before(deadline); now = runtime.NumGoroutine() {
		time.Sleep(20 * time.Millisecond)
	}
	if now > baseline+margin {
		buf := make([]byte, 1<<20)
		t.Errorf("goroutines: %d before the storm, %d after recovery (margin %d):\n%s", baseline, now, margin, buf[:runtime.Stack(buf, true)])
	}
	t.Logf("goroutines: %d before the storm, %d after recovery", baseline, now)
}

// BenchmarkConnectCachedToken measures whole loopback WebSocket connects (TCP, upgrade,
// authentication from a warm cache, welcome, close) against one node.
func BenchmarkConnectCachedToken(b *testing.B) {
	wh := startWebhook(b)
	cfg := config.Default()
	cfg.NodeID = "bench-1"
	cfg.Listen = "127.0.0.1:0"
	cfg.Limits.IPConnectRate = 0
	cfg.Auth.WebhookURL = wh.URL()
	cfg.Auth.WebhookSecret = wh.secret
	logs := &syncBuffer{}
	log, err := telemetry.NewLogger(logs, "info", "text", cfg.NodeID)
	if err != nil {
		b.Fatal(err)
	}
	srv, err := New(cfg, Options{Log: log})
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	wsURL := "ws://" + srv.Addr() + "/ws"
	const distinct = 100
	tokens := make([]string, distinct)
	for i := range tokens {
		tokens[i] = fmt.Sprintf("bench-token-%d-%s", i, randomHex(8))
		ws, code, err := connectOutcome(wsURL, tokens[i], false)
		if err != nil || ws == nil {
			b.Fatalf("warm-up: %v (close %d)", err, code)
		}
		_ = ws.Close()
	}
	calls := wh.calls.Load()

	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var next atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			tok := tokens[int(next.Add(1))%distinct]
			ws, code, err := connectOutcome(wsURL, tok, false)
			if err != nil || ws == nil {
				b.Errorf("connect: %v (close %d)", err, code)
				return
			}
			_ = ws.Close()
		}
	})
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "connects/s")
	if got := wh.calls.Load(); got != calls {
		b.Errorf("%d webhook calls with a warm cache", got-calls)
	}
}
