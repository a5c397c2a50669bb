package cluster

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	"github.com/revenprox/revenprox/config"
	"github.com/revenprox/revenprox/telemetry"
)

func TestNewRejectsBadOptions(t *testing.T) {
	good := Options{Config: config.Default().Cluster, NodeID: "n1", Metrics: telemetry.NewMetrics(), Deliver: func(*Message) {}}
	if _, err := New(good); err != nil {
		t.Fatalf("New(good): %v", err)
	}
	cases := map[string]func(o *Options){
		"empty node id":      func(o *Options) { o.NodeID = "" },
		"dotted node id":     func(o *Options) { o.NodeID = "a.b" },
		"no metrics":         func(o *Options) { o.Metrics = nil },
		"no deliver":         func(o *Options) { o.Deliver = nil },
		"zero heartbeat":     func(o *Options) { o.Config.HeartbeatInterval = 0 },
		"prefix without dot": func(o *Options) { o.Config.SubjectPrefix = "revenprox" },
		"wildcard prefix":    func(o *Options) { o.Config.SubjectPrefix = "a.*." },
		"listen and url":     func(o *Options) { o.Config.Listen = ":5555"; o.Config.NATSURL = "nats://x:4222" },
	}
	for name, mutate := range cases {
		o := good
		mutate(&o)
		if _, err := New(o); !errors.Is(err, ErrOptions) {
			t.Errorf("%s: got %v, want ErrOptions", name, err)
		}
	}
}

func TestSysPrefixNeverOverlapsTopics(t *testing.T) {
	for prefix, want := range map[string]string{
		"revenprox.t.": "revenprox.sys.",
		"a.b.c.":       "a.sys.",
		"app.":         "app_sys.",
		"x.sys.":       "x.sys_sys.",
	} {
		if got := sysPrefix(prefix); got != want {
			t.Errorf("sysPrefix(%q) = %q, want %q", prefix, got, want)
		}
	}
}

func TestSingleNodeOpensNoPortAndSkipsNATS(t *testing.T) {
	cfg := config.Default().Cluster
	cfg.HeartbeatInterval = config.Duration(testHeartbeat)
	n := startNode(t, "solo", cfg)
	if n.mesh.Mode() != ModeSingle {
		t.Fatalf("mode %q, want %q", n.mesh.Mode(), ModeSingle)
	}
	if u := n.mesh.ClientURL(); u != "" {
		t.Errorf("ClientURL = %q, want empty (in-process only)", u)
	}
	if a := n.server().Addr(); a != nil {
		t.Errorf("embedded server listens on %v, want no listener", a)
	}
	if n.server().ClusterAddr() != nil || n.mesh.RouteAddr() != "" {
		t.Errorf("single node has a route listener")
	}
	if !n.mesh.Connected() {
		t.Fatal("not connected")
	}
	// Nothing can reach a listener-less server, so a single node neither subscribes nor
	// publishes there: each publication would cost a NATS round and be dropped.
	n.mesh.Interest("solo.x")
	if got := n.mesh.Patterns(); got != 1 {
		t.Errorf("Patterns = %d, want 1 (the pattern is still tracked)", got)
	}
	n.mesh.Publish(context.Background(), "solo.x", []byte(`1`), time.Now())
	if err := n.mesh.nc.Load().Flush(); err != nil { // the server has seen all the node sent
		t.Fatal(err)
	}
	if got := interest(n, "solo.x"); got != 0 {
		t.Errorf("server holds %d subscriptions for solo.x, want 0", got)
	}
	if v := testutilCounter(n.metrics.ClusterMessagesSent); v != 0 {
		t.Errorf("cluster_messages_published_total = %v, want 0", v)
	}
	if in := n.server().NumSubscriptions(); in > 1 {
		t.Errorf("server holds %d subscriptions, want at most the heartbeat one", in)
	}
}

