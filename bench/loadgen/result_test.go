package loadgen

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func workerResult(pubPerTopic, subPerTopic []int64, unique, dup int64, lats ...int64) *Result {
	h := NewHist()
	for _, v := range lats {
		recordMicros(h, v)
	}
	return &Result{
		Scenario: ScenarioFanout, Target: TargetNATS, Workers: 1,
		Connect:            ConnectStats{Attempted: 10, Established: 9, Failed: 1, Failures: map[string]int64{"http_503": 1}, StartNanos: 100, EndNanos: 1e9 + 100},
		PublishedPerTopic:  pubPerTopic,
		SubscribedPerTopic: subPerTopic,
		Seq:                SeqCounts{Received: unique + dup, Unique: unique, Duplicates: dup},
		Latency:            EncodeHist(h),
		FirstSendNanos:     1e9, LastSendNanos: 2e9, LastRecvNanos: 3e9,
	}
}

func TestMergeAcrossWorkers(t *testing.T) {
	// Worker 0 published 10 to topic 0, worker 1 published 5 to topic 1; each holds some of
	// the subscribers of each topic.
	a := workerResult([]int64{10, 0}, []int64{2, 1}, 25, 1, 100, 200)
	b := workerResult([]int64{0, 5}, []int64{1, 3}, 30, 0, 300)
	b.FirstSendNanos, b.LastRecvNanos = 5e8, 4e9
	b.Connect.StartNanos = 50
	var m Result
	m.Merge(a)
	m.Merge(b)
	if m.Workers != 2 || m.Connect.Established != 18 || m.Connect.Failures["http_503"] != 2 {
		t.Fatalf("connect merge: %+v", m.Connect)
	}
	// Expected: topic 0: 10 publishes x 3 subscriptions; topic 1: 5 x 4.
	if e := m.Expected(); e != 50 {
		t.Fatalf("expected %d, want 50", e)
	}
	s := m.Summary()
	if s.Received != 56 || s.Duplicates != 1 || s.Lost != 0 {
		t.Fatalf("summary %+v", s)
	}
	if m.FirstSendNanos != 5e8 || m.LastRecvNanos != 4e9 || m.Connect.StartNanos != 50 {
		t.Fatalf("time bounds: %d %d %d", m.FirstSendNanos, m.LastRecvNanos, m.Connect.StartNanos)
	}
	if s.Latency.Count != 3 || s.Latency.Max < 299 || s.Latency.Max > 301 {
		t.Fatalf("latency merge %+v", s.Latency)
	}
	// 56 deliveries over 3.5 s.
	if s.DeliveriesPerSec < 15.9 || s.DeliveriesPerSec > 16.1 {
		t.Fatalf("deliveries/s %f", s.DeliveriesPerSec)
	}
	if s.Refusals != 2 || !strings.Contains(s.Verdict, "SERVER REFUSED") {
		t.Fatalf("refusals %d verdict %q", s.Refusals, s.Verdict)
	}
}

func TestSummaryLossesAndServerFigures(t *testing.T) {
	r := workerResult([]int64{100}, []int64{10}, 990, 0, 1)
	r.Connect.Failures = nil
	r.Server = &ServerStats{RSSBaselineKiB: 1000, RSSKiB: 1000 + 9*8, CPUSeconds: 0.00099, Dropped: 3}
	s := r.Summary()
	if s.Lost != 10 {
		t.Errorf("lost %d, want 10", s.Lost)
	}
	if s.RSSPerConnKiB != 8 {
		t.Errorf("rss/conn %f, want 8", s.RSSPerConnKiB)
	}
	if s.CPUPerDelivery < 0.999 || s.CPUPerDelivery > 1.001 {
		t.Errorf("cpu/delivery %f, want 1", s.CPUPerDelivery)
	}
	if !strings.Contains(s.Verdict, "10 deliveries lost") || !strings.Contains(s.Verdict, "dropped 3") {
		t.Errorf("verdict %q", s.Verdict)
	}
	var buf bytes.Buffer
	r.WriteTable(&buf)
	for _, want := range []string{"990 received / 1000 expected, 10 lost", "8.00 KiB per connection", "verdict"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, buf.String())
		}
	}
}

func TestResultJSONRoundTrip(t *testing.T) {
	r := workerResult([]int64{1, 2}, []int64{3, 4}, 11, 0, 5, 6, 7)
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Result
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Expected() != r.Expected() || back.Summary().Latency != r.Summary().Latency {
		t.Fatal("JSON round trip changed the result")
	}
}

func TestReasonAndServerRefusal(t *testing.T) {
	if Reason(&RefusalError{Reason: "http_503"}) != "http_503" || !ServerRefusal("http_503") {
		t.Fatal("http_503")
	}
	if !ServerRefusal("nats_err maximum connections exceeded") || ServerRefusal("timeout") {
		t.Fatal("classification")
	}
}
