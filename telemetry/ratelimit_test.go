package telemetry

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// fakeClock steps time by hand so interval behaviour is tested without sleeping.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestLimiter(interval time.Duration, maxKeys int) (*RateLimited, *fakeClock) {
	clk := &fakeClock{t: time.Date(2024, 1, 15, 10, 30, 45, 0, time.UTC)}
	r := NewRateLimited(interval, maxKeys)
	r.now = clk.now
	return r, clk
}

func TestRateLimitedCountsSuppressed(t *testing.T) {
	r, clk := newTestLimiter(10*time.Second, 100)
	if ok, n := r.Allow("ip:10.0.0.1"); !ok || n != 0 {
		t.Fatalf("first line: ok=%v n=%d", ok, n)
	}
	for i := range 5 {
		clk.add(time.Second)
		if ok, _ := r.Allow("ip:10.0.0.1"); ok {
			t.Fatalf("line %d inside the interval let through", i)
		}
	}
	// Another key is independent.
	if ok, n := r.Allow("ip:10.0.0.2"); !ok || n != 0 {
		t.Fatalf("other key: ok=%v n=%d", ok, n)
	}
	clk.add(5 * time.Second) // 10 s since the first line
	if ok, n := r.Allow("ip:10.0.0.1"); !ok || n != 5 {
		t.Fatalf("after the interval: ok=%v suppressed=%d, want true 5", ok, n)
	}
	// The count restarts after being reported.
	clk.add(time.Second)
	r.Allow("ip:10.0.0.1")
	clk.add(10 * time.Second)
	if ok, n := r.Allow("ip:10.0.0.1"); !ok || n != 1 {
		t.Fatalf("second window: ok=%v suppressed=%d, want true 1", ok, n)
	}
}

func TestRateLimitedBoundedKeys(t *testing.T) {
	r, clk := newTestLimiter(time.Minute, 50)
	for i := range 10_000 {
		if ok, _ := r.Allow(fmt.Sprintf("ip:%d", i)); !ok {
			t.Fatalf("new key %d refused", i)
		}
		if r.Len() > 50 {
			t.Fatalf("remembers %d keys, cap 50", r.Len())
		}
	}
	if r.Len() != 50 {
		t.Fatalf("Len %d, want 50", r.Len())
	}
	// The most recent keys are still limited; an evicted one is let through again.
	clk.add(time.Second)
	if ok, _ := r.Allow("ip:9999"); ok {
		t.Error("recent key let through inside its interval")
	}
	if ok, _ := r.Allow("ip:0"); !ok {
		t.Error("evicted key refused")
	}
	// A key kept busy stays while others churn (least recently seen goes first).
	r2, _ := newTestLimiter(time.Minute, 3)
	r2.Allow("hot")
	for i := range 100 {
		r2.Allow(fmt.Sprintf("cold%d", i))
		r2.Allow("hot")
	}
	if ok, n := r2.Allow("hot"); ok || n != 0 {
		t.Errorf("hot key was evicted: ok=%v", ok)
	}
}

func TestRateLimitedConcurrent(t *testing.T) {
	r := NewRateLimited(time.Hour, 8)
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				if ok, _ := r.Allow(fmt.Sprintf("k%d", (g+i)%4)); ok {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if allowed != 4 {
		t.Fatalf("allowed %d lines for 4 keys within one interval, want 4", allowed)
	}
}

func BenchmarkRateLimitedAllow(b *testing.B) {
	r := NewRateLimited(time.Second, 10_000)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r.Allow("ip:10.0.0.1")
		}
	})
}
