package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/revenprox/revenprox/config"
	"github.com/revenprox/revenprox/telemetry"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// net/http keeps idle client connections' goroutines until they time out.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testNode is a whole node on loopback port 0.
type testNode struct {
	*Server
	t    *testing.T
	logs *syncBuffer
	url  string // ws://host:port/ws
	http string // http://host:port
}

// runNode starts a node with anonymous auth on 127.0.0.1:0 and stops it when the test ends.
func runNode(t *testing.T, mutate func(c *config.Config)) *testNode {
	t.Helper()
	return runNodeWith(t, mutate, Options{Version: "test"})
}

// runNodeWith is runNode with explicit Options (Log is always the captured test log).
func runNodeWith(t *testing.T, mutate func(c *config.Config), opts Options) *testNode {
	t.Helper()
	cfg := config.Default()
	cfg.NodeID = "test-1"
	cfg.Listen = "127.0.0.1:0"
	cfg.Auth.AllowAnonymous = true
	cfg.Limits.IPConnectRate = 0
	cfg.DrainTimeout = config.Duration(5 * time.Second)
	if mutate != nil {
		mutate(&cfg)
	}
	logs := &syncBuffer{}
	log, err := telemetry.NewLogger(logs, "debug", "text", cfg.NodeID)
	if err != nil {
		t.Fatal(err)
	}
	opts.Log = log
	srv, err := New(cfg, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	n := &testNode{Server: srv, t: t, logs: logs, url: "ws://" + srv.Addr() + "/ws", http: "http://" + srv.Addr()}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return n
}

// client is a real WebSocket client.
type client struct {
	t  *testing.T
	ws *websocket.Conn
}

type serverFrame struct {
	Op             string          `json:"op"`
	ID             json.RawMessage `json:"id"`
	Code           string          `json:"code"`
	Message        string          `json:"message"`
	Topic          string          `json:"topic"`
	Sub            string          `json:"sub"`
	Data           json.RawMessage `json:"data"`
	TS             int64           `json:"ts"`
	ConnID         string          `json:"conn_id"`
	Node           string          `json:"node"`
	PingIntervalMs int64           `json:"ping_interval_ms"`
}

// dial connects and consumes the welcome frame.
func (n *testNode) dial(t *testing.T) *client {
	t.Helper()
	c := n.dialRaw(t, nil)
	if f := c.read(); f.Op != "welcome" {
		t.Fatalf("first frame = %+v, want welcome", f)
	}
	return c
}

func (n *testNode) dialRaw(t *testing.T, header http.Header) *client {
	t.Helper()
	ws, resp, err := websocket.DefaultDialer.Dial(n.url, header)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial: %v (HTTP %d)", err, status)
	}
	c := &client{t: t, ws: ws}
	t.Cleanup(func() { _ = ws.Close() })
	return c
}

// dialStatus tries to connect and returns the HTTP status of a refused upgrade (101 on success).
func (n *testNode) dialStatus(t *testing.T) int {
	t.Helper()
	ws, resp, err := websocket.DefaultDialer.Dial(n.url, nil)
	if err == nil {
		_ = ws.Close()
		return http.StatusSwitchingProtocols
	}
	if resp == nil {
		t.Fatalf("dial failed without response: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

func (c *client) send(frame string) {
	c.t.Helper()
	if err := c.ws.WriteMessage(websocket.TextMessage, []byte(frame)); err != nil {
		c.t.Fatalf("write %s: %v", frame, err)
	}
}

// read returns the next frame within 5 s.
func (c *client) read() serverFrame {
	c.t.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, msg, err := c.ws.ReadMessage()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	var f serverFrame
	if err := json.Unmarshal(msg, &f); err != nil {
		c.t.Fatalf("server sent invalid JSON %q: %v", msg, err)
	}
	return f
}

// readRaw returns the next frame's bytes.
func (c *client) readRaw() []byte {
	c.t.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, msg, err := c.ws.ReadMessage()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return msg
}

// request sends a frame and returns the reply (skipping message frames).
func (c *client) request(frame string) serverFrame {
	c.t.Helper()
	c.send(frame)
	for {
		f := c.read()
		if f.Op != "message" {
			return f
		}
	}
}

func (c *client) subscribe(topic string) {
	c.t.Helper()
	if f := c.request(fmt.Sprintf(`{"op":"subscribe","topic":%q,"id":"s"}`, topic)); f.Op != "ack" {
		c.t.Fatalf("subscribe %s: %+v", topic, f)
	}
}

// closeCode reads until the connection closes and returns the close code (1006 when the
// socket dropped without a close frame).
func (c *client) closeCode(within time.Duration) int {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		_ = c.ws.SetReadDeadline(deadline)
		_, _, err := c.ws.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if ok := asCloseError(err, &ce); ok {
			return ce.Code
		}
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			c.t.Fatalf("connection still open after %v", within)
		}
		return websocket.CloseAbnormalClosure
	}
}

func asCloseError(err error, target **websocket.CloseError) bool {
	ce, ok := err.(*websocket.CloseError)
	if ok {
		*target = ce
	}
	return ok
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// value reads a metric from the node's registry.
func metricValue(t *testing.T, n *testNode, name string, labels ...string) float64 {
	t.Helper()
	m := n.Metrics()
	switch name {
	case "connections_active":
		return testutil.ToFloat64(m.ConnectionsActive)
	case "connections_total":
		return testutil.ToFloat64(m.ConnectionsTotal)
	case "connections_rejected_total":
		return testutil.ToFloat64(m.ConnectionsRejected.WithLabelValues(labels...))
	case "messages_received_total":
		return testutil.ToFloat64(m.MessagesReceived.WithLabelValues(labels...))
	case "messages_sent_total":
		return testutil.ToFloat64(m.MessagesSent)
	case "messages_dropped_total":
		return testutil.ToFloat64(m.MessagesDropped.WithLabelValues(labels...))
	case "topics_active":
		return testutil.ToFloat64(m.TopicsActive)
	}
	t.Fatalf("unknown metric %s", name)
	return 0
}

func getJSON(t *testing.T, url string, into any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if into != nil {
		if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
			t.Fatalf("GET %s: decode: %v", url, err)
		}
	}
	return resp.StatusCode
}
