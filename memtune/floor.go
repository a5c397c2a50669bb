package memtune

import (
	"log/slog"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
)

// GoHeapMinimum is the Go runtime's smallest heap goal at GOGC=100, so the smallest floor that
// means anything; it scales with GOGC (runtime/mgcpacer.go: heapMinimum = 4 MiB × GOGC/100).
const GoHeapMinimum = 4 << 20

// liveHeapMetric is the heap marked live by the last collection.
const liveHeapMetric = "/gc/heap/live:bytes"

// Percent returns the GOGC that puts the heap goal for live bytes of live heap at floor or
// above, and never below base. Go's goal is live × (1 + GOGC/100) and at least
// 4 MiB × GOGC/100; the result is capped where that minimum alone reaches floor, so a nearly
// empty heap gets a goal of floor rather than a multiple of it.
func Percent(floor, live uint64, base int) int {
	if floor == 0 || base < 0 || live >= floor {
		return base
	}
	capPercent := floor * 100 / GoHeapMinimum
	want := capPercent
	if live > 0 {
		want = min(((floor-live)*100+live-1)/live, capPercent) // rounded up
	}
	if want <= uint64(base) {
		return base
	}
	return int(want)
}

// HeapFloor adjusts GOGC after every collection so that the heap goal stays at or above a
// floor. Create with Start.
type HeapFloor struct {
	floor   uint64
	base    int
	log     *slog.Logger
	stopped atomic.Bool
	percent atomic.Int64 // GOGC in effect, as last set

	mu     sync.Mutex // serializes adjust and Stop
	sample []metrics.Sample
}

// gcSentinel is allocated unreachable; its finalizer runs after the next collection. It holds a
// pointer so the runtime never places it in a tiny-allocator block, which may not be finalized.
type gcSentinel struct{ owner *HeapFloor }

// Start sets GOGC for the current live heap and keeps adjusting it after every collection.
// floor is in bytes; 0 returns a HeapFloor that does nothing. The GOGC in effect now (the GOGC
// environment variable or Go's default 100) is the lowest value it sets; with the collector
// off (GOGC=off) it does nothing.
func Start(floor uint64, log *slog.Logger) *HeapFloor {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	base := debug.SetGCPercent(100)
	debug.SetGCPercent(base)
	h := &HeapFloor{floor: floor, base: base, log: log, sample: []metrics.Sample{{Name: liveHeapMetric}}}
	h.percent.Store(int64(base))
	if floor == 0 || base < 0 {
		h.stopped.Store(true)
		return h
	}
	h.adjust()
	h.arm()
	return h
}

// GCPercent is the GOGC the floor last set (the base when it has not raised it).
func (h *HeapFloor) GCPercent() int { return int(h.percent.Load()) }

// Stop restores the GOGC in effect at Start. Safe to call more than once.
func (h *HeapFloor) Stop() {
	if h.stopped.Swap(true) {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	debug.SetGCPercent(h.base)
	h.percent.Store(int64(h.base))
}

func (h *HeapFloor) arm() {
	runtime.SetFinalizer(&gcSentinel{owner: h}, func(s *gcSentinel) { s.owner.afterGC() })
}

func (h *HeapFloor) afterGC() {
	if h.stopped.Load() {
		return
	}
	h.adjust()
	h.arm()
}

func (h *HeapFloor) adjust() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped.Load() {
		return
	}
	metrics.Read(h.sample)
	if h.sample[0].Value.Kind() != metrics.KindUint64 {
		return // not reported by this runtime: leave GOGC alone
	}
	live := h.sample[0].Value.Uint64()
	want := Percent(h.floor, live, h.base)
	if cur := int(h.percent.Load()); want == cur || (want > h.base && cur > h.base && within(want, cur, 10)) {
		return // small changes are not worth recomputing the pacer's goal
	}
	debug.SetGCPercent(want)
	h.percent.Store(int64(want))
	h.log.Debug("GOGC adjusted for the GC heap floor", "gogc", want, "live_heap_bytes", live, "floor_bytes", h.floor)
}

// within reports whether a and b differ by at most pct percent of b.
func within(a, b, pct int) bool {
	d := a - b
	if d < 0 {
		d = -d
	}
	return d*100 <= b*pct
}
