package loadgen

import "testing"

func TestSeqTrackerInOrder(t *testing.T) {
	tr := NewSeqTracker()
	for s := uint64(0); s < 100; s++ {
		tr.Observe(1, 1, s)
		tr.Observe(2, 1, s) // another publisher: its own stream
	}
	want := SeqCounts{Received: 200, Unique: 200}
	if got := tr.Counts(); got != want {
		t.Fatalf("got %+v want %+v", got, want)
	}
}

func TestSeqTrackerDuplicatesReordersHoles(t *testing.T) {
	tr := NewSeqTracker()
	for _, s := range []uint64{0, 1, 3, 2, 2, 5, 5, 5, 9} {
		tr.Observe(0, 7, s)
	}
	// Seen: 0 1 2 3 5 9; duplicates: 2 once, 5 twice; reordered: 2 (arrived after 3);
	// holes: 4 6 7 8.
	want := SeqCounts{Received: 9, Unique: 6, Duplicates: 3, Reordered: 1, Holes: 4}
	if got := tr.Counts(); got != want {
		t.Fatalf("got %+v want %+v", got, want)
	}
}

func TestSeqTrackerStreamsAreSeparateByTopic(t *testing.T) {
	tr := NewSeqTracker()
	tr.Observe(1, 1, 0)
	if tr.Observe(1, 2, 0) {
		t.Fatal("same sequence on another topic counted as duplicate")
	}
	if !tr.Observe(1, 1, 0) {
		t.Fatal("repeat not counted as duplicate")
	}
}

func TestSeqTrackerHugeSequenceDoesNotAllocate(t *testing.T) {
	tr := NewSeqTracker()
	tr.Observe(1, 1, 1<<62)
	if c := tr.Counts(); c.Unique != 1 || c.Holes != 0 {
		t.Fatalf("got %+v", c)
	}
}

func TestSeqCountsAdd(t *testing.T) {
	a := SeqCounts{1, 2, 3, 4, 5}
	a.Add(SeqCounts{10, 20, 30, 40, 50})
	if a != (SeqCounts{11, 22, 33, 44, 55}) {
		t.Fatalf("got %+v", a)
	}
}
