package topics

import (
	"cmp"
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"
)

// Shard counts. Literal patterns (the common case: one topic per chat room, user, device) are
// spread over many small maps so that publishes and subscribes on different topics rarely meet
// on a lock. Wildcard patterns live in tries sharded by their first token; patterns whose first
// token is itself a wildcard share one extra trie that every wildcard-aware Match consults.
const (
	literalShards  = 128
	wildcardShards = 16
)

// IndexOptions configures an Index.
type IndexOptions struct {
	// OnFirst is called when a pattern gets its first subscriber, OnLast when it loses its last.
	// Both are called while the index holds the write lock covering that pattern, so calls for
	// one pattern are strictly ordered (first, last, first, ...). Calls for different patterns
	// may run concurrently. They must not call back into the Index.
	OnFirst, OnLast func(pattern string)
}

// Index is the local subscription index: for each subscribed pattern, the set of subscribers
// (connections) holding it. S is the subscriber type, compared with ==.
//
// Locking: there is no index-wide lock. A literal pattern is guarded by the RWMutex of its
// literal shard (chosen by hash of the pattern); a wildcard pattern by the RWMutex of its
// wildcard trie shard (chosen by hash of its first token, or the shared root trie when the
// first token is `*` or `>`). Match takes read locks only, one at a time, and skips the
// wildcard tries entirely (no lock, one atomic load) while no wildcard pattern is subscribed.
// Subscribe and Unsubscribe take the one write lock covering their pattern, and run
// OnFirst/OnLast under it.
//
// Match, Lookup and Summary read a consistent view of each shard, not of the whole index: a
// Match racing a Subscribe on another pattern may or may not see it.
type Index[S comparable] struct {
	// Read by every Match; written only when a wildcard pattern gets its first or loses its
	// last subscriber.
	opts         IndexOptions
	seed         maphash.Seed
	wildPatterns atomic.Int64 // wildcard patterns with >= 1 subscriber, over all trie shards
	_            [64]byte     // keep the counters below (written by every Subscribe) off this line

	patterns      atomic.Int64 // patterns with >= 1 subscriber
	subscriptions atomic.Int64 // (pattern, subscriber) pairs
	_             [64 - 16]byte

	literal  [literalShards]literalShard[S]
	wildcard [wildcardShards]wildShard[S]
	rootWild wildShard[S] // patterns whose first token is `*` or `>`
}

// table maps patterns to their entries under one RWMutex.
type table[S comparable] struct {
	mu      sync.RWMutex
	entries map[string]*entry[S]
}

type literalShard[S comparable] struct {
	table[S]
	_ [128 - 32]byte // keep each shard's lock on its own cache lines
}

type wildShard[S comparable] struct {
	table[S]
	root     node[S]
	patterns atomic.Int64 // patterns in this shard; read without the lock by Match
	_        [128 - 8]byte
}

// NewIndex returns an empty index.
func NewIndex[S comparable](opts IndexOptions) *Index[S] {
	x := &Index[S]{opts: opts, seed: maphash.MakeSeed()}
	for i := range x.literal {
		x.literal[i].entries = make(map[string]*entry[S])
	}
	for i := range x.wildcard {
		x.wildcard[i].entries = make(map[string]*entry[S])
	}
	x.rootWild.entries = make(map[string]*entry[S])
	return x
}

func (x *Index[S]) literalShard(pattern string) *literalShard[S] {
	return &x.literal[maphash.String(x.seed, pattern)%literalShards]
}

// wildShardFor returns the trie shard holding a wildcard pattern, or the shard that wildcard
// patterns starting with the literal first token of a topic live in.
func (x *Index[S]) wildShardFor(s string) *wildShard[S] {
	first, _, _ := cut(s)
	if first == "*" || first == ">" {
		return &x.rootWild
	}
	return &x.wildcard[maphash.String(x.seed, first)%wildcardShards]
}

// Subscribe adds s to the subscribers of pattern, which must be valid (ValidatePattern). It
// reports false if s already held exactly this pattern.
func (x *Index[S]) Subscribe(pattern string, s S) (added bool) {
	if !IsWildcard(pattern) {
		sh := x.literalShard(pattern)
		sh.mu.Lock()
		defer sh.mu.Unlock()
		added, first := x.add(&sh.table, pattern, s)
		if first && x.opts.OnFirst != nil {
			x.opts.OnFirst(pattern)
		}
		return added
	}
	w := x.wildShardFor(pattern)
	w.mu.Lock()
	defer w.mu.Unlock()
	added, first := x.add(&w.table, pattern, s)
	if first {
		w.root.insert(pattern, w.entries[pattern])
		w.patterns.Add(1)
		x.wildPatterns.Add(1)
		if x.opts.OnFirst != nil {
			x.opts.OnFirst(pattern)
		}
	}
	return added
}

// Unsubscribe removes s from the subscribers of pattern. It reports false if s did not hold
// exactly this pattern.
func (x *Index[S]) Unsubscribe(pattern string, s S) (removed bool) {
	if !IsWildcard(pattern) {
		sh := x.literalShard(pattern)
		sh.mu.Lock()
		defer sh.mu.Unlock()
		removed, last := x.remove(&sh.table, pattern, s)
		if last && x.opts.OnLast != nil {
			x.opts.OnLast(pattern)
		}
		return removed
	}
	w := x.wildShardFor(pattern)
	w.mu.Lock()
	defer w.mu.Unlock()
	removed, last := x.remove(&w.table, pattern, s)
	if last {
		w.root.delete(pattern)
		w.patterns.Add(-1)
		x.wildPatterns.Add(-1)
		if x.opts.OnLast != nil {
			x.opts.OnLast(pattern)
		}
	}
	return removed
}

