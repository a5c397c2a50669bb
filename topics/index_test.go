package topics

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"testing"
)

// sub stands in for a connection: a pointer compared by identity, as *proxy.conn will be.
type sub struct{ name string }

// collect runs Match and returns pattern -> sorted subscriber names, failing on a pattern
// visited twice.
func collect(t *testing.T, x *Index[*sub], topic string) map[string][]string {
	t.Helper()
	got := map[string][]string{}
	x.Match(topic, func(pattern string, subs []*sub) {
		if _, dup := got[pattern]; dup {
			t.Errorf("Match(%q) visited %q twice", topic, pattern)
		}
		names := make([]string, 0, len(subs))
		for _, s := range subs {
			names = append(names, s.name)
		}
		sort.Strings(names)
		got[pattern] = names
	})
	return got
}

func lookup(x *Index[*sub], pattern string) []string {
	var names []string
	x.Lookup(pattern, func(subs []*sub) {
		for _, s := range subs {
			names = append(names, s.name)
		}
	})
	sort.Strings(names)
	return names
}

// recorder records OnFirst/OnLast calls per pattern. Calls arrive under the index's write
// lock for their pattern, but calls for different patterns may be concurrent.
type recorder struct {
	mu    sync.Mutex
	calls map[string][]string // pattern -> "first"/"last" in call order
}

func newRecorder() *recorder { return &recorder{calls: map[string][]string{}} }

func (r *recorder) options() IndexOptions {
	return IndexOptions{
		OnFirst: func(p string) { r.add(p, "first") },
		OnLast:  func(p string) { r.add(p, "last") },
	}
}

func (r *recorder) add(p, what string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls[p] = append(r.calls[p], what)
}

func (r *recorder) get(p string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls[p])
}

func TestIndexSubscribeUnsubscribe(t *testing.T) {
	rec := newRecorder()
	x := NewIndex[*sub](rec.options())
	alice, bob := &sub{"alice"}, &sub{"bob"}

	steps := []struct {
		op      string // "sub" or "unsub"
		pattern string
		s       *sub
		want    bool
		calls   []string // OnFirst/OnLast history of pattern after the step
		pats    int
		subs    int
	}{
		{"sub", "chat.lobby", alice, true, []string{"first"}, 1, 1},
		{"sub", "chat.lobby", alice, false, []string{"first"}, 1, 1}, // idempotent
		{"sub", "chat.lobby", bob, true, []string{"first"}, 1, 2},
		{"sub", "chat.*", alice, true, []string{"first"}, 2, 3},
		{"sub", "chat.*", alice, false, []string{"first"}, 2, 3},
		{"unsub", "chat.lobby", alice, true, []string{"first"}, 2, 2},
		{"unsub", "chat.lobby", alice, false, []string{"first"}, 2, 2}, // already gone
		{"unsub", "chat.nothing", alice, false, nil, 2, 2},             // never subscribed
		{"unsub", "chat.>", alice, false, nil, 2, 2},                   // wildcard never subscribed
		{"unsub", "chat.lobby", bob, true, []string{"first", "last"}, 1, 1},
		{"unsub", "chat.*", bob, false, []string{"first"}, 1, 1}, // bob never held chat.*
		{"unsub", "chat.*", alice, true, []string{"first", "last"}, 0, 0},
		{"sub", "chat.*", bob, true, []string{"first", "last", "first"}, 1, 1},
		{"unsub", "chat.*", bob, true, []string{"first", "last", "first", "last"}, 0, 0},
	}
	for i, st := range steps {
		var got bool
		if st.op == "sub" {
			got = x.Subscribe(st.pattern, st.s)
		} else {
			got = x.Unsubscribe(st.pattern, st.s)
		}
		if got != st.want {
			t.Fatalf("step %d: %s(%q, %s) = %v, want %v", i, st.op, st.pattern, st.s.name, got, st.want)
		}
		if c := rec.get(st.pattern); !slices.Equal(c, st.calls) {
			t.Fatalf("step %d: callbacks for %q = %v, want %v", i, st.pattern, c, st.calls)
		}
		if x.Patterns() != st.pats || x.Subscriptions() != st.subs {
			t.Fatalf("step %d: Patterns=%d Subscriptions=%d, want %d %d", i, x.Patterns(), x.Subscriptions(), st.pats, st.subs)
		}
	}
	if got := collect(t, x, "chat.lobby"); len(got) != 0 {
		t.Fatalf("empty index matched %v", got)
	}
	// Every trie shard is pruned back to an empty root.
	for i := range x.wildcard {
		if !x.wildcard[i].root.empty() || len(x.wildcard[i].entries) != 0 {
			t.Fatalf("wildcard shard %d not empty after all unsubscribes", i)
		}
	}
}

