package main

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/revenprox/revenprox/bench/loadgen"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestMetricsURL(t *testing.T) {
	for in, want := range map[string]string{
		"ws://127.0.0.1:8080/ws":   "http://127.0.0.1:8080/metrics",
		"ws://127.0.0.1:8080":      "http://127.0.0.1:8080/metrics",
		"wss://example.com:443/ws": "https://example.com:443/metrics",
	} {
		if got := metricsURL(in); got != want {
			t.Errorf("%s: got %s want %s", in, got, want)
		}
	}
}

func TestParseFlagsAndWorkerCount(t *testing.T) {
	f, err := parseFlags("idle", []string{"--conns", "40000", "--url", "ws://a/ws,ws://b/ws", "--url", "ws://c/ws"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.o.URLs) != 3 || f.need() != 40000 || (f.need()+f.perWorker-1)/f.perWorker != 3 {
		t.Fatalf("urls %v need %d", f.o.URLs, f.need())
	}
	if f.timeout <= f.o.Duration {
		t.Fatalf("timeout %v not beyond duration", f.timeout)
	}
	if _, err := parseFlags("idle", []string{"stray"}, io.Discard); err == nil {
		t.Fatal("stray argument accepted")
	}
	if code := run([]string{"nope"}, io.Discard, io.Discard); code != 2 {
		t.Fatalf("unknown scenario exit %d", code)
	}
}

func TestWebhookAllowsAndCounts(t *testing.T) {
	wh := &webhookServer{ttl: 60}
	srv := httptest.NewServer(wh)
	defer srv.Close()
	for i := 0; i < 3; i++ {
		resp, err := http.Post(srv.URL+"/verify", "application/json", strings.NewReader(`{"token":"t"}`))
		if err != nil {
			t.Fatal(err)
		}
		var body struct {
			Allow     bool     `json:"allow"`
			TTL       int      `json:"ttl"`
			Subscribe []string `json:"subscribe"`
		}
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if err != nil || !body.Allow || body.TTL != 60 || len(body.Subscribe) != 1 {
			t.Fatalf("answer %+v, %v", body, err)
		}
	}
	resp, err := http.Get(srv.URL + "/count")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.TrimSpace(string(b)) != "3" {
		t.Fatalf("count %q", b)
	}
}

func writeRun(t *testing.T, dir, name string, dps, cpu float64, p99us int64) {
	t.Helper()
	rf := runFile{Result: &loadgen.Result{Scenario: "fanout"}, Summary: loadgen.Summary{DeliveriesPerSec: dps, CPUPerDelivery: cpu, Verdict: "ok"}}
	rf.Summary.Latency.P99 = p99us
	b, _ := json.Marshal(rf)
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestReportMediansRatiosAndMarkers(t *testing.T) {
	dir := t.TempDir()
	writeRun(t, dir, "fanout-revenprox.1.json", 100, 1, 1000)
	writeRun(t, dir, "fanout-revenprox.2.json", 300, 3, 3000)
	writeRun(t, dir, "fanout-revenprox.3.json", 200, 2, 2000)
	writeRun(t, dir, "fanout-nats.1.json", 100, 6, 5000)
	writeRun(t, dir, "fanout-nats.2.json", 100, 6, 5000)
	if err := os.WriteFile(filepath.Join(dir, "broken.1.json"), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := loadRuns(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(r["fanout-revenprox"]) != 3 || len(r["fanout-nats"]) != 2 || len(r["broken"]) != 0 {
		t.Fatalf("grouping: %d %d", len(r["fanout-revenprox"]), len(r["fanout-nats"]))
	}
	if m := r.median("fanout-revenprox", fanoutMetrics[0].f); m != 200 {
		t.Fatalf("median %v", m)
	}
	if !math.IsNaN(median(nil)) || median([]float64{1, 2, 3, 4}) != 2.5 {
		t.Fatal("median of empty / even")
	}

	doc := filepath.Join(dir, "benchmarks.md")
	hand := "# Benchmarks\n\nhand-written intro\n\n" + beginMarker + "\nold\n" + endMarker + "\n\n## Lead notes\nkeep me\n"
	if err := os.WriteFile(doc, []byte(hand), 0o644); err != nil {
		t.Fatal(err)
	}
	if code := reportMain([]string{"--dir", dir, "--out", doc}, io.Discard); code != 0 {
		t.Fatalf("report exit %d", code)
	}
	out, _ := os.ReadFile(doc)
	for _, want := range []string{"hand-written intro", "keep me", "| deliveries/s | 200 | 100 | 2.00× |", "| server CPU µs per delivery | 2.00 | 6.00 | 0.33× |"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("document lacks %q", want)
		}
	}
	if bytes.Contains(out, []byte("\nold\n")) || bytes.Count(out, []byte(beginMarker)) != 1 {
		t.Error("generated block not replaced exactly once")
	}
}

func writeRampRun(t *testing.T, dir, name string, sustainedDPS, cpu1 float64) {
	t.Helper()
	first := loadgen.StepSummary{Step: 1, Rate: 500, DeliveriesPerSec: 50000, CPUPerDelivery: cpu1, Pass: true}
	sus := loadgen.StepSummary{Step: 2, Rate: 750, DeliveriesPerSec: sustainedDPS, CPUPerDelivery: cpu1, Pass: true}
	sus.Latency.P99 = 40_000
	rf := runFile{Result: &loadgen.Result{Scenario: "fanout"}, Summary: loadgen.Summary{Verdict: "ramp sustained",
		Ramp: &loadgen.RampSummary{Steps: []loadgen.StepSummary{first, sus, {Step: 3, Why: "p99 300ms > 100ms"}}, Sustained: &sus, Stop: "step 3 at 1125 publishes/s failed: p99"}}}
	b, _ := json.Marshal(rf)
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestReportRampSustainedRatiosAndTargets(t *testing.T) {
	dir := t.TempDir()
	writeRampRun(t, dir, "fanout-revenprox.1.json", 150000, 4)
	writeRampRun(t, dir, "fanout-revenprox.2.json", 120000, 6)
	writeRampRun(t, dir, "fanout-revenprox.3.json", 90000, 5)
	writeRampRun(t, dir, "fanout-nats.1.json", 60000, 15)
	doc := filepath.Join(dir, "benchmarks.md")
	if code := reportMain([]string{"--dir", dir, "--out", doc}, io.Discard); code != 0 {
		t.Fatalf("report exit %d", code)
	}
	out, _ := os.ReadFile(doc)
	for _, want := range []string{
		"| sustained deliveries/s (last passing step) | 120000 | 60000 | 2.00× |",
		"| server CPU µs per delivery at step 1 | 5.00 | 15.00 | 0.33× |",
		"| server CPU µs per delivery at step 2 | 5.00 | 15.00 | 0.33× |",
		"| fanout: sustained deliveries/s ≥ 1.5× NATS | 2.00× | met |",
		"| fanout: server CPU ≤ 2 µs per delivery (step 2) | 5.00 µs | not met |",
		"`fanout-nats` run 1: step 3 at 1125 publishes/s failed",
	} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("document lacks %q", want)
		}
	}
}

func TestParseFlagsRampAndProfile(t *testing.T) {
	f, err := parseFlags("fanout", []string{"--ramp", "--duration", "4s", "--admin-url", "http://127.0.0.1:1", "--profile", "/tmp/x"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !f.o.Ramp || f.prof.CPUSeconds != 4 || !f.prof.Heap || f.timeout < 8*(4*time.Second) {
		t.Fatalf("ramp %v cpu %d heap %v timeout %v", f.o.Ramp, f.prof.CPUSeconds, f.prof.Heap, f.timeout)
	}
	if _, err := parseFlags("fanout", []string{"--profile", "/tmp/x"}, io.Discard); err == nil {
		t.Fatal("--profile without --admin-url accepted")
	}
	if f, err := parseFlags("idle", []string{"--admin-url", "http://a", "--profile", "/tmp/x"}, io.Discard); err != nil || f.prof.CPUSeconds != 0 {
		t.Fatalf("idle takes no CPU profile: %v %v", f, err)
	}
}
