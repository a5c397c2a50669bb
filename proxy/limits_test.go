package proxy

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/revenprox/revenprox/config"
	"github.com/revenprox/revenprox/telemetry"
)

func TestMaxConnectionsHTTP503(t *testing.T) {
	n := runNode(t, func(c *config.Config) { c.Limits.MaxConnections = 2 })
	a, b := n.dial(t), n.dial(t)
	if got := n.dialStatus(t); got != http.StatusServiceUnavailable {
		t.Fatalf("third connection: HTTP %d, want 503", got)
	}
	if v := metricValue(t, n, "connections_rejected_total", telemetry.RejectMaxConnections); v != 1 {
		t.Errorf("rejected{max_connections} = %v", v)
	}
	// A slot frees when a client leaves.
	_ = a.ws.Close()
	eventually(t, 5*time.Second, "slot released", func() bool { return n.active.Load() == 1 })
	c := n.dial(t)
	_, _ = b, c
}

func TestPerIPConnectRate429(t *testing.T) {
	n := runNode(t, func(c *config.Config) { c.Limits.IPConnectRate = 3 })
	ok, limited := 0, 0
	for range 10 {
		switch n.dialStatus(t) {
		case http.StatusSwitchingProtocols:
			ok++
		case http.StatusTooManyRequests:
			limited++
		}
	}
	if ok < 3 || limited == 0 {
		t.Fatalf("accepted %d, limited %d: want a burst of 3 then 429", ok, limited)
	}
	if v := metricValue(t, n, "connections_rejected_total", telemetry.RejectRateLimit); int(v) != limited {
		t.Errorf("rejected{rate_limit} = %v, want %d", v, limited)
	}
	// One WARN naming the IP, not one per refusal.
	warns := strings.Count(n.logs.String(), "Connection rate limit exceeded")
	if warns != 1 || !strings.Contains(n.logs.String(), "ip=127.0.0.1") {
		t.Errorf("%d rate-limit warnings (want 1 naming the IP):\n%s", warns, n.logs.String())
	}
}

func TestPublishRateLimitThenClose4029(t *testing.T) {
	n := runNode(t, func(c *config.Config) { c.Limits.PublishRate = 5 })
	c := n.dial(t)
	limited := 0
	for i := range 5 + rateLimitStrikeLimit {
		c.send(fmt.Sprintf(`{"op":"publish","topic":"a.b","data":%d,"id":%d}`, i, i))
	}
	for {
		_ = c.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, msg, err := c.ws.ReadMessage()
		if err != nil {
			ce, ok := err.(*websocket.CloseError)
			if !ok || ce.Code != int(CloseRateLimited) {
				t.Fatalf("closed with %v, want 4029", err)
			}
			break
		}
		if strings.Contains(string(msg), `"code":"rate_limited"`) {
			limited++
		}
	}
	if limited < rateLimitStrikeLimit-1 {
		t.Errorf("%d rate_limited errors before the close", limited)
	}
}

func TestRateLimitedErrorKeepsConnection(t *testing.T) {
	n := runNode(t, func(c *config.Config) { c.Limits.PublishRate = 1 })
	c := n.dial(t)
	if f := c.request(`{"op":"publish","topic":"a","data":1,"id":1}`); f.Op != "ack" {
		t.Fatalf("first publish: %+v", f)
	}
	if f := c.request(`{"op":"publish","topic":"a","data":2,"id":2}`); f.Code != CodeRateLimited || string(f.ID) != "2" {
		t.Fatalf("second publish: %+v, want rate_limited", f)
	}
	if f := c.request(`{"op":"ping","id":3}`); f.Op != "pong" {
		t.Fatalf("after rate limit: %+v", f)
	}
}

func TestMaxFrameClose1009(t *testing.T) {
	n := runNode(t, func(c *config.Config) { c.Limits.MaxFrameBytes = 1024 })
	c := n.dial(t)
	big := `{"op":"publish","topic":"a","data":"` + strings.Repeat("x", 2048) + `"}`
	c.send(big)
	if code := c.closeCode(5 * time.Second); code != int(CloseTooLarge) {
		t.Fatalf("close code %d, want 1009", code)
	}
	eventually(t, 5*time.Second, "connection released", func() bool { return n.active.Load() == 0 })
}

func TestMaxSubscriptions(t *testing.T) {
	n := runNode(t, func(c *config.Config) { c.Limits.MaxSubscriptions = 2 })
	c := n.dial(t)
	c.subscribe("a")
	c.subscribe("b")
	if f := c.request(`{"op":"subscribe","topic":"c","id":3}`); f.Code != CodeTooManySubscriptions {
		t.Fatalf("third subscription: %+v", f)
	}
	c.subscribe("a") // re-subscribing an existing pattern is not a new subscription
	if f := c.request(`{"op":"unsubscribe","topic":"a","id":4}`); f.Op != "ack" {
		t.Fatal(f)
	}
	c.subscribe("c")
}

func TestKeepaliveClosesDeadPeer(t *testing.T) {
	const interval = 400 * time.Millisecond
	n := runNode(t, func(c *config.Config) { c.PingInterval = config.Duration(interval) })
	alive := n.dial(t) // reads, so gorilla answers pings with pongs
	dead := n.dial(t)  // never reads again: never answers a ping
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		// The live client keeps reading through several intervals.
		_ = alive.ws.SetReadDeadline(time.Now().Add(8 * interval))
		_, _, err := alive.ws.ReadMessage()
		done <- err
	}()
	eventually(t, 5*time.Second, "dead peer closed", func() bool { return n.active.Load() == 1 })
	if took := time.Since(start); took > 2*interval+time.Second {
		t.Errorf("dead peer closed after %v, want about two intervals (%v)", took, 2*interval)
	}
	if err := <-done; err == nil || !strings.Contains(err.Error(), "timeout") {
		t.Errorf("live client read ended with %v, want its own deadline (still connected)", err)
	}
	if n.active.Load() != 1 {
		t.Errorf("live client was closed too")
	}
	_ = dead
}

func TestAuthRequiredWithoutAnonymous(t *testing.T) {
	cfg := config.Default()
	cfg.Auth.AllowAnonymous = false
	cfg.Auth.WebhookURL = ""
	if _, err := New(cfg, Options{}); err == nil || !strings.Contains(err.Error(), "auth.webhook_url") {
		t.Fatalf("New without webhook or anonymous: %v, want an error naming auth.webhook_url", err)
	}
}

func TestMemoryReclaimerRunsOnceChurnSettles(t *testing.T) {
	freed := 0
	m := memoryReclaimer{settle: 2 * time.Second, every: 30 * time.Second, free: func() { freed++ }}
	t0 := time.Unix(1000, 0)
	steps := []struct {
		at    time.Duration
		churn uint64
		want  int
	}{
		{0, 0, 0},                  // nothing happened yet
		{1 * time.Second, 100, 0},  // a burst
		{2 * time.Second, 200, 0},  // still churning
		{3 * time.Second, 200, 0},  // quiet for 1 s
		{4 * time.Second, 200, 1},  // quiet for 2 s: reclaim
		{5 * time.Second, 200, 1},  // nothing new: no second reclaim
		{6 * time.Second, 300, 1},  // another burst
		{9 * time.Second, 300, 1},  // settled, but the last reclaim was 5 s ago
		{34 * time.Second, 300, 2}, // 30 s after the last one: reclaim
	}
	for _, st := range steps {
		m.tick(t0.Add(st.at), st.churn)
		if freed != st.want {
			t.Fatalf("at %v: %d reclaims, want %d", st.at, freed, st.want)
		}
	}
}
