package telemetry

import (
	"testing"
	"time"
)

// BenchmarkLatencyObserve is the cost of recording message_latency_seconds once per delivered
// frame, from all cores at once (the writers of many connections record concurrently).
func BenchmarkLatencyObserve(b *testing.B) {
	m := NewMetrics()
	b.Run("observe", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				m.MessageLatency.Observe(0.00042)
			}
		})
	})
	// What the writer does: ingress timestamp (Unix ns from the Rp-Ts header) to now.
	b.Run("since_ingress", func(b *testing.B) {
		ingress := time.Now().UnixNano()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				m.MessageLatency.Observe(float64(time.Now().UnixNano()-ingress) / 1e9)
			}
		})
	})
}
