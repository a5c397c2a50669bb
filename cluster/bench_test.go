package cluster

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"golang.org/x/sys/unix"

	"github.com/revenprox/revenprox/config"
	"github.com/revenprox/revenprox/telemetry"
)

// BenchmarkCrossNodePublish measures one publication from mesh A to a subscriber pattern on
// mesh B over a real route on loopback: Publish (headers, pooled message), routing, decode and
// Deliver. allocs/op counts both sides, since both meshes live in this process.
//
//	go test -run '^$' -bench CrossNodePublish -benchtime 200000x ./cluster/
func BenchmarkCrossNodePublish(b *testing.B) {
	var delivered atomic.Int64
	a := startBenchNode(b, "A", meshConfig(), func(*Message) {})
	recv := startBenchNode(b, "B", meshConfig(a.mesh.RouteAddr()), func(*Message) { delivered.Add(1) })
	waitPeers(b, a, recv)
	recv.mesh.Interest("bench.>")
	waitInterest(b, a, "bench.x", 1)

	payload := []byte(`{"text":"hello from a benchmark","n":12345}`)
	ctx := context.Background()
	// Stay within the receive queue so the figure is delivered messages, not slow-consumer drops.
	const window = deliverQueueLen / 2
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		a.mesh.Publish(ctx, "bench.x", payload, time.Now())
		if i%1024 == 0 {
			for int64(i)-delivered.Load() > window {
				time.Sleep(50 * time.Microsecond)
			}
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for delivered.Load() < int64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("delivered %d of %d (dropped: %v)", delivered.Load(), b.N,
				testutilCounter(recv.metrics.MessagesDropped.WithLabelValues(telemetry.DropNATS)))
		}
		time.Sleep(50 * time.Microsecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

// BenchmarkPublishNoInterest is the cost a node pays per publication that no other node
// wants: the NATS publish only (the server drops it).
func BenchmarkPublishNoInterest(b *testing.B) {
	a := startBenchNode(b, "A", meshConfig(), func(*Message) {})
	payload := []byte(`{"text":"hello"}`)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		a.mesh.Publish(ctx, "nobody.listens", payload, time.Now())
	}
}

func startBenchNode(b *testing.B, id string, cfg config.ClusterConfig, deliver func(*Message)) *node {
	b.Helper()
	n := &node{id: id, metrics: telemetry.NewMetrics()}
	m, err := New(Options{Config: cfg, NodeID: id, Version: "bench", Metrics: n.metrics, Deliver: deliver})
	if err != nil {
		b.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	n.mesh = m
	b.Cleanup(func() { n.stop(b) })
	return n
}

// BenchmarkCrossNodeLatency paces publications from A at 10,000/s and reports the latency from
// Publish to Deliver on B (the mesh's share of cross-node delivery latency; WebSocket write
// time is measured by revenprox-bench) and the CPU this process spent per message: both
// meshes, both embedded NATS servers and the route between them, i.e. what one cross-node
// message costs a cluster at a rate where nothing batches.
//
//	go test -run '^$' -bench CrossNodeLatency -benchtime 20000x ./cluster/
func BenchmarkCrossNodeLatency(b *testing.B) {
	hist := hdrhistogram.New(1, int64(10*time.Second/time.Microsecond), 3)
	var mu sync.Mutex
	var delivered atomic.Int64
	a := startBenchNode(b, "A", meshConfig(), func(*Message) {})
	recv := startBenchNode(b, "B", meshConfig(a.mesh.RouteAddr()), func(m *Message) {
		us := time.Since(m.Ingress).Microseconds()
		mu.Lock()
		_ = hist.RecordValue(max(us, 1))
		mu.Unlock()
		delivered.Add(1)
	})
	waitPeers(b, a, recv)
	recv.mesh.Interest("lat.*")
	waitInterest(b, a, "lat.x", 1)

	payload := []byte(`{"text":"latency probe"}`)
	const rate = 10000
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	cpuBefore := processCPU(b)
	start := time.Now()
	for i := range b.N {
		if due := start.Add(time.Duration(i) * time.Second / rate); time.Until(due) > 0 {
			time.Sleep(time.Until(due))
		}
		a.mesh.Publish(ctx, "lat.x", payload, time.Now())
	}
	deadline := time.Now().Add(30 * time.Second)
	for delivered.Load() < int64(b.N) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	cpu := processCPU(b) - cpuBefore
	mu.Lock()
	defer mu.Unlock()
	b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(b.N), "cpu-us/msg")
	b.ReportMetric(float64(hist.ValueAtQuantile(50)), "p50-us")
	b.ReportMetric(float64(hist.ValueAtQuantile(99)), "p99-us")
	b.ReportMetric(float64(hist.Max()), "max-us")
}

// processCPU is the CPU time (user + system) of this whole process so far.
func processCPU(b *testing.B) time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts); err != nil {
		b.Skipf("clock_gettime(CLOCK_PROCESS_CPUTIME_ID): %v", err)
	}
	return time.Duration(ts.Nano())
}
