package proxy

import (
	"fmt"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/revenprox/revenprox/config"
	"github.com/revenprox/revenprox/telemetry"
	"github.com/revenprox/revenprox/topics"
)

// discardConn is an in-memory socket that accepts every write: benchmarks measure the node's
// own fan-out and queue cost, not the kernel's.
type discardConn struct {
	net.Conn
	written atomic.Int64
}

func (d *discardConn) Write(p []byte) (int, error)      { d.written.Add(int64(len(p))); return len(p), nil }
func (d *discardConn) SetWriteDeadline(time.Time) error { return nil }
func (d *discardConn) SetReadDeadline(time.Time) error  { return nil }
func (d *discardConn) Close() error                     { return nil }
func (d *discardConn) writtenBytes() int64              { return d.written.Load() }
func (d *discardConn) tryWrite(p []byte) (int, error)   { return d.Write(p) }

// memNode is the fan-out machinery of a node without sockets or listeners.
type memNode struct {
	srv   *Server
	conns []*conn
	sink  *discardConn
}

func newMemNode(tb testing.TB, connections int) *memNode {
	tb.Helper()
	cfg := config.Default()
	s := &Server{cfg: cfg, metrics: telemetry.NewMetrics()}
	s.index = topics.NewIndex[*conn](topics.IndexOptions{})
	m := &memNode{srv: s, sink: &discardConn{}}
	m.conns = make([]*conn, connections)
	for i := range m.conns {
		c := &conn{srv: s, id: uint64(i)}
		c.out = outbound{netConn: m.sink, try: m.sink, maxBytes: cfg.Backpressure.QueueBytes, policy: cfg.Backpressure.Policy, metrics: s.metrics}
		m.conns[i] = c
	}
	return m
}

// fanout runs the node's fan-out and writes the queues it made busy, as a publish does.
func (m *memNode) fanout(topic string, data []byte, ingress time.Time) {
	writers := getWriterList()
	m.srv.fanout(topic, data, ingress, writers)
	flushWriters(writers)
}

// waitDrained blocks until every writer has finished.
func (m *memNode) waitDrained() {
	for _, c := range m.conns {
		for {
			c.out.mu.Lock()
			busy := c.out.writing || len(c.out.frames) > 0
			c.out.mu.Unlock()
			if !busy {
				break
			}
			runtime.Gosched()
		}
	}
}

// BenchmarkFanout10k publishes to one topic with 10,000 local subscribers; every delivery goes
// through a real outbound queue and writer into an in-memory socket. The latency=off variant
// replaces message_latency_seconds with a no-op to show what recording it costs.
func BenchmarkFanout10k(b *testing.B) {
	b.Run("latency=on", func(b *testing.B) { benchmarkFanout10k(b, false) })
	b.Run("latency=off", func(b *testing.B) { benchmarkFanout10k(b, true) })
}

// noopHistogram stands in for a histogram that records nothing.
type noopHistogram struct{ prometheus.Histogram }

func (noopHistogram) Observe(float64) {}

func benchmarkFanout10k(b *testing.B, noLatency bool) {
	m := newMemNode(b, 10000)
	if noLatency {
		m.srv.metrics.MessageLatency = noopHistogram{}
	}
	for _, c := range m.conns {
		m.srv.index.Subscribe("room.lobby", c)
	}
	data := []byte(`{"text":"hello, this is a hundred byte payload for the fan-out benchmark of revenprox...."}`)
	ingress := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		m.fanout("room.lobby", data, ingress)
	}
	m.waitDrained()
	b.StopTimer()
	deliveries := float64(b.N) * float64(len(m.conns))
	b.ReportMetric(b.Elapsed().Seconds()*1e9/deliveries, "ns/delivery")
}

// BenchmarkFanout100kTopics holds 100,000 connections each subscribed to its own topic (100,000
// topics) plus a wildcard subscriber per 1,000 topics, and publishes to random topics.
func BenchmarkFanout100kTopics(b *testing.B) {
	const n = 100000
	m := newMemNode(b, n)
	for i, c := range m.conns {
		m.srv.index.Subscribe(fmt.Sprintf("user.%d.inbox", i), c)
		if i%1000 == 0 {
			m.srv.index.Subscribe(fmt.Sprintf("user.%d.>", i+1), c)
		}
	}
	topicNames := make([]string, 1024)
	for i := range topicNames {
		topicNames[i] = fmt.Sprintf("user.%d.inbox", (i*7919)%n)
	}
	data := []byte(`{"text":"hi"}`)
	ingress := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		m.fanout(topicNames[i%len(topicNames)], data, ingress)
	}
	m.waitDrained()
}

// BenchmarkFanoutParallel publishes from all cores to 100 topics × 100 subscribers: no global
// lock on the publish path.
func BenchmarkFanoutParallel(b *testing.B) {
	m := newMemNode(b, 10000)
	for i, c := range m.conns {
		m.srv.index.Subscribe(fmt.Sprintf("t.%d", i%100), c)
	}
	data := []byte(`{"n":1}`)
	ingress := time.Now()
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.fanout(fmt.Sprintf("t.%d", next.Add(1)%100), data, ingress)
		}
	})
	m.waitDrained()
	b.StopTimer()
	b.ReportMetric(b.Elapsed().Seconds()*1e9/(float64(b.N)*100), "ns/delivery")
}

func BenchmarkEncodeMessageFrame(b *testing.B) {
	data := []byte(`{"text":"hello, this is a hundred byte payload for the fan-out benchmark of revenprox....."}`)
	b.ReportAllocs()
	for range b.N {
		_ = encodeMessageFrame("chat.room.lobby", "chat.room.*", data, 1763800000123)
	}
}

func BenchmarkDecodeClientFrame(b *testing.B) {
	msg := []byte(`{"op":"publish","topic":"chat.room.lobby","data":{"text":"hello"},"id":42}`)
	b.ReportAllocs()
	for range b.N {
		if _, err := decodeClientFrame(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// TestMemNodeDeliversEveryFrame checks the benchmark harness itself: every delivery reaches the
// in-memory socket.
func TestMemNodeDeliversEveryFrame(t *testing.T) {
	m := newMemNode(t, 100)
	for _, c := range m.conns {
		m.srv.index.Subscribe("a.b", c)
	}
	for range 10 {
		m.fanout("a.b", []byte(`1`), time.Now())
	}
	m.waitDrained()
	frame := len(encodeMessageFrame("a.b", "a.b", []byte(`1`), time.Now().UnixMilli()))
	if got, want := m.sink.writtenBytes(), int64(100*10*frame); got != want {
		t.Fatalf("wrote %d bytes, want %d", got, want)
	}
}