func TestIndexMatch(t *testing.T) {
	x := NewIndex[*sub](IndexOptions{})
	a, b, c := &sub{"a"}, &sub{"b"}, &sub{"c"}
	for _, ps := range []struct {
		p string
		s *sub
	}{
		{"chat.lobby", a}, {"chat.lobby", b},
		{"chat.*", a}, // a holds two overlapping patterns
		{"chat.>", c},
		{">", c},
		{"*.lobby", b},
		{"*.*.x", a},
		{"chat.lobby.x", c},
		{"news.sport", a},
		{"news.*.>", b},
	} {
		if !x.Subscribe(ps.p, ps.s) {
			t.Fatalf("Subscribe(%q, %s) = false", ps.p, ps.s.name)
		}
	}
	cases := []struct {
		topic string
		want  map[string][]string
	}{
		{"chat.lobby", map[string][]string{
			"chat.lobby": {"a", "b"}, "chat.*": {"a"}, "chat.>": {"c"}, ">": {"c"}, "*.lobby": {"b"},
		}},
		{"chat.other", map[string][]string{"chat.*": {"a"}, "chat.>": {"c"}, ">": {"c"}}},
		{"chat.lobby.x", map[string][]string{
			"chat.>": {"c"}, ">": {"c"}, "*.*.x": {"a"}, "chat.lobby.x": {"c"},
		}},
		{"chat", map[string][]string{">": {"c"}}},
		{"news.sport", map[string][]string{"news.sport": {"a"}, ">": {"c"}}},
		{"news.sport.live", map[string][]string{"news.*.>": {"b"}, ">": {"c"}}},
		{"news.sport.live.x", map[string][]string{"news.*.>": {"b"}, ">": {"c"}}},
		{"other.lobby", map[string][]string{"*.lobby": {"b"}, ">": {"c"}}},
	}
	for _, tc := range cases {
		if got := collect(t, x, tc.topic); !maps.EqualFunc(got, tc.want, slices.Equal) {
			t.Errorf("Match(%q) = %v, want %v", tc.topic, got, tc.want)
		}
	}

	// Lookup sees exactly one pattern's subscribers, literal or wildcard.
	for p, want := range map[string][]string{
		"chat.lobby": {"a", "b"}, "chat.*": {"a"}, ">": {"c"}, "news.*.>": {"b"}, "chat.>": {"c"},
		"chat.none": nil, "chat.*.*": nil, "*": nil,
	} {
		if got := lookup(x, p); !slices.Equal(got, want) {
			t.Errorf("Lookup(%q) = %v, want %v", p, got, want)
		}
	}
	if x.Patterns() != 9 || x.Subscriptions() != 10 {
		t.Errorf("Patterns=%d Subscriptions=%d, want 9 10", x.Patterns(), x.Subscriptions())
	}
}

func TestIndexMatchAllocatesNothing(t *testing.T) {
	x := NewIndex[*sub](IndexOptions{})
	s := &sub{"s"}
	x.Subscribe("a.b", s)
	n := 0
	visit := func(string, []*sub) { n++ }
	if allocs := testing.AllocsPerRun(100, func() { x.Match("a.b", visit) }); allocs != 0 {
		t.Errorf("literal Match allocates %v times", allocs)
	}
	x.Subscribe("a.*", s)
	x.Subscribe(">", s)
	if allocs := testing.AllocsPerRun(100, func() { x.Match("a.b", visit) }); allocs != 0 {
		t.Errorf("wildcard Match allocates %v times", allocs)
	}
	if n == 0 {
		t.Fatal("visit never called")
	}
}

