package telemetry

import (
	"container/list"
	"sync"
	"time"
)

// RateLimited lets one log line per key through per interval and counts the lines it held
// back, so a flood of identical warnings (a client IP over its connect rate, say) costs one
// line per interval:
//
//	if ok, n := limiter.Allow("ip_rate:" + ip); ok {
//		log.Warn("connection rate limit exceeded", "ip", ip, "suppressed", n)
//	}
//
// Safe for concurrent use; one mutex, O(1) per call.
type RateLimited struct {
	interval time.Duration
	maxKeys  int
	now      func() time.Time // tests replace it to step time without sleeping

	mu   sync.Mutex
	keys map[string]*list.Element // of *rateEntry
	lru  list.List                // front = most recently seen
}

type rateEntry struct {
	key        string
	last       time.Time // when a line for this key was last let through
	suppressed int
}

// NewRateLimited returns a limiter letting one line per key per interval, remembering at most
// maxKeys keys (values below 1 mean 1).
func NewRateLimited(interval time.Duration, maxKeys int) *RateLimited {
	if maxKeys < 1 {
		maxKeys = 1
	}
	return &RateLimited{interval: interval, maxKeys: maxKeys, now: time.Now, keys: make(map[string]*list.Element)}
}

// Allow reports whether a line for key may be written now and, when it may, how many lines for
// key were suppressed since the last one let through (log it as suppressed=N).
func (r *RateLimited) Allow(key string) (ok bool, suppressed int) {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if el, found := r.keys[key]; found {
		r.lru.MoveToFront(el)
		e := el.Value.(*rateEntry)
		if now.Sub(e.last) < r.interval {
			e.suppressed++
			return false, 0
		}
		n := e.suppressed
		e.last, e.suppressed = now, 0
		return true, n
	}
	if len(r.keys) >= r.maxKeys {
		oldest := r.lru.Back()
		r.lru.Remove(oldest)
		delete(r.keys, oldest.Value.(*rateEntry).key)
	}
	r.keys[key] = r.lru.PushFront(&rateEntry{key: key, last: now})
	return true, 0
}

// Len returns the number of keys remembered (at most maxKeys).
func (r *RateLimited) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.keys)
}
