package loadgen

import (
	"sync"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are recorded in microseconds from 1 µs to 5 minutes with 3 significant figures.
const (
	histLowest  = 1
	histHighest = 5 * 60 * 1_000_000
	histSigFigs = 3
)

// NewHist returns an empty latency histogram in microseconds.
func NewHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(histLowest, histHighest, histSigFigs)
}

// recordMicros records v, clamping it into the histogram's range (a negative latency means
// the clocks of two processes disagreed by a few µs; it is recorded as the lowest value).
func recordMicros(h *hdrhistogram.Histogram, v int64) {
	if v < histLowest {
		v = histLowest
	}
	if v > histHighest {
		v = histHighest
	}
	_ = h.RecordValue(v) // cannot fail: v is in range
}

// ShardedHist spreads recording over several histograms with their own locks so that
// thousands of reader goroutines do not contend on one mutex.
type ShardedHist struct {
	shards []histShard
}

type histShard struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
	_  [40]byte // keep shards on separate cache lines
}

// NewShardedHist returns a histogram with n shards (at least 1).
func NewShardedHist(n int) *ShardedHist {
	if n < 1 {
		n = 1
	}
	s := &ShardedHist{shards: make([]histShard, n)}
	for i := range s.shards {
		s.shards[i].h = NewHist()
	}
	return s
}

// Record records v microseconds into the shard picked by key (e.g. the connection index).
func (s *ShardedHist) Record(key int, v int64) {
	sh := &s.shards[uint(key)%uint(len(s.shards))]
	sh.mu.Lock()
	recordMicros(sh.h, v)
	sh.mu.Unlock()
}

// Merged returns one histogram holding every shard's values.
func (s *ShardedHist) Merged() *hdrhistogram.Histogram {
	out := NewHist()
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		out.Merge(sh.h)
		sh.mu.Unlock()
	}
	return out
}

// Hist is the JSON form of a latency histogram: the geometry and only the non-zero counts, so
// a worker's result stays small.
type Hist struct {
	Lowest  int64      `json:"lowest"`
	Highest int64      `json:"highest"`
	SigFigs int64      `json:"sig_figs"`
	Counts  [][2]int64 `json:"counts"` // (index, count) pairs of the HdrHistogram counts array
}

// EncodeHist converts h to its JSON form; a nil h gives nil.
func EncodeHist(h *hdrhistogram.Histogram) *Hist {
	if h == nil {
		return nil
	}
	snap := h.Export()
	out := &Hist{Lowest: snap.LowestTrackableValue, Highest: snap.HighestTrackableValue, SigFigs: snap.SignificantFigures}
	for i, c := range snap.Counts {
		if c != 0 {
			out.Counts = append(out.Counts, [2]int64{int64(i), c})
		}
	}
	return out
}

// Decode rebuilds the histogram; nil gives an empty latency histogram.
func (e *Hist) Decode() *hdrhistogram.Histogram {
	if e == nil {
		return NewHist()
	}
	h := hdrhistogram.New(e.Lowest, e.Highest, int(e.SigFigs))
	snap := h.Export()
	for _, ic := range e.Counts {
		if ic[0] >= 0 && ic[0] < int64(len(snap.Counts)) {
			snap.Counts[ic[0]] = ic[1]
		}
	}
	return hdrhistogram.Import(snap)
}

// MergeHist merges two JSON histograms.
func MergeHist(a, b *Hist) *Hist {
	if a == nil {
		return b
	}
	if b == nil {
		return a
	}
	h := a.Decode()
	h.Merge(b.Decode())
	return EncodeHist(h)
}

// Percentiles is the summary people read.
type Percentiles struct {
	Count int64   `json:"count"`
	P50   int64   `json:"p50_us"`
	P90   int64   `json:"p90_us"`
	P99   int64   `json:"p99_us"`
	P999  int64   `json:"p99_9_us"`
	Max   int64   `json:"max_us"`
	Mean  float64 `json:"mean_us"`
}

// Summarize reads the percentiles of h (values in microseconds).
func Summarize(h *hdrhistogram.Histogram) Percentiles {
	if h == nil || h.TotalCount() == 0 {
		return Percentiles{}
	}
	return Percentiles{
		Count: h.TotalCount(),
		P50:   h.ValueAtQuantile(50),
		P90:   h.ValueAtQuantile(90),
		P99:   h.ValueAtQuantile(99),
		P999:  h.ValueAtQuantile(99.9),
		Max:   h.Max(),
		Mean:  h.Mean(),
	}
}