func TestIndexManySubscribersOnePattern(t *testing.T) {
	// Crosses the entry's position-map threshold both ways and exercises swap-delete.
	x := NewIndex[*sub](IndexOptions{})
	subs := make([]*sub, 200)
	for i := range subs {
		subs[i] = &sub{fmt.Sprint(i)}
		x.Subscribe("room", subs[i])
	}
	for i := 0; i < len(subs); i += 2 { // remove the even ones
		if !x.Unsubscribe("room", subs[i]) {
			t.Fatalf("Unsubscribe %d = false", i)
		}
		if x.Unsubscribe("room", subs[i]) {
			t.Fatalf("second Unsubscribe %d = true", i)
		}
	}
	for i, s := range subs {
		if x.Subscribe("room", s) != (i%2 == 0) {
			t.Fatalf("re-Subscribe %d reported wrong added", i)
		}
	}
	for i := len(subs) - 1; i >= 5; i-- {
		x.Unsubscribe("room", subs[i])
	}
	if got := lookup(x, "room"); !slices.Equal(got, []string{"0", "1", "2", "3", "4"}) {
		t.Fatalf("Lookup after removals = %v", got)
	}
	if x.Subscriptions() != 5 || x.Patterns() != 1 {
		t.Fatalf("Subscriptions=%d Patterns=%d", x.Subscriptions(), x.Patterns())
	}
}

func TestIndexSummary(t *testing.T) {
	x := NewIndex[*sub](IndexOptions{})
	counts := map[string]int{"a": 5, "b.*": 3, "c": 3, ">": 1, "d.>": 7, "e": 2}
	for p, n := range counts {
		for i := range n {
			x.Subscribe(p, &sub{fmt.Sprint(i)})
		}
	}
	want := []PatternCount{{"d.>", 7}, {"a", 5}, {"b.*", 3}, {"c", 3}, {"e", 2}, {">", 1}}
	for _, limit := range []int{0, -1, 1, 3, 6, 100} {
		w := want
		if limit > 0 && limit < len(w) {
			w = w[:limit]
		}
		if got := x.Summary(limit); !slices.Equal(got, w) {
			t.Errorf("Summary(%d) = %v, want %v", limit, got, w)
		}
	}
	if got := NewIndex[*sub](IndexOptions{}).Summary(10); len(got) != 0 {
		t.Errorf("empty Summary = %v", got)
	}
}

// TestIndexFirstLastConcurrent subscribes and unsubscribes one pattern from many goroutines at
// once: OnFirst and OnLast must alternate, starting with first, and end consistent with
// whether the pattern still has subscribers.
func TestIndexFirstLastConcurrent(t *testing.T) {
	for _, pattern := range []string{"room.1", "room.*", ">"} {
		t.Run(pattern, func(t *testing.T) {
			rec := newRecorder()
			x := NewIndex[*sub](rec.options())
			const workers, rounds = 8, 500
			var wg sync.WaitGroup
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s := &sub{fmt.Sprint(w)}
					r := rand.New(rand.NewPCG(uint64(w), 1))
					for range rounds {
						if !x.Subscribe(pattern, s) {
							t.Error("Subscribe of a fresh subscriber returned false")
						}
						x.Match("room.1", func(string, []*sub) {})
						if r.IntN(4) == 0 {
							x.Lookup(pattern, func([]*sub) {})
						}
						if !x.Unsubscribe(pattern, s) {
							t.Error("Unsubscribe of a held subscription returned false")
						}
					}
					if w%2 == 0 { // half of the workers stay subscribed
						x.Subscribe(pattern, s)
					}
				}()
			}
			wg.Wait()
			var remaining []*sub
			calls := rec.get(pattern)
			for i, c := range calls {
				if want := [2]string{"first", "last"}[i%2]; c != want {
					t.Fatalf("call %d = %s, want %s (calls: %d)", i, c, want, len(calls))
				}
			}
			if len(calls)%2 != 1 || calls[len(calls)-1] != "first" {
				t.Fatalf("%d calls, want an odd number ending with first", len(calls))
			}
			if x.Patterns() != 1 || x.Subscriptions() != workers/2 || len(lookup(x, pattern)) != workers/2 {
				t.Fatalf("Patterns=%d Subscriptions=%d Lookup=%v", x.Patterns(), x.Subscriptions(), lookup(x, pattern))
			}
			// The remaining subscribers leave; only the last of them fires OnLast.
			x.Lookup(pattern, func(subs []*sub) { remaining = slices.Clone(subs) })
			for _, s := range remaining {
				x.Unsubscribe(pattern, s)
			}
			if calls := rec.get(pattern); calls[len(calls)-1] != "last" || x.Patterns() != 0 || x.Subscriptions() != 0 {
				t.Fatalf("after all left: last call %s, Patterns=%d Subscriptions=%d", calls[len(calls)-1], x.Patterns(), x.Subscriptions())
			}
		})
	}
}

