package topics

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
)

// benchSubs returns n distinct subscribers.
func benchSubs(n int) []*sub {
	subs := make([]*sub, n)
	for i := range subs {
		subs[i] = &sub{}
	}
	return subs
}

func literalTopics(n int) []string {
	topics := make([]string, n)
	for i := range topics {
		topics[i] = fmt.Sprintf("room.%d.messages", i)
	}
	return topics
}

// BenchmarkMatchLiteral: 100,000 topics with one subscriber each (100,000 subscribers), no
// wildcard subscriptions; Match cycles through the topics.
func BenchmarkMatchLiteral(b *testing.B) {
	const n = 100_000
	x := NewIndex[*sub](IndexOptions{})
	topics := literalTopics(n)
	for i, s := range benchSubs(n) {
		x.Subscribe(topics[i], s)
	}
	delivered := 0
	visit := func(_ string, subs []*sub) { delivered += len(subs) }
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		x.Match(topics[i%n], visit)
	}
	if delivered == 0 {
		b.Fatal("nothing matched")
	}
}

// wildcardIndex builds 10,000 wildcard patterns (`*` and `>` in several positions) over 1,000
// first tokens, plus a few root-level wildcards, and returns topics that hit them.
func wildcardIndex() (*Index[*sub], []string) {
	x := NewIndex[*sub](IndexOptions{})
	subs := benchSubs(1000)
	const tenants = 1000
	for i := range tenants {
		for j, p := range []string{
			"t%d.*.events", "t%d.>", "t%d.room.*", "t%d.room.>", "t%d.*.*.x",
			"t%d.room.%d.*", "t%d.*.%d", "t%d.user.%d.>", "t%d.room.%d.>", "t%d.*.%d.*",
		} {
			var pat string
			if j < 5 {
				pat = fmt.Sprintf(p, i)
			} else {
				pat = fmt.Sprintf(p, i, i%7)
			}
			x.Subscribe(pat, subs[(i*10+j)%len(subs)])
		}
	}
	x.Subscribe("*.room.>", subs[0])
	x.Subscribe(">", subs[1])
	topics := make([]string, 1000)
	for i := range topics {
		topics[i] = fmt.Sprintf("t%d.room.%d.events", i%tenants, i%7)
	}
	return x, topics
}

// BenchmarkMatchWildcard: 10,000 wildcard patterns; each topic matches several of them.
func BenchmarkMatchWildcard(b *testing.B) {
	x, topics := wildcardIndex()
	matched := 0
	visit := func(_ string, subs []*sub) { matched++ }
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		x.Match(topics[i%len(topics)], visit)
	}
	b.ReportMetric(float64(matched)/float64(b.N), "patterns/op")
}

// BenchmarkFanout10k: 10,000 subscribers on one topic; visit walks the subscriber slice the
// way the proxy's enqueue loop would (here: counting).
func BenchmarkFanout10k(b *testing.B) {
	x := NewIndex[*sub](IndexOptions{})
	for _, s := range benchSubs(10_000) {
		x.Subscribe("chat.lobby", s)
	}
	count := 0
	visit := func(_ string, subs []*sub) {
		for _, s := range subs {
			if s != nil {
				count++
			}
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		x.Match("chat.lobby", visit)
	}
	if count != 10_000*b.N {
		b.Fatalf("delivered %d, want %d", count, 10_000*b.N)
	}
}

// BenchmarkSubscribeUnsubscribe: one Subscribe plus one Unsubscribe per op against an index
// already holding 100,000 literal topics; the op alternates between a fresh literal pattern
// (first/last subscriber: entry created and removed) and a wildcard one (trie insert/prune).
func BenchmarkSubscribeUnsubscribe(b *testing.B) {
	x := NewIndex[*sub](IndexOptions{OnFirst: func(string) {}, OnLast: func(string) {}})
	topics := literalTopics(100_000)
	for i, s := range benchSubs(len(topics)) {
		x.Subscribe(topics[i], s)
	}
	patterns := make([]string, 1024)
	for i := range patterns {
		if i%2 == 0 {
			patterns[i] = fmt.Sprintf("bench.%d.x", i)
		} else {
			patterns[i] = fmt.Sprintf("bench.%d.*", i)
		}
	}
	s := &sub{}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		p := patterns[i%len(patterns)]
		x.Subscribe(p, s)
		x.Unsubscribe(p, s)
	}
}

// BenchmarkSubscribeExisting: adding a subscriber to a pattern that already has one (the
// common case for popular topics: no entry creation, no callbacks).
func BenchmarkSubscribeExisting(b *testing.B) {
	x := NewIndex[*sub](IndexOptions{})
	topics := literalTopics(1000)
	for _, t := range topics {
		x.Subscribe(t, &sub{})
	}
	subs := benchSubs(1024)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		t, s := topics[i%len(topics)], subs[i%len(subs)]
		x.Subscribe(t, s)
		x.Unsubscribe(t, s)
	}
}

// BenchmarkMatchParallel: Match from all Ps at once over 100,000 literal topics plus the
// wildcard set, while one goroutine in ten subscribes and unsubscribes; throughput should
// scale with GOMAXPROCS because there is no index-wide lock.
func BenchmarkMatchParallel(b *testing.B) {
	x, wtopics := wildcardIndex()
	topics := literalTopics(100_000)
	for i, s := range benchSubs(len(topics)) {
		x.Subscribe(topics[i], s)
	}
	var worker atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		id := int(worker.Add(1))
		s := &sub{}
		n := 0
		visit := func(_ string, subs []*sub) { n += len(subs) }
		for i := id * 7919; pb.Next(); i++ {
			switch {
			case i%10 == 0:
				p := topics[(i/10)%len(topics)]
				x.Subscribe(p, s)
				x.Unsubscribe(p, s)
			case i%2 == 0:
				x.Match(topics[i%len(topics)], visit)
			default:
				x.Match(wtopics[i%len(wtopics)], visit)
			}
		}
		runtime.KeepAlive(n)
	})
}

// BenchmarkIndexMemory reports the index's own heap per subscription for 100,000 one-subscriber
// literal topics plus 100,000 subscriptions spread over 10,000 popular topics (200,000 pairs,
// 110,000 patterns). Topic strings and subscribers are the caller's and are not counted.
func BenchmarkIndexMemory(b *testing.B) {
	b.ReportAllocs()
	topics := literalTopics(100_000)
	popular := make([]string, 10_000)
	for i := range popular {
		popular[i] = topics[i] + ".popular"
	}
	subs := benchSubs(100_000)
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		x := NewIndex[*sub](IndexOptions{})
		for i, s := range subs {
			x.Subscribe(topics[i], s)
			x.Subscribe(popular[i%len(popular)], s)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(x.Subscriptions()), "B/subscription")
		runtime.KeepAlive(x)
	}
}
