package loadgen

// SeqTracker accounts for the deliveries one subscriber receives: for every stream
// (publisher, topic) it remembers which sequence numbers arrived, so it can tell a first
// arrival from a duplicate, and an in-order arrival from a late one. It is owned by one
// goroutine.
type SeqTracker struct {
	streams map[uint64]*seqStream
	counts  SeqCounts
}

// SeqCounts are the totals of one or more trackers.
type SeqCounts struct {
	// Received counts every delivery, duplicates included.
	Received int64 `json:"received"`
	// Unique counts distinct (stream, sequence) deliveries.
	Unique int64 `json:"unique"`
	// Duplicates counts deliveries of a sequence already seen.
	Duplicates int64 `json:"duplicates"`
	// Reordered counts first arrivals of a sequence lower than one already seen on the stream.
	Reordered int64 `json:"reordered"`
	// Holes counts sequences missing below the highest one seen on each stream (losses that
	// are visible without knowing what was published; tail losses are not holes).
	Holes int64 `json:"holes"`
}

// Add sums o into c.
func (c *SeqCounts) Add(o SeqCounts) {
	c.Received += o.Received
	c.Unique += o.Unique
	c.Duplicates += o.Duplicates
	c.Reordered += o.Reordered
	c.Holes += o.Holes
}

type seqStream struct {
	seen []uint64 // bitset of sequences seen
	max  uint64   // highest sequence seen
	n    uint64   // distinct sequences seen
}

// NewSeqTracker returns an empty tracker.
func NewSeqTracker() *SeqTracker { return &SeqTracker{streams: make(map[uint64]*seqStream)} }

// maxTrackedSeq bounds the bitset so a corrupt sequence cannot allocate unbounded memory.
const maxTrackedSeq = 1 << 30

// Observe records one delivery and reports whether it was a duplicate.
func (t *SeqTracker) Observe(publisher, topic uint32, seq uint64) (duplicate bool) {
	t.counts.Received++
	if seq >= maxTrackedSeq {
		t.counts.Unique++ // cannot track; count as unique rather than invent a duplicate
		return false
	}
	key := uint64(publisher)<<32 | uint64(topic)
	s := t.streams[key]
	if s == nil {
		s = &seqStream{}
		t.streams[key] = s
	}
	w := seq / 64
	for uint64(len(s.seen)) <= w {
		s.seen = append(s.seen, 0)
	}
	bit := uint64(1) << (seq % 64)
	if s.seen[w]&bit != 0 {
		t.counts.Duplicates++
		return true
	}
	s.seen[w] |= bit
	t.counts.Unique++
	if s.n > 0 && seq < s.max {
		t.counts.Reordered++
	}
	if s.n == 0 || seq > s.max {
		s.max = seq
	}
	s.n++
	return false
}

// Counts returns the totals, holes included. Sequences are expected to start at 0.
func (t *SeqTracker) Counts() SeqCounts {
	c := t.counts
	for _, s := range t.streams {
		c.Holes += int64(s.max + 1 - s.n)
	}
	return c
}
