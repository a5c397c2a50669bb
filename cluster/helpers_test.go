package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.uber.org/goleak"

	"github.com/revenprox/revenprox/config"
	"github.com/revenprox/revenprox/telemetry"
	"github.com/revenprox/revenprox/topics"
)

func TestMain(m *testing.M) {
	// What telemetry installs in the binary; the mesh uses whatever propagator is global.
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	goleak.VerifyTestMain(m)
}

// eventually polls cond every few milliseconds until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testLogger writes to the test log at level (or stderr when REVENPROX_TEST_LOG is set).
func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("REVENPROX_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// node is one Mesh in the test with what it delivered.
type node struct {
	id      string
	mesh    *Mesh
	metrics *telemetry.Metrics

	mu    sync.Mutex
	got   []*Message
	stats NodeStats
	// block, when non-nil, makes Deliver wait on it (slow consumer tests).
	block chan struct{}
}

func (n *node) deliver(m *Message) {
	n.mu.Lock()
	block := n.block
	n.mu.Unlock()
	if block != nil {
		<-block
	}
	n.mu.Lock()
	n.got = append(n.got, m)
	n.mu.Unlock()
}

func (n *node) messages() []*Message {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*Message(nil), n.got...)
}

func (n *node) reset() {
	n.mu.Lock()
	n.got = nil
	n.mu.Unlock()
}

// count reports how many delivered messages match pattern and topic ("" matches any).
func (n *node) count(pattern, topic string) int {
	c := 0
	for _, m := range n.messages() {
		if (pattern == "" || m.Pattern == pattern) && (topic == "" || m.Topic == topic) {
			c++
		}
	}
	return c
}

func (n *node) waitCount(t testing.TB, pattern, topic string, want int) {
	t.Helper()
	eventually(t, 10*time.Second, fmt.Sprintf("%s to receive %d on %q/%q", n.id, want, pattern, topic), func() bool {
		return n.count(pattern, topic) >= want
	})
}

func (n *node) setStats(s NodeStats) {
	n.mu.Lock()
	n.stats = s
	n.mu.Unlock()
}

func (n *node) getStats() NodeStats {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stats
}

func (n *node) server() *server.Server {
	n.mesh.mu.Lock()
	defer n.mesh.mu.Unlock()
	return n.mesh.srv
}

const testHeartbeat = 50 * time.Millisecond

// meshConfig is an embedded-mesh config on loopback with random ports.
func meshConfig(peers ...string) config.ClusterConfig {
	cfg := config.Default().Cluster
	cfg.Listen = "127.0.0.1:0"
	cfg.ClientListen = "127.0.0.1:0"
	cfg.HeartbeatInterval = config.Duration(testHeartbeat)
	for _, p := range peers {
		cfg.Peers = append(cfg.Peers, "nats-route://"+p)
	}
	return cfg
}

// startNode creates and starts a Mesh; it is shut down when the test ends.
func startNode(t testing.TB, id string, cfg config.ClusterConfig) *node {
	t.Helper()
	n := &node{id: id, metrics: telemetry.NewMetrics()}
	m, err := New(Options{
		Config:  cfg,
		NodeID:  id,
		Version: "test",
		Metrics: n.metrics,
		Log:     testLogger(t).With("node", id),
		Deliver: n.deliver,
		Stats:   n.getStats,
	})
	if err != nil {
		t.Fatalf("New(%s): %v", id, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Start(ctx); err != nil {
		t.Fatalf("Start(%s): %v", id, err)
	}
	n.mesh = m
	t.Cleanup(func() { n.stop(t) })
	return n
}

func (n *node) stop(t testing.TB) {
	n.mu.Lock()
	if n.block != nil {
		close(n.block)
		n.block = nil
	}
	n.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.mesh.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown(%s): %v", n.id, err)
	}
}

// startMesh starts count nodes named A, B, C…; every node after the first knows only the first
// (gossip completes the mesh). It returns when every node sees all the others.
func startMesh(t testing.TB, count int) []*node {
	t.Helper()
	seed := startNode(t, "A", meshConfig())
	nodes := []*node{seed}
	for i := 1; i < count; i++ {
		nodes = append(nodes, startNode(t, string(rune('A'+i)), meshConfig(seed.mesh.RouteAddr())))
	}
	waitPeers(t, nodes...)
	return nodes
}

// waitPeers waits until every node sees every other node as a peer.
func waitPeers(t testing.TB, nodes ...*node) {
	t.Helper()
	for _, n := range nodes {
		eventually(t, 10*time.Second, n.id+" to see all peers", func() bool {
			return len(n.mesh.Peers()) == len(nodes)-1
		})
	}
}

// waitInterest waits until the embedded server of n knows of at least want subscriptions
// (its own client's plus one per remote node and pattern) matching topic: interest
// propagates asynchronously, so tests wait for it instead of sleeping.
func waitInterest(t testing.TB, n *node, topic string, want int) {
	t.Helper()
	eventually(t, 10*time.Second, fmt.Sprintf("%s to see %d interest in %s", n.id, want, topic), func() bool {
		return interest(n, topic) >= want
	})
}

// interest counts the subscriptions n's server holds that match topic: the local ones from
// Subsz and the routed ones from Routez (one per remote node and subject, however many pooled
// route connections carry it).
func interest(n *node, topic string) int {
	srv := n.server()
	subject := n.mesh.prefix + topic
	local, err := srv.Subsz(&server.SubszOptions{Subscriptions: true, Test: subject})
	if err != nil {
		panic(err)
	}
	count := local.Total
	routes, err := srv.Routez(&server.RoutezOptions{Subscriptions: true})
	if err != nil {
		panic(err)
	}
	seen := make(map[string]bool)
	for _, r := range routes.Routes {
		for _, sub := range r.Subs {
			// Route subscription lists are "subject" or "subject queue"; topics.Match speaks
			// the same wildcards as NATS.
			sub, _, _ = strings.Cut(sub, " ")
			key := r.RemoteName + " " + sub
			if !seen[key] && strings.HasPrefix(sub, n.mesh.prefix) &&
				topics.Match(sub[len(n.mesh.prefix):], topic) {
				seen[key] = true
				count++
			}
		}
	}
	return count
}

func testutilCounter(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

func dump(ms []*Message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = fmt.Sprintf("%s/%s from %q: %s", m.Pattern, m.Topic, m.Origin, m.Data)
	}
	return out
}

func topicsOf(ms []*Message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Topic
	}
	return out
}

func equalStrings(a, b []string) bool { return slices.Equal(a, b) }

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func pc(pattern string, subscribers int) topics.PatternCount {
	return topics.PatternCount{Pattern: pattern, Subscribers: subscribers}
}
