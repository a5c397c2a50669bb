package proxy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/revenprox/revenprox/cluster"
	"github.com/revenprox/revenprox/config"
	"github.com/revenprox/revenprox/telemetry"
)

// runCluster starts size nodes whose embedded NATS servers form one mesh on loopback, and waits
// until every node sees every other.
func runCluster(t *testing.T, size int, opts Options) []*testNode {
	t.Helper()
	var nodes []*testNode
	for i := range size {
		var seed string
		if i > 0 {
			seed = "nats-route://" + nodes[0].Mesh().RouteAddr()
		}
		n := runNodeWith(t, func(c *config.Config) {
			c.NodeID = fmt.Sprintf("node-%c", 'a'+i)
			c.Cluster.Listen = "127.0.0.1:0"
			c.Cluster.HeartbeatInterval = config.Duration(100 * time.Millisecond)
			c.Limits.PublishRate = 0
			if seed != "" {
				c.Cluster.Peers = []string{seed}
			}
		}, opts)
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		eventually(t, 15*time.Second, n.cfg.NodeID+" sees every peer", func() bool { return len(n.Mesh().Peers()) == size-1 })
	}
	return nodes
}

// collector reads every frame of a client on its own goroutine, so waiting with a timeout never
// breaks the connection (a timed-out gorilla read poisons it).
type collector struct {
	*client
	frames chan serverFrame
	done   chan struct{}
}

func collect(c *client) *collector {
	col := &collector{client: c, frames: make(chan serverFrame, 4096), done: make(chan struct{})}
	go func() {
		defer close(col.done)
		for {
			_, msg, err := c.ws.ReadMessage()
			if err != nil {
				close(col.frames)
				return
			}
			var f serverFrame
			if json.Unmarshal(msg, &f) == nil {
				col.frames <- f
			}
		}
	}()
	c.t.Cleanup(func() { _ = c.ws.Close(); <-col.done })
	return col
}

// next returns the next frame that is not a probe.
func (c *collector) next(t *testing.T) serverFrame {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case f, ok := <-c.frames:
			if !ok {
				t.Fatal("connection closed")
			}
			if f.Topic == "" || strings.HasSuffix(f.Topic, ".probe") {
				continue
			}
			return f
		case <-timeout:
			t.Fatal("no frame within 10s")
		}
	}
}