// TestIndexConcurrentMatchWhileSubscribing runs Match and Lookup against constant churn on
// literal and wildcard patterns, for the race detector; a stable subscription present
// throughout must be seen by every Match.
func TestIndexConcurrentMatchWhileSubscribing(t *testing.T) {
	x := NewIndex[*sub](IndexOptions{})
	stable := &sub{"stable"}
	x.Subscribe("t.0", stable)
	x.Subscribe("t.>", stable)
	patterns := []string{"t.0", "t.1", "t.*", "*.0", ">", "t.>", "u.*", "t.*.x"}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := &sub{fmt.Sprint("w", w)}
			r := rand.New(rand.NewPCG(uint64(w), 2))
			for i := 0; i < 3000; i++ {
				p := patterns[r.IntN(len(patterns))]
				if r.IntN(2) == 0 {
					x.Subscribe(p, s)
				} else {
					x.Unsubscribe(p, s)
				}
			}
		}()
	}
	var matchers sync.WaitGroup
	for range 2 {
		matchers.Add(1)
		go func() {
			defer matchers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				seen := 0
				x.Match("t.0", func(p string, subs []*sub) {
					for _, s := range subs {
						if s == stable {
							seen++
						}
					}
				})
				if seen != 2 {
					t.Errorf("stable subscriber seen %d times, want 2", seen)
					return
				}
				x.Lookup("t.*", func(subs []*sub) { _ = len(subs) })
				_ = x.Summary(3)
			}
		}()
	}
	wg.Wait()
	close(stop)
	matchers.Wait()
}

// TestIndexMatchesBruteForce compares Index.Match with a scan of every subscription using
// Match, over random patterns, subscribers and topics drawn from a small token alphabet so
// that overlaps are frequent.
func TestIndexMatchesBruteForce(t *testing.T) {
	for seed := range uint64(5) {
		r := rand.New(rand.NewPCG(seed, 99))
		randTokens := func(n int, wild bool) string {
			toks := make([]string, n)
			for i := range toks {
				toks[i] = []string{"a", "b", "c"}[r.IntN(3)]
				if wild {
					switch r.IntN(6) {
					case 0:
						toks[i] = "*"
					case 1:
						if i == n-1 {
							toks[i] = ">"
						}
					}
				}
			}
			s := toks[0]
			for _, tok := range toks[1:] {
				s += "." + tok
			}
			return s
		}
		x := NewIndex[*sub](IndexOptions{})
		model := map[string]map[*sub]bool{}
		subs := make([]*sub, 20)
		for i := range subs {
			subs[i] = &sub{fmt.Sprint(i)}
		}
		for range 2000 {
			p := randTokens(1+r.IntN(4), true)
			if err := ValidatePattern(p); err != nil {
				t.Fatalf("generator made invalid %q: %v", p, err)
			}
			s := subs[r.IntN(len(subs))]
			if r.IntN(3) == 0 {
				if got, want := x.Unsubscribe(p, s), model[p][s]; got != want {
					t.Fatalf("Unsubscribe(%q) = %v, model %v", p, got, want)
				}
				delete(model[p], s)
				if len(model[p]) == 0 {
					delete(model, p)
				}
			} else {
				if got, want := x.Subscribe(p, s), !model[p][s]; got != want {
					t.Fatalf("Subscribe(%q) = %v, model %v", p, got, want)
				}
				if model[p] == nil {
					model[p] = map[*sub]bool{}
				}
				model[p][s] = true
			}
		}
		total := 0
		for _, ss := range model {
			total += len(ss)
		}
		if x.Patterns() != len(model) || x.Subscriptions() != total {
			t.Fatalf("Patterns=%d Subscriptions=%d, model %d %d", x.Patterns(), x.Subscriptions(), len(model), total)
		}
		for range 500 {
			topic := randTokens(1+r.IntN(5), false)
			want := map[string][]string{}
			for p, ss := range model {
				if Match(p, topic) {
					for s := range ss {
						want[p] = append(want[p], s.name)
					}
					sort.Strings(want[p])
				}
			}
			if got := collect(t, x, topic); !maps.EqualFunc(got, want, slices.Equal) {
				t.Fatalf("seed %d: Match(%q) = %v, brute force %v", seed, topic, got, want)
			}
		}
	}
}
