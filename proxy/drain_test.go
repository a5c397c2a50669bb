package proxy

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/revenprox/revenprox/config"
	"github.com/revenprox/revenprox/telemetry"
)

func TestDrainFlushesThenCloses1001(t *testing.T) {
	n := runNode(t, func(c *config.Config) {
		c.Limits.PublishRate = 0
		c.Backpressure.QueueBytes = 8 << 20
		c.DrainTimeout = config.Duration(20 * time.Second)
	})
	smallSocketBuffers(n)
	slow := n.dialSlow(t) // not reading yet: its messages wait in socket buffers and the queue
	slow.subscribe("news")
	pub := n.dial(t)
	const count = 100
	flood(t, pub, "news", count, 1<<10)

	drained := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		drained <- n.Shutdown(ctx)
	}()
	// Readiness goes first, health says draining, and new clients are refused.
	eventually(t, 5*time.Second, "/ready 503", func() bool {
		return getJSON(t, n.http+"/ready", nil) == http.StatusServiceUnavailable
	})
	var h Health
	if code := getJSON(t, n.http+"/health", &h); code != http.StatusServiceUnavailable || h.Status != "draining" {
		t.Errorf("/health during drain: %d %+v", code, h)
	}
	if got := n.dialStatus(t); got != http.StatusServiceUnavailable {
		t.Errorf("new connection during drain: HTTP %d, want 503", got)
	}
	if v := metricValue(t, n, "connections_rejected_total", telemetry.RejectDraining); v != 1 {
		t.Errorf("rejected{draining} = %v", v)
	}
	// The slow client now reads: every queued message, then close 1001.
	got := 0
	for {
		_ = slow.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, msg, err := slow.ws.ReadMessage()
		if err != nil {
			if !strings.Contains(err.Error(), "1001") {
				t.Fatalf("after %d messages: %v, want close 1001", got, err)
			}
			break
		}
		if strings.Contains(string(msg), `"op":"message"`) {
			got++
		}
	}
	if got != count {
		t.Errorf("received %d of %d queued messages before the close", got, count)
	}
	if err := <-drained; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	// Shutdown is safe twice.
	if err := n.Shutdown(context.Background()); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
}

func TestDrainTimeoutCutsStuckClients(t *testing.T) {
	n := runNode(t, func(c *config.Config) { c.Limits.PublishRate = 0; c.Backpressure.QueueBytes = 8 << 20 })
	smallSocketBuffers(n)
	slow := n.dialSlow(t)
	slow.subscribe("news")
	flood(t, n.dial(t), "news", 300, 1<<10)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := n.Shutdown(ctx); err == nil {
		t.Errorf("Shutdown with a stuck client returned nil, want the deadline error")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Shutdown took %v after a 300ms deadline", took)
	}
	if n.active.Load() != 0 {
		t.Errorf("%d connections left", n.active.Load())
	}
}

func TestEndpointsAndMetricsAfterTraffic(t *testing.T) {
	n := runNode(t, func(c *config.Config) { c.Limits.MaxConnections = 3 })
	a, b := n.dial(t), n.dial(t)
	a.subscribe("x.*")
	a.subscribe("y")
	b.subscribe("x.*")
	idle := n.dial(t) // no subscription: publishes only
	if got := n.dialStatus(t); got != http.StatusServiceUnavailable {
		t.Fatalf("4th connection HTTP %d", got)
	}
	for range 3 {
		idle.request(`{"op":"publish","topic":"x.1","data":{"k":1}}`)
	}
	for range 3 {
		a.read()
		b.read()
	}
	eventually(t, 5*time.Second, "messages counted as sent", func() bool {
		return metricValue(t, n, "messages_sent_total") == 6
	})
	var st Stats
	getJSON(t, n.http+"/stats", &st)
	if st.ActiveConnections != 3 || st.IdleConnections != 1 || st.TotalCreated != 3 || st.Subscriptions != 3 || st.Topics != 2 {
		t.Errorf("/stats = %+v", st)
	}
	var h Health
	if code := getJSON(t, n.http+"/health", &h); code != 200 || h.Status != "healthy" || h.Connections != 3 || h.Node != "test-1" {
		t.Errorf("/health = %d %+v", code, h)
	}
	if code := getJSON(t, n.http+"/ready", nil); code != 200 {
		t.Errorf("/ready = %d", code)
	}
	resp, err := http.Get(n.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		"revenprox_connections_active 3",
		"revenprox_connections_total 3",
		`revenprox_connections_rejected_total{reason="max_connections"} 1`,
		`revenprox_messages_received_total{source="client"} 3`,
		"revenprox_messages_sent_total 6",
		"revenprox_topics_active 2",
		"revenprox_message_latency_seconds_count 6",
		`revenprox_messages_dropped_total{reason="slow_consumer"} 0`,
		"revenprox_bytes_received_total",
		"revenprox_bytes_sent_total",
		"go_goroutines",
		"process_resident_memory_bytes",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Connections closing update the gauge and the duration histogram.
	_ = a.ws.Close()
	eventually(t, 5*time.Second, "gauge down", func() bool { return metricValue(t, n, "connections_active") == 2 })
	if v := metricValue(t, n, "topics_active"); v != 1 {
		t.Errorf("topics_active after the only y subscriber left = %v", v)
	}
}