func TestCrossNodeDeliveredOncePerPatternAndNeverEchoed(t *testing.T) {
	nodes := startMesh(t, 3)
	a, b, c := nodes[0], nodes[1], nodes[2]

	a.mesh.Interest("chat.x") // A must not get its own publications back
	b.mesh.Interest("chat.x")
	b.mesh.Interest("chat.>")
	c.mesh.Interest("chat.x")
	c.mesh.Interest("chat.*")
	c.mesh.Interest("news.x") // not matching
	// A's server: B has chat.x + chat.>, C has chat.x + chat.*, A has chat.x.
	waitInterest(t, a, "chat.x", 5)

	a.mesh.Publish(context.Background(), "chat.x", []byte(`{"n":1}`), time.Now())
	b.waitCount(t, "", "chat.x", 2)
	c.waitCount(t, "", "chat.x", 2)

	// B now publishes on chat.x: A receives it. Had A's own publication been echoed, it would
	// have arrived on the same connection long before (an echo is delivered by A's own server
	// immediately), so its absence now is conclusive.
	waitInterest(t, b, "chat.x", 5)
	b.mesh.Publish(context.Background(), "chat.x", []byte(`{"n":2}`), time.Now())
	a.waitCount(t, "chat.x", "chat.x", 1)
	// A second marker from A: anything duplicated of the first message would arrive first.
	a.mesh.Publish(context.Background(), "chat.x", []byte(`{"n":3}`), time.Now())
	b.waitCount(t, "chat.x", "chat.x", 2)
	c.waitCount(t, "chat.x", "chat.x", 2)
	c.waitCount(t, "chat.*", "chat.x", 2)
	b.waitCount(t, "chat.>", "chat.x", 2) // 1 and 3 from A; 2 is B's own and never comes back

	for _, tc := range []struct {
		n                *node
		pattern          string
		want             []string
		wantOriginsAllOf string
	}{
		{a, "chat.x", []string{`{"n":2}`}, "B"},
		{b, "chat.x", []string{`{"n":1}`, `{"n":3}`}, "A"},
		{b, "chat.>", []string{`{"n":1}`, `{"n":3}`}, "A"},
		{c, "chat.x", []string{`{"n":1}`, `{"n":2}`, `{"n":3}`}, ""},
		{c, "chat.*", []string{`{"n":1}`, `{"n":2}`, `{"n":3}`}, ""},
	} {
		var got []string
		for _, m := range tc.n.messages() {
			if m.Pattern == tc.pattern {
				got = append(got, string(m.Data))
				if tc.wantOriginsAllOf != "" && m.Origin != tc.wantOriginsAllOf {
					t.Errorf("%s %s: origin %q, want %q", tc.n.id, tc.pattern, m.Origin, tc.wantOriginsAllOf)
				}
			}
		}
		if !equalStrings(got, tc.want) && !(tc.n == c && sameSet(got, tc.want)) {
			t.Errorf("%s on %s got %v, want %v", tc.n.id, tc.pattern, got, tc.want)
		}
	}
	if got := c.count("news.x", ""); got != 0 {
		t.Errorf("C news.x got %d messages, want 0", got)
	}
	if got := b.count("", ""); got != 4 {
		t.Errorf("B got %d messages in all, want 4: %v", got, dump(b.messages()))
	}
}

func TestWildcardPatternsAcrossNodes(t *testing.T) {
	nodes := startMesh(t, 3)
	a, b, c := nodes[0], nodes[1], nodes[2]
	b.mesh.Interest("chat.*")
	c.mesh.Interest("chat.>")
	waitInterest(t, a, "chat.room", 2)
	waitInterest(t, a, "chat.room.deep", 1)

	a.mesh.Publish(context.Background(), "chat.room.deep", []byte(`"deep"`), time.Now())
	a.mesh.Publish(context.Background(), "chat.room", []byte(`"one"`), time.Now())
	a.mesh.Publish(context.Background(), "chat", []byte(`"none"`), time.Now())
	a.mesh.Publish(context.Background(), "chat.last", []byte(`"last"`), time.Now())
	b.waitCount(t, "chat.*", "chat.last", 1)
	c.waitCount(t, "chat.>", "chat.last", 1)

	if got := topicsOf(b.messages()); !equalStrings(got, []string{"chat.room", "chat.last"}) {
		t.Errorf("B (chat.*) got %v", got)
	}
	if got := topicsOf(c.messages()); !equalStrings(got, []string{"chat.room.deep", "chat.room", "chat.last"}) {
		t.Errorf("C (chat.>) got %v", got)
	}
}

