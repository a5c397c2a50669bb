package topics

// Small subscriber sets are searched linearly; a position map is built only past
// entryMapAbove subscribers and dropped again at entryMapBelow (hysteresis, so a set hovering
// around the threshold does not rebuild its map on every change). Most topics have one or a
// few subscribers, and a map per topic would cost ~200 bytes each at 100,000 topics.
const (
	entryMapAbove = 16
	entryMapBelow = 8
)

// entry is one subscribed pattern and its subscribers. It is guarded by the lock of the table
// holding it. subs is handed to visitors as is (no copy), so it is only ever changed under
// the write lock.
type entry[S comparable] struct {
	pattern string
	subs    []S
	pos     map[S]int // index of each subscriber in subs; nil while the set is small
}

func (e *entry[S]) index(s S) int {
	if e.pos != nil {
		if i, ok := e.pos[s]; ok {
			return i
		}
		return -1
	}
	for i, t := range e.subs {
		if t == s {
			return i
		}
	}
	return -1
}

func (e *entry[S]) add(s S) bool {
	if e.index(s) >= 0 {
		return false
	}
	e.subs = append(e.subs, s)
	switch {
	case e.pos != nil:
		e.pos[s] = len(e.subs) - 1
	case len(e.subs) > entryMapAbove:
		e.pos = make(map[S]int, len(e.subs))
		for i, t := range e.subs {
			e.pos[t] = i
		}
	}
	return true
}

// remove swap-deletes s in O(1) (order of subscribers is not meaningful).
func (e *entry[S]) remove(s S) bool {
	i := e.index(s)
	if i < 0 {
		return false
	}
	last := len(e.subs) - 1
	moved := e.subs[last]
	e.subs[i] = moved
	var zero S
	e.subs[last] = zero // let the removed subscriber be collected
	e.subs = e.subs[:last]
	if e.pos != nil {
		delete(e.pos, s)
		if i != last {
			e.pos[moved] = i
		}
		if len(e.subs) <= entryMapBelow {
			e.pos = nil
		}
	}
	// A set that shrank far below its capacity gives the memory back.
	if c := cap(e.subs); c > 64 && len(e.subs) < c/4 {
		e.subs = append(make([]S, 0, 2*len(e.subs)), e.subs...)
	}
	return true
}
