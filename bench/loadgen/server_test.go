package loadgen

import (
	"os"
	"strings"
	"testing"
)

func TestParseStatCPU(t *testing.T) {
	stat := "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0"
	got, err := parseStatCPU([]byte(stat))
	if err != nil || got != 3.0 {
		t.Fatalf("got %v, %v; want 3 s", got, err)
	}
	if _, err := parseStatCPU([]byte("garbage")); err == nil {
		t.Fatal("garbage parsed")
	}
}

func TestProcOfThisProcess(t *testing.T) {
	rss, err := ProcRSSKiB(os.Getpid())
	if err != nil || rss <= 0 {
		t.Fatalf("rss %d, %v", rss, err)
	}
	if _, err := ProcCPUSeconds(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	if _, err := ProcRSSKiB(-1); err == nil {
		t.Fatal("pid -1 readable")
	}
}

func TestMetricSums(t *testing.T) {
	text := `# HELP revenprox_messages_dropped_total x
# TYPE revenprox_messages_dropped_total counter
revenprox_messages_dropped_total{reason="queue_full"} 3
revenprox_messages_dropped_total{reason="slow_consumer"} 4
revenprox_connections_rejected_total{reason="max_connections"} 7 1700000000000
revenprox_connections_rejected_total{reason="rate_limit"} 1e+00
revenprox_messages_dropped_totalX 100
other_metric 9
`
	m := MetricSums(strings.NewReader(text), map[string]string{metricDropped: "", metricRejected: "reason"})
	if m[metricDropped][""] != 7 {
		t.Errorf("dropped %v", m[metricDropped])
	}
	if m[metricRejected]["max_connections"] != 7 || m[metricRejected]["rate_limit"] != 1 {
		t.Errorf("rejected %v", m[metricRejected])
	}
}