func TestNoInterestMeansNoTraffic(t *testing.T) {
	// Heartbeats would add to the counters; with a one-hour interval only the first is sent.
	cfgA := meshConfig()
	cfgA.HeartbeatInterval = config.Duration(time.Hour)
	a := startNode(t, "A", cfgA)
	cfgB := meshConfig(a.mesh.RouteAddr())
	cfgB.HeartbeatInterval = config.Duration(time.Hour)
	b := startNode(t, "B", cfgB)
	cfgC := meshConfig(a.mesh.RouteAddr())
	cfgC.HeartbeatInterval = config.Duration(time.Hour)
	c := startNode(t, "C", cfgC)

	b.mesh.Interest("wanted.b")
	c.mesh.Interest("wanted.c")
	waitInterest(t, a, "wanted.b", 1)
	waitInterest(t, a, "wanted.c", 1)
	waitInterest(t, b, "wanted.c", 1)
	varz := func(n *node) (in, out int64) {
		v, err := n.server().Varz(nil)
		if err != nil {
			t.Fatal(err)
		}
		return v.InMsgs, v.OutMsgs
	}
	// Let anything still in flight (the first heartbeats, sent at Start) land: a marker from A
	// to B and C and one from B to C travel behind them on the same connections.
	a.mesh.Publish(context.Background(), "wanted.b", []byte(`"sync"`), time.Now())
	a.mesh.Publish(context.Background(), "wanted.c", []byte(`"sync"`), time.Now())
	b.mesh.Publish(context.Background(), "wanted.c", []byte(`"sync"`), time.Now())
	b.waitCount(t, "wanted.b", "wanted.b", 1)
	c.waitCount(t, "wanted.c", "wanted.c", 2)
	b.reset()
	aIn0, aOut0 := varz(a)
	bIn0, _ := varz(b)
	cIn0, _ := varz(c)

	for i := range 100 {
		a.mesh.Publish(context.Background(), "nobody.here", []byte(strconv.Itoa(i)), time.Now())
	}
	a.mesh.Publish(context.Background(), "wanted.b", []byte(`"marker"`), time.Now())
	b.waitCount(t, "wanted.b", "wanted.b", 1)

	aIn, aOut := varz(a)
	bIn, _ := varz(b)
	cIn, _ := varz(c)
	if aIn-aIn0 != 101 {
		t.Errorf("A took in %d messages from its client, want 101", aIn-aIn0)
	}
	if aOut-aOut0 != 1 {
		t.Errorf("A sent out %d messages, want 1 (only the marker, to B)", aOut-aOut0)
	}
	if bIn-bIn0 != 1 {
		t.Errorf("B took in %d messages, want 1 (the marker)", bIn-bIn0)
	}
	if cIn-cIn0 != 0 {
		t.Errorf("C took in %d messages, want 0 (no interest)", cIn-cIn0)
	}
}

func TestOrderPerPublisherAcrossNodes(t *testing.T) {
	nodes := startMesh(t, 2)
	a, b := nodes[0], nodes[1]
	b.mesh.Interest("seq.*")
	waitInterest(t, a, "seq.n", 1)
	const total = 1000
	for i := range total {
		a.mesh.Publish(context.Background(), "seq.n", []byte(strconv.Itoa(i)), time.Now())
	}
	b.waitCount(t, "seq.*", "seq.n", total)
	for i, m := range b.messages() {
		if string(m.Data) != strconv.Itoa(i) {
			t.Fatalf("message %d carries %s: order broken", i, m.Data)
		}
	}
}

func TestHeadersCarryOriginIngressAndTrace(t *testing.T) {
	nodes := startMesh(t, 2)
	a, b := nodes[0], nodes[1]
	b.mesh.Interest("traced")
	waitInterest(t, a, "traced", 1)

	traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	state, _ := trace.ParseTraceState("vendor=value")
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: traceID, SpanID: spanID,
		TraceFlags: trace.FlagsSampled, TraceState: state})
	ctx := trace.ContextWithSpanContext(context.Background(), sc)
	ingress := time.Unix(1700000000, 123456789)

	a.mesh.Publish(ctx, "traced", []byte(`{"t":1}`), ingress)
	a.mesh.Publish(context.Background(), "traced", []byte(`{"t":2}`), ingress) // no trace
	b.waitCount(t, "traced", "traced", 2)
	got := b.messages()
	m := got[0]
	if m.Origin != "A" {
		t.Errorf("Origin %q, want A", m.Origin)
	}
	if !m.Ingress.Equal(ingress) {
		t.Errorf("Ingress %v, want %v", m.Ingress, ingress)
	}
	rsc := trace.SpanContextFromContext(m.Ctx)
	if !rsc.IsRemote() || rsc.TraceID() != traceID || rsc.SpanID() != spanID || !rsc.IsSampled() {
		t.Errorf("remote span context %+v, want trace %s span %s sampled", rsc, traceID, spanID)
	}
	if rsc.TraceState().Get("vendor") != "value" {
		t.Errorf("tracestate %q lost", rsc.TraceState().String())
	}
	if sc2 := trace.SpanContextFromContext(got[1].Ctx); sc2.IsValid() {
		t.Errorf("untraced message has span context %v (pooled headers leaked)", sc2)
	}
	if got[1].Ctx == nil {
		t.Error("Ctx is nil")
	}
}