// add runs under t's write lock; first reports that the pattern had no subscriber before.
func (x *Index[S]) add(t *table[S], pattern string, s S) (added, first bool) {
	e := t.entries[pattern]
	if e == nil {
		e = &entry[S]{pattern: pattern}
		t.entries[pattern] = e
		first = true
		x.patterns.Add(1)
	}
	if !e.add(s) {
		return false, false
	}
	x.subscriptions.Add(1)
	return true, first
}

// remove runs under t's write lock; last reports that the pattern has no subscriber left.
func (x *Index[S]) remove(t *table[S], pattern string, s S) (removed, last bool) {
	e := t.entries[pattern]
	if e == nil || !e.remove(s) {
		return false, false
	}
	x.subscriptions.Add(-1)
	if len(e.subs) > 0 {
		return true, false
	}
	delete(t.entries, pattern)
	x.patterns.Add(-1)
	return true, true
}

// Match calls visit once for each distinct subscribed pattern matching the literal topic, with
// that pattern's current subscribers. subs is only valid during visit (do not retain it); visit
// runs under a read lock and must not call Subscribe or Unsubscribe; it must be cheap (the proxy
// only enqueues). Match allocates nothing.
func (x *Index[S]) Match(topic string, visit func(pattern string, subs []S)) {
	x.literalShard(topic).visit(topic, visit)
	if x.wildPatterns.Load() == 0 {
		return
	}
	if x.rootWild.patterns.Load() > 0 {
		x.rootWild.match(topic, visit)
	}
	// (An invalid topic starting with a wildcard would select rootWild again; never walk it twice.)
	if w := x.wildShardFor(topic); w != &x.rootWild && w.patterns.Load() > 0 {
		w.match(topic, visit)
	}
}

func (sh *literalShard[S]) visit(topic string, visit func(pattern string, subs []S)) {
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	if e := sh.entries[topic]; e != nil {
		visit(e.pattern, e.subs)
	}
}

func (w *wildShard[S]) match(topic string, visit func(pattern string, subs []S)) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	w.root.match(topic, visit)
}

// Lookup calls visit with the subscribers of exactly this pattern, if it has any (used for
// cross-node delivery: a message that arrived on the NATS subscription for pattern goes to
// the local subscribers of that pattern only). The same rules as Match apply to visit.
func (x *Index[S]) Lookup(pattern string, visit func(subs []S)) {
	var t *table[S]
	if IsWildcard(pattern) {
		t = &x.wildShardFor(pattern).table
	} else {
		t = &x.literalShard(pattern).table
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	if e := t.entries[pattern]; e != nil {
		visit(e.subs)
	}
}

// Patterns returns the number of patterns with at least one subscriber.
func (x *Index[S]) Patterns() int { return int(x.patterns.Load()) }

// Subscriptions returns the number of (pattern, subscriber) pairs.
func (x *Index[S]) Subscriptions() int { return int(x.subscriptions.Load()) }

// PatternCount is one row of Summary.
type PatternCount struct {
	Pattern     string `json:"pattern"`
	Subscribers int    `json:"subscribers"`
}

// Summary returns the patterns with the most subscribers first (ties by pattern name), at most
// limit of them; limit <= 0 means all. It reads each shard under its read lock in turn, so the
// result is a near-instant view, not a snapshot. Meant for admin endpoints, not hot paths.
func (x *Index[S]) Summary(limit int) []PatternCount {
	out := make([]PatternCount, 0, min(x.Patterns(), max(limit, 0)+1))
	// Keep out as a min-heap of the best `limit` rows so memory stays O(limit) with 100k patterns.
	less := func(a, b PatternCount) int { // > 0 when a ranks above b
		if c := cmp.Compare(a.Subscribers, b.Subscribers); c != 0 {
			return c
		}
		return cmp.Compare(b.Pattern, a.Pattern)
	}
	collect := func(t *table[S]) {
		t.mu.RLock()
		defer t.mu.RUnlock()
		for p, e := range t.entries {
			row := PatternCount{Pattern: p, Subscribers: len(e.subs)}
			if limit <= 0 || len(out) < limit {
				out = append(out, row)
				heapUp(out, len(out)-1, less, limit > 0)
			} else if less(row, out[0]) > 0 {
				out[0] = row
				heapDown(out, 0, less)
			}
		}
	}
	for i := range x.literal {
		collect(&x.literal[i].table)
	}
	for i := range x.wildcard {
		collect(&x.wildcard[i].table)
	}
	collect(&x.rootWild.table)
	slices.SortFunc(out, func(a, b PatternCount) int { return less(b, a) })
	return out
}

// heapUp and heapDown maintain h as a min-heap under rank (smallest-ranked row at h[0]).
func heapUp(h []PatternCount, i int, rank func(a, b PatternCount) int, enabled bool) {
	if !enabled {
		return
	}
	for i > 0 {
		parent := (i - 1) / 2
		if rank(h[i], h[parent]) >= 0 {
			return
		}
		h[i], h[parent] = h[parent], h[i]
		i = parent
	}
}

func heapDown(h []PatternCount, i int, rank func(a, b PatternCount) int) {
	for {
		smallest := i
		for _, c := range [2]int{2*i + 1, 2*i + 2} {
			if c < len(h) && rank(h[c], h[smallest]) < 0 {
				smallest = c
			}
		}
		if smallest == i {
			return
		}
		h[i], h[smallest] = h[smallest], h[i]
		i = smallest
	}
}