// waitInterest publishes probes on topic from pub until every collector has received one:
// NATS propagates a new subscription's interest asynchronously.
func waitInterest(t *testing.T, pub *client, topic string, cols ...*collector) {
	t.Helper()
	seen := make([]bool, len(cols))
	deadline := time.Now().Add(15 * time.Second)
	for {
		pub.send(fmt.Sprintf(`{"op":"publish","topic":%q,"data":"probe"}`, topic))
		tick := time.After(50 * time.Millisecond)
	drain:
		for {
			all := true
			for i, c := range cols {
				if seen[i] {
					continue
				}
				all = false
				select {
				case f := <-c.frames:
					if f.Topic == topic {
						seen[i] = true
					} else if f.Op == "message" {
						t.Fatalf("unexpected %+v while waiting for interest", f)
					}
				default:
				}
			}
			if all {
				return
			}
			select {
			case <-tick:
				break drain
			case <-time.After(2 * time.Millisecond):
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("interest for %s never reached every node", topic)
		}
	}
}

func TestClusterCrossNodeExactlyOnceAndInOrder(t *testing.T) {
	nodes := runCluster(t, 3, Options{Version: "test"})
	a, b, c := nodes[0], nodes[1], nodes[2]
	onB := n2(t, b, "room.*")
	onC := n2(t, c, "room.>")
	both := n2(t, c, "room.*", "room.>") // two matching subscriptions: once per subscription
	local := n2(t, a, "room.*")
	pub := a.dial(t)
	// pub's acks are not read by a collector; read them here in order.
	waitInterest(t, pub, "room.probe", onB, onC, both, local)
	drainAcks(pub)

	const count = 300
	for i := range count {
		pub.send(fmt.Sprintf(`{"op":"publish","topic":"room.lobby","data":{"seq":%d}}`, i))
	}
	pub.send(`{"op":"publish","topic":"room.end","data":"end"}`)
	check := func(name string, col *collector, perMessage int) {
		t.Helper()
		next := map[string]int{}
		for {
			f := col.next(t)
			if f.Topic == "room.end" {
				if perMessage == 2 {
					col.next(t) // the marker comes once per subscription too
				}
				break
			}
			var d struct{ Seq int }
			if err := json.Unmarshal(f.Data, &d); err != nil {
				t.Fatal(err)
			}
			if d.Seq != next[f.Sub] {
				t.Fatalf("%s via %s: seq %d, want %d (lost, duplicated or reordered)", name, f.Sub, d.Seq, next[f.Sub])
			}
			next[f.Sub]++
		}
		if len(next) != perMessage {
			t.Errorf("%s: deliveries via %v, want %d subscriptions", name, next, perMessage)
		}
		for sub, n := range next {
			if n != count {
				t.Errorf("%s via %s: %d of %d", name, sub, n, count)
			}
		}
	}
	check("same node", local, 1)
	check("node b room.*", onB, 1)
	check("node c room.>", onC, 1)
	check("node c both", both, 2)
	if v := metricValue(t, b, "messages_received_total", telemetry.SourceCluster); v < count {
		t.Errorf("node b messages_received_total{source=cluster} = %v", v)
	}
}

// n2 connects a collector to node n subscribed to patterns.
func n2(t *testing.T, n *testNode, patterns ...string) *collector {
	t.Helper()
	c := n.dial(t)
	for _, p := range patterns {
		c.subscribe(p)
	}
	return collect(c)
}

// drainAcks stops caring about a publisher's replies: a goroutine reads them until it closes.
func drainAcks(c *client) {
	go func() {
		for {
			if _, _, err := c.ws.ReadMessage(); err != nil {
				return
			}
		}
	}()
}

func TestClusterNodeLossAndClusterView(t *testing.T) {
	nodes := runCluster(t, 3, Options{Version: "test"})
	n2(t, nodes[2], "only.on.c")
	var view cluster.View
	eventually(t, 10*time.Second, "c's topic in a's view", func() bool {
		getJSON(t, nodes[0].http+"/cluster", &view)
		return len(view.Nodes) == 3 && view.Totals.TopicCount >= 1
	})
	var h Health
	getJSON(t, nodes[0].http+"/health", &h)
	if h.Peers != 2 {
		t.Errorf("/health peers = %d", h.Peers)
	}
	_ = nodes[2].Shutdown(t.Context())
	eventually(t, 10*time.Second, "c dropped from a's view", func() bool {
		getJSON(t, nodes[0].http+"/cluster", &view)
		return len(view.Nodes) == 2
	})
	if v := testutil.ToFloat64(nodes[0].Metrics().PeersConnected); v != 1 {
		t.Errorf("peers_connected = %v after losing c", v)
	}
}

// TestTraceSpansPublishOnANodeAndDeliveryOnAnother follows one publish carrying a client's
// traceparent through node A (publish) and node B (cluster hop and delivery) into one trace.
func TestTraceSpansPublishOnANodeAndDeliveryOnAnother(t *testing.T) {
	exporter := recordSpans(t)
	nodes := runCluster(t, 2, Options{Version: "test", Tracing: true})
	sub := n2(t, nodes[1], "trace.*")
	pub := nodes[0].dial(t)
	waitInterest(t, pub, "trace.probe", sub)
	drainAcks(pub)

	const traceID, parentSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	pub.send(`{"op":"publish","topic":"trace.x","data":1,"traceparent":"00-` + traceID + `-` + parentSpan + `-01"}`)
	if f := sub.next(t); f.Topic != "trace.x" {
		t.Fatalf("got %+v", f)
	}
	var spans tracetest.SpanStubs
	find := func(name, node string) *tracetest.SpanStub {
		for i := range spans {
			s := &spans[i]
			if s.Name != name || s.SpanContext.TraceID().String() != traceID {
				continue
			}
			for _, a := range s.Attributes {
				if string(a.Key) == "revenprox.node" && a.Value.AsString() == node {
					return s
				}
			}
		}
		return nil
	}
	eventually(t, 5*time.Second, "spans exported", func() bool {
		spans = exporter.GetSpans()
		return find(telemetry.SpanDeliver, "node-b") != nil && find(telemetry.SpanPublish, "node-a") != nil
	})
	publish := find(telemetry.SpanPublish, "node-a")
	hop := find(telemetry.SpanClusterReceive, "node-b")
	deliverB := find(telemetry.SpanDeliver, "node-b")
	deliverA := find(telemetry.SpanDeliver, "node-a")
	if hop == nil || deliverA == nil {
		t.Fatalf("missing spans: hop=%v local deliver=%v", hop != nil, deliverA != nil)
	}
	parent := func(s *tracetest.SpanStub) trace.SpanID { return s.Parent.SpanID() }
	if parent(publish).String() != parentSpan {
		t.Errorf("publish parent = %s, want the client's span %s", parent(publish), parentSpan)
	}
	if parent(hop) != publish.SpanContext.SpanID() || !hop.Parent.IsRemote() {
		t.Errorf("cluster hop on B is not a remote child of publish on A")
	}
	if parent(deliverB) != hop.SpanContext.SpanID() {
		t.Errorf("delivery on B is not a child of the hop")
	}
	if parent(deliverA) != publish.SpanContext.SpanID() {
		t.Errorf("local delivery on A is not a child of publish")
	}
}

// TestPlainNATSClientReachesWebSocketSubscribers publishes with a stock nats.go client to the
// topic's subject: JSON payloads pass through, other bytes arrive as a JSON string.
func TestPlainNATSClientReachesWebSocketSubscribers(t *testing.T) {
	nodes := runCluster(t, 1, Options{Version: "test"})
	n := nodes[0]
	sub := n2(t, n, "news.*")
	nc, err := nats.Connect(n.Mesh().ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// A subject NATS accepts but the topic rules do not is never delivered (it would arrive first).
	if err := nc.Publish("revenprox.t.news.a$b", []byte(`1`)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ payload, want string }{
		{`{"headline":"hi"}`, `{"headline":"hi"}`},
		{`plain text`, `"plain text"`},
	} {
		// Interest reached the embedded server before the WebSocket subscribe was acked.
		if err := nc.Publish("revenprox.t.news.eu", []byte(tc.payload)); err != nil {
			t.Fatal(err)
		}
		f := sub.next(t)
		if f.Topic != "news.eu" || f.Sub != "news.*" || string(f.Data) != tc.want {
			t.Errorf("NATS publish %q delivered as %+v, want data %s", tc.payload, f, tc.want)
		}
	}
	if v := metricValue(t, n, "messages_received_total", telemetry.SourceCluster); v != 2 {
		t.Errorf("messages_received_total{source=cluster} = %v, want 2", v)
	}
}

// TestTraceConnectWithAuthChild follows an upgrade request carrying a traceparent: the node's
// connect span continues the client's trace and the webhook call is its child.
func TestTraceConnectWithAuthChild(t *testing.T) {
	exporter := recordSpans(t)
	e := newAuthEnv(t, nil)
	const traceID, clientSpan = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	h := http.Header{}
	h.Set("Authorization", "Bearer "+e.token("traced"))
	h.Set("traceparent", "00-"+traceID+"-"+clientSpan+"-01")
	e.n.dialRaw(t, h).read()
	var connect, webhook *tracetest.SpanStub
	eventually(t, 5*time.Second, "connect and webhook spans", func() bool {
		for _, s := range exporter.GetSpans() {
			switch s.Name {
			case telemetry.SpanConnect:
				connect = &s
			case telemetry.SpanAuth:
				webhook = &s
			}
		}
		return connect != nil && webhook != nil
	})
	if connect.SpanContext.TraceID().String() != traceID || connect.Parent.SpanID().String() != clientSpan {
		t.Errorf("connect span trace %s parent %s, want the client's %s/%s", connect.SpanContext.TraceID(), connect.Parent.SpanID(), traceID, clientSpan)
	}
	if webhook.Parent.SpanID() != connect.SpanContext.SpanID() {
		t.Errorf("webhook span is not a child of connect")
	}
}

// recordSpans installs an SDK tracer provider that keeps every span in memory, and the W3C
// propagator telemetry.SetupTracing installs in the binary, until the test ends.
func recordSpans(t *testing.T) *tracetest.InMemoryExporter {
	t.Helper()
	exporter := tracetest.NewInMemoryExporter()
	provider := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exporter))
	otel.SetTracerProvider(provider)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	t.Cleanup(func() {
		otel.SetTracerProvider(noop.NewTracerProvider())
		_ = provider.Shutdown(t.Context())
	})
	return exporter
}