func TestPlainNATSClientReachesDeliver(t *testing.T) {
	nodes := startMesh(t, 2)
	a, b := nodes[0], nodes[1]
	b.mesh.Interest("news.>")
	waitInterest(t, a, "news.today", 1)

	url := a.mesh.ClientURL()
	if url == "" {
		t.Fatal("clustered node has no ClientURL")
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	before := time.Now()
	_ = nc.Publish("revenprox.t.news.bad$topic", []byte(`"invalid topic, ignored"`))
	if err := nc.Publish("revenprox.t.news.today", []byte("raw bytes")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	b.waitCount(t, "news.>", "news.today", 1)
	got := b.messages()
	if len(got) != 1 {
		t.Fatalf("got %v, want only the valid topic", dump(got))
	}
	m := got[0]
	if m.Origin != "" || string(m.Data) != "raw bytes" || m.Ingress.Before(before) || m.Ctx == nil {
		t.Errorf("got origin %q data %q ingress %v", m.Origin, m.Data, m.Ingress)
	}
}

func TestSlowConsumerIsCountedAndRecovers(t *testing.T) {
	nodes := startMesh(t, 2)
	a, b := nodes[0], nodes[1]
	b.mesh.Interest("flood")
	waitInterest(t, a, "flood", 1)
	block := make(chan struct{})
	b.mu.Lock()
	b.block = block
	b.mu.Unlock()

	const total = deliverQueueLen + 5000
	for i := range total {
		a.mesh.Publish(context.Background(), "flood", []byte(strconv.Itoa(i)), time.Now())
	}
	dropped := func() float64 {
		return testutilCounter(b.metrics.MessagesDropped.WithLabelValues(telemetry.DropNATS))
	}
	eventually(t, 10*time.Second, "slow-consumer drops to be counted", func() bool { return dropped() > 0 })
	b.mu.Lock()
	close(block)
	b.block = nil
	b.mu.Unlock()

	// Recovered: a new message gets through without restarting anything.
	a.mesh.Publish(context.Background(), "flood", []byte(`"after"`), time.Now())
	eventually(t, 10*time.Second, "delivery after the slow-consumer episode", func() bool {
		ms := b.messages()
		return len(ms) > 0 && string(ms[len(ms)-1].Data) == `"after"`
	})
	delivered := len(b.messages())
	eventually(t, 5*time.Second, "every drop to be counted", func() bool {
		return int(dropped())+delivered == total+1
	})
}

func TestInterestBeforeStartAndShutdownTwice(t *testing.T) {
	metrics := telemetry.NewMetrics()
	cfg := meshConfig()
	var got []*Message
	done := make(chan struct{})
	m, err := New(Options{Config: cfg, NodeID: "early", Metrics: metrics, Log: testLogger(t),
		Deliver: func(msg *Message) { got = append(got, msg); close(done) }})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Shutdown(context.Background()); err != nil { // before Start: a no-op
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Start after Shutdown: %v, want ErrClosed", err)
	}

	m, err = New(Options{Config: cfg, NodeID: "early", Metrics: metrics, Log: testLogger(t),
		Deliver: func(msg *Message) { got = append(got, msg); close(done) }})
	if err != nil {
		t.Fatal(err)
	}
	m.Interest("early.bird")
	m.Interest("early.bird") // idempotent
	m.Uninterest("never.subscribed")
	if m.Connected() {
		t.Error("Connected before Start")
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); !errors.Is(err, ErrStarted) {
		t.Errorf("second Start: %v, want ErrStarted", err)
	}
	if m.Patterns() != 1 {
		t.Errorf("Patterns = %d, want 1", m.Patterns())
	}
	nc, err := nats.Connect(m.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.Publish("revenprox.t.early.bird", []byte(`1`)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("pattern registered before Start got nothing")
	}
	if err := m.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := m.Shutdown(context.Background()); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if m.Connected() {
		t.Error("Connected after Shutdown")
	}
	// After Shutdown everything is a harmless no-op.
	m.Interest("late")
	m.Uninterest("early.bird")
	m.Publish(context.Background(), "late", []byte(`1`), time.Now())
	if len(got) != 1 {
		t.Errorf("delivered %d, want 1", len(got))
	}
}

func TestRouteListenerInUseFailsStart(t *testing.T) {
	a := startNode(t, "A", meshConfig())
	cfg := meshConfig()
	cfg.Listen = a.mesh.RouteAddr()
	m, err := New(Options{Config: cfg, NodeID: "B", Metrics: telemetry.NewMetrics(), Log: testLogger(t), Deliver: func(*Message) {}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := m.Start(ctx); !errors.Is(err, ErrServer) {
		t.Fatalf("Start on a busy route port: %v, want ErrServer", err)
	}
	if err := m.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// newStandaloneNATS runs a plain NATS server on a random loopback port, as an external NATS.
func newStandaloneNATS(t testing.TB) *server.Server {
	t.Helper()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true, NoSystemAccount: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("standalone NATS not ready")
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	return srv
}

func TestExternalNATS(t *testing.T) {
	ext := newStandaloneNATS(t)
	cfg := config.Default().Cluster
	cfg.NATSURL = ext.ClientURL()
	cfg.HeartbeatInterval = config.Duration(testHeartbeat)
	a := startNode(t, "A", cfg)
	b := startNode(t, "B", cfg)
	if a.mesh.Mode() != ModeExternal || a.mesh.ClientURL() != cfg.NATSURL || a.server() != nil {
		t.Fatalf("mode %q url %q server %v: want external, nothing embedded", a.mesh.Mode(), a.mesh.ClientURL(), a.server())
	}
	waitPeers(t, a, b)
	if !a.mesh.Connected() || !b.mesh.Connected() {
		t.Fatal("not connected")
	}

	b.mesh.Interest("ext.*")
	a.mesh.Interest("ext.*")
	eventually(t, 10*time.Second, "interest on the external server", func() bool {
		return ext.GlobalAccount().Interest("revenprox.t.ext.x") >= 2
	})
	a.mesh.Publish(context.Background(), "ext.x", []byte(`"from A"`), time.Now())
	b.mesh.Publish(context.Background(), "ext.x", []byte(`"from B"`), time.Now())
	b.waitCount(t, "ext.*", "ext.x", 1)
	a.waitCount(t, "ext.*", "ext.x", 1)
	if ms := a.messages(); len(ms) != 1 || ms[0].Origin != "B" {
		t.Errorf("A got %v, want only B's message", dump(ms))
	}
	if ms := b.messages(); len(ms) != 1 || ms[0].Origin != "A" {
		t.Errorf("B got %v, want only A's message", dump(ms))
	}
}

func TestExternalNATSUnreachableStartsAndRetries(t *testing.T) {
	ext := newStandaloneNATS(t)
	url := ext.ClientURL()
	ext.Shutdown()
	ext.WaitForShutdown()

	cfg := config.Default().Cluster
	cfg.NATSURL = url
	cfg.HeartbeatInterval = config.Duration(testHeartbeat)
	n := startNode(t, "lonely", cfg)
	if n.mesh.Connected() {
		t.Fatal("Connected with the external NATS down")
	}
	// Publishing while disconnected never blocks or fails the caller.
	n.mesh.Publish(context.Background(), "x", []byte(`1`), time.Now())
	if v := n.mesh.View(); v.Connected || len(v.Nodes) != 1 {
		t.Errorf("view %+v", v)
	}

	// NATS comes up on that address: the node connects by itself and carries messages.
	port, err := strconv.Atoi(url[strings.LastIndexByte(url, ':')+1:])
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, NoSigs: true, NoLog: true, NoSystemAccount: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS not ready")
	}
	eventually(t, 10*time.Second, "the node to connect to the late NATS", n.mesh.Connected)
	n.mesh.Interest("late.x")
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	eventually(t, 10*time.Second, "a plain client's message to arrive", func() bool {
		_ = nc.Publish("revenprox.t.late.x", []byte(`1`))
		return n.count("late.x", "late.x") > 0
	})
}

// TestDeliverDoneEndsEveryBurst: DeliverDone runs on the dispatcher after the messages that were
// waiting, so a receiver that batches its writes per burst never leaves a message unwritten.
func TestDeliverDoneEndsEveryBurst(t *testing.T) {
	cfg := meshConfig() // a one-node mesh: a single node does not subscribe in NATS at all
	var mu sync.Mutex
	delivered, flushed, bursts := 0, 0, 0
	m, err := New(Options{Config: cfg, NodeID: "burst", Metrics: telemetry.NewMetrics(), Log: testLogger(t),
		Deliver:     func(*Message) { mu.Lock(); delivered++; mu.Unlock() },
		DeliverDone: func() { mu.Lock(); flushed, bursts = delivered, bursts+1; mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	m.Interest("b.x")
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = m.Shutdown(context.Background()) }()
	other, err := nats.Connect("", nats.InProcessServer(m.srv))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	const count = 500
	for i := range count {
		if err := other.Publish("revenprox.t.b.x", []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "every message delivered and followed by DeliverDone", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return flushed == count
	})
	mu.Lock()
	defer mu.Unlock()
	if bursts > count {
		t.Errorf("%d DeliverDone calls for %d messages", bursts, count)
	}
}

func TestClusteredNodeConnectsThroughItsLoopbackPort(t *testing.T) {
	for _, listen := range []string{"127.0.0.1:0", "0.0.0.0:0", "[::]:0"} {
		t.Run(listen, func(t *testing.T) {
			cfg := meshConfig()
			cfg.ClientListen = listen
			n := startNode(t, "tcp", cfg)
			url := n.mesh.ClientURL()
			if !strings.HasPrefix(url, "nats://127.0.0.1:") {
				t.Fatalf("ClientURL = %q, want a loopback URL", url)
			}
			if got := n.mesh.nc.Load().ConnectedUrl(); got != url {
				t.Errorf("node connected to %q, want its own client port %q", got, url)
			}
		})
	}
}

func TestLoopbackURL(t *testing.T) {
	for _, tc := range []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 4222}, "nats://127.0.0.1:4222"},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 4222}, "nats://127.0.0.1:4222"},
		{&net.TCPAddr{Port: 4222}, "nats://127.0.0.1:4222"},
		{&net.TCPAddr{IP: net.IPv6unspecified, Port: 4222}, "nats://127.0.0.1:4222"},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 4222}, "nats://[::1]:4222"},
		{&net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 5}, "nats://10.1.2.3:5"},
		{&net.UnixAddr{Name: "/tmp/x", Net: "unix"}, "nats:///tmp/x"},
		{nil, ""},
	} {
		if got := loopbackURL(tc.addr); got != tc.want {
			t.Errorf("loopbackURL(%v) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}

// TestOwnConnectionDropRecovers: when a node's server drops the node's own connection, nats.go
// reconnects to that same server (never to a peer's advertised one), the pattern subscriptions
// come back, and cross-node delivery resumes without restarting anything.
func TestOwnConnectionDropRecovers(t *testing.T) {
	nodes := startMesh(t, 2)
	a, b := nodes[0], nodes[1]
	b.mesh.Interest("drop.x")
	waitInterest(t, a, "drop.x", 1)
	own := b.mesh.ClientURL()

	nc := b.mesh.nc.Load()
	cid, err := nc.GetClientID()
	if err != nil {
		t.Fatal(err)
	}
	if err := b.server().DisconnectClientByID(cid); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "B to reconnect", func() bool {
		return nc.Stats().Reconnects >= 1 && b.mesh.Connected()
	})
	if got := nc.ConnectedUrl(); got != own {
		t.Errorf("B reconnected to %q, want its own server %q", got, own)
	}
	// The subscription is restored on B's server and routed to A again.
	eventually(t, 10*time.Second, "delivery after the reconnect", func() bool {
		a.mesh.Publish(context.Background(), "drop.x", []byte(`1`), time.Now())
		return b.count("drop.x", "drop.x") > 0
	})
}
