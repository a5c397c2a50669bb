package loadgen

import (
	"encoding/json"
	"sync"
	"testing"
)

func TestPercentilesOfKnownValues(t *testing.T) {
	h := NewHist()
	for v := int64(1); v <= 1000; v++ {
		recordMicros(h, v)
	}
	p := Summarize(h)
	// 3 significant figures: values up to 1000 are exact (within 1).
	check := func(name string, got, want int64) {
		t.Helper()
		if got < want-1 || got > want+1 {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
	check("p50", p.P50, 500)
	check("p90", p.P90, 900)
	check("p99", p.P99, 990)
	check("p99.9", p.P999, 999)
	check("max", p.Max, 1000)
	if p.Count != 1000 {
		t.Errorf("count %d", p.Count)
	}
}

func TestPercentilesSkewedAndClamped(t *testing.T) {
	h := NewHist()
	for i := 0; i < 990; i++ {
		recordMicros(h, 100)
	}
	for i := 0; i < 10; i++ {
		recordMicros(h, 50_000) // 50 ms tail: 1%
	}
	recordMicros(h, -5)   // clock skew between processes: clamped to 1 µs
	recordMicros(h, 1e12) // beyond range: clamped to the highest trackable
	p := Summarize(h)
	if p.P50 != 100 || p.P90 != 100 {
		t.Errorf("p50/p90 = %d/%d, want 100", p.P50, p.P90)
	}
	if p.P999 < 49_900 || p.P999 > 50_100 {
		t.Errorf("p99.9 = %d, want ≈ 50000", p.P999)
	}
	if p.Max < histHighest*999/1000 {
		t.Errorf("max = %d, want ≈ %d", p.Max, histHighest)
	}
	if Summarize(NewHist()) != (Percentiles{}) {
		t.Error("empty histogram has percentiles")
	}
}

func TestHistJSONRoundTripAndMerge(t *testing.T) {
	a, b := NewHist(), NewHist()
	for v := int64(1); v <= 500; v++ {
		recordMicros(a, v)
	}
	for v := int64(501); v <= 1000; v++ {
		recordMicros(b, v)
	}
	encA, encB := EncodeHist(a), EncodeHist(b)
	raw, err := json.Marshal(encA)
	if err != nil {
		t.Fatal(err)
	}
	var back Hist
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if !back.Decode().Equals(a) {
		t.Fatal("JSON round trip changed the histogram")
	}
	m := MergeHist(&back, encB).Decode()
	if m.TotalCount() != 1000 || Summarize(m).P50 < 499 || Summarize(m).P50 > 501 {
		t.Fatalf("merged: count %d p50 %d", m.TotalCount(), Summarize(m).P50)
	}
	if MergeHist(nil, encB) != encB || MergeHist(encA, nil) != encA {
		t.Fatal("merge with nil should return the other")
	}
}

func TestShardedHistConcurrent(t *testing.T) {
	s := NewShardedHist(4)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				s.Record(g, int64(i+1))
			}
		}(g)
	}
	wg.Wait()
	if n := s.Merged().TotalCount(); n != 8000 {
		t.Fatalf("count %d", n)
	}
}

func BenchmarkShardedHistRecord(b *testing.B) {
	s := NewShardedHist(16)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		s.Record(i, int64(i%100000))
	}
}
