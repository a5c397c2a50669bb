package auth

import (
	"crypto/sha256"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// tokenKey is the cache key: SHA-256 of the token, so raw tokens are never kept in memory
// longer than one Authenticate call.
type tokenKey [sha256.Size]byte

// keyOf hashes token. Tokens up to 512 bytes are copied to the stack first: []byte(token)
// would allocate for anything over 32 bytes, and this runs on every connect.
func keyOf(token string) tokenKey {
	var buf [512]byte
	if len(token) <= len(buf) {
		return sha256.Sum256(append(buf[:0], token...))
	}
	return sha256.Sum256([]byte(token))
}

// cacheEntry is one cached webhook answer. Entries are immutable once stored.
type cacheEntry struct {
	decision *Decision // nil for a deny
	reason   string    // deny reason, already sanitised
	expires  time.Time // fresh before this instant
	// staleUntil is how long the entry may still be served when the webhook fails: expires +
	// stale_grace for allows, expires for denies (a stale deny is not worth a 4001).
	staleUntil time.Time
}

func (e *cacheEntry) denied() bool { return e.decision == nil }

// decisionCache is a size-bounded LRU whose values carry their own expiry.
//
// Why not golang-lru's expirable.LRU: it has one TTL per cache, while allows, denies and the
// webhook's per-answer ttl need one TTL per entry, and outage serving needs entries to remain
// readable for stale_grace after they stop being fresh. Its cleanup goroutine also never exits
// (v2.0.7 has no Close). A plain lru.Cache with expiry fields in the value gives per-entry TTLs,
// a stale window and no goroutine; expired entries are dropped lazily on lookup or pushed out by
// LRU eviction when the cache is full.
type decisionCache struct {
	lru *lru.Cache[tokenKey, *cacheEntry]
	// usableUntil is the latest staleUntil (Unix ns) of any allow entry ever stored: while now
	// is before it, an open breaker may still be able to serve someone (see Ready).
	usableUntil atomic.Int64
}

func newDecisionCache(size int) (*decisionCache, error) {
	l, err := lru.New[tokenKey, *cacheEntry](size)
	if err != nil {
		return nil, err
	}
	return &decisionCache{lru: l}, nil
}

// get returns the entry for key if it is still fresh or within its stale window, and whether
// it is fresh. Entries past their stale window are removed.
func (c *decisionCache) get(key tokenKey, now time.Time) (e *cacheEntry, fresh bool) {
	e, ok := c.lru.Get(key)
	if !ok {
		return nil, false
	}
	if now.Before(e.expires) {
		return e, true
	}
	if now.Before(e.staleUntil) {
		return e, false
	}
	c.lru.Remove(key)
	return nil, false
}

// put stores e unless it is already expired (negative_ttl 0 means denies are not cached).
func (c *decisionCache) put(key tokenKey, e *cacheEntry, now time.Time) {
	if !now.Before(e.staleUntil) {
		return
	}
	c.lru.Add(key, e)
	if e.denied() {
		return
	}
	until := e.staleUntil.UnixNano()
	for {
		cur := c.usableUntil.Load()
		if cur >= until || c.usableUntil.CompareAndSwap(cur, until) {
			return
		}
	}
}

// mayServe reports whether some allow entry stored so far could still be inside its stale
// window at now (an upper bound: evictions are not tracked).
func (c *decisionCache) mayServe(now time.Time) bool {
	return now.UnixNano() < c.usableUntil.Load()
}
