package memtune

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const mib = 1 << 20

func TestPercent(t *testing.T) {
	cases := []struct {
		name        string
		floor, live uint64
		base, want  int
	}{
		{"no floor", 0, 1 * mib, 100, 100},
		{"collector off", 64 * mib, 1 * mib, -1, -1},
		{"empty heap: the heap minimum alone is the floor", 64 * mib, 0, 100, 1600},
		{"tiny heap: capped at the heap minimum", 64 * mib, 1 * mib, 100, 1600},
		{"small heap: goal exactly the floor", 64 * mib, 8 * mib, 100, 700},
		{"goal rounded up, never below the floor", 64 * mib, 3*mib + 1, 100, 1600},
		{"heap past half the floor: the base already reaches it", 64 * mib, 40 * mib, 100, 100},
		{"heap above the floor", 64 * mib, 200 * mib, 100, 100},
		{"an operator's higher GOGC is kept", 64 * mib, 16 * mib, 400, 400},
		{"an operator's lower GOGC is the base", 64 * mib, 16 * mib, 50, 300},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := Percent(tc.floor, tc.live, tc.base)
			if got != tc.want {
				t.Fatalf("Percent(%d MiB, %d B, %d) = %d, want %d", tc.floor/mib, tc.live, tc.base, got, tc.want)
			}
			if got > tc.base && tc.live > 0 {
				if goal := max(tc.live+tc.live*uint64(got)/100, GoHeapMinimum*uint64(got)/100); goal < tc.floor {
					t.Fatalf("GOGC %d gives a goal of %d, below the floor %d", got, goal, tc.floor)
				}
			}
		})
	}
}

func readUint(t *testing.T, name string) uint64 {
	t.Helper()
	s := []metrics.Sample{{Name: name}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		t.Fatalf("runtime metric %s not available", name)
	}
	return s[0].Value.Uint64()
}

// withGOGC runs the test with a known GOGC and restores the previous one.
func withGOGC(t *testing.T, percent int) {
	t.Helper()
	prev := debug.SetGCPercent(percent)
	t.Cleanup(func() { debug.SetGCPercent(prev) })
}

func TestStartSetsAndStopRestoresGOGC(t *testing.T) {
	withGOGC(t, 100)
	runtime.GC()
	h := Start(256*mib, nil)
	if got := h.GCPercent(); got <= 100 {
		t.Fatalf("GOGC %d after Start with a 256 MiB floor and a small heap, want above 100", got)
	}
	if got := readUint(t, "/gc/gogc:percent"); got != uint64(h.GCPercent()) {
		t.Fatalf("runtime GOGC %d, floor says %d", got, h.GCPercent())
	}
	// The hook keeps working across collections.
	for range 3 {
		runtime.GC()
	}
	deadline := time.Now().Add(5 * time.Second)
	for readUint(t, "/gc/gogc:percent") != uint64(h.GCPercent()) {
		if time.Now().After(deadline) {
			t.Fatalf("runtime GOGC %d, floor says %d", readUint(t, "/gc/gogc:percent"), h.GCPercent())
		}
		runtime.Gosched()
	}
	h.Stop()
	h.Stop() // safe twice
	if got := readUint(t, "/gc/gogc:percent"); got != 100 {
		t.Fatalf("runtime GOGC %d after Stop, want 100 restored", got)
	}
	runtime.GC()
	runtime.GC()
	if got := readUint(t, "/gc/gogc:percent"); got != 100 {
		t.Fatalf("runtime GOGC %d after Stop and two collections, want 100", got)
	}
}

func TestStartInert(t *testing.T) {
	withGOGC(t, 100)
	if h := Start(0, nil); h.GCPercent() != 100 || readUint(t, "/gc/gogc:percent") != 100 {
		t.Fatalf("floor 0 changed GOGC to %d", readUint(t, "/gc/gogc:percent"))
	}
	withGOGC(t, -1)
	h := Start(64*mib, nil)
	if got := debug.SetGCPercent(-1); got != -1 || h.GCPercent() != -1 {
		t.Fatalf("with the collector off, Start set GOGC %d", got)
	}
	h.Stop()
}

// sink keeps allocations from being optimised away.
var sink []byte

// collectionsWhileAllocating allocates total bytes of short-lived garbage in 4 KiB pieces and
// returns how many collections ran meanwhile.
func collectionsWhileAllocating(t *testing.T, total int) uint64 {
	t.Helper()
	runtime.GC()
	before := readUint(t, "/gc/cycles/total:gc-cycles")
	for range total / 4096 {
		sink = make([]byte, 4096)
	}
	sink = nil
	return readUint(t, "/gc/cycles/total:gc-cycles") - before
}

// TestFloorMeansFewerCollections is the point of the package: relaying messages on a small heap
// allocates steadily, and without a floor that means a collection every few MiB.
func TestFloorMeansFewerCollections(t *testing.T) {
	withGOGC(t, 100)
	const garbage = 48 * mib
	without := collectionsWhileAllocating(t, garbage)
	h := Start(64*mib, nil)
	defer h.Stop()
	with := collectionsWhileAllocating(t, garbage)
	t.Logf("collections while allocating %d MiB: %d without the floor, %d with a 64 MiB floor (GOGC %d)", garbage/mib, without, with, h.GCPercent())
	if without < 4 {
		t.Fatalf("only %d collections without a floor; the test expects Go's 4 MiB minimum goal to collect often", without)
	}
	if with > 1 {
		t.Fatalf("%d collections with a 64 MiB floor while allocating 48 MiB on a small heap, want at most 1", with)
	}
}
