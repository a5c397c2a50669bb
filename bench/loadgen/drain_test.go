package loadgen

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// TestDrainWaitsForTheStreamToStop: deliveries that keep arriving, even slowly, hold the drain
// open; once they stop it ends after drainQuietPolls polls without a delivery, well before Drain.
func TestDrainWaitsForTheStreamToStop(t *testing.T) {
	counters := &Counters{}
	ph := &phase{r: &run{o: &Options{Drain: 30 * time.Second}, c: counters}}
	const deliveries = 40
	var lastDelivery atomic.Int64
	feederDone := make(chan struct{})
	go func() {
		defer close(feederDone)
		ticker := time.NewTicker(drainPoll / 2) // slower than nothing, faster than the quiet window
		defer ticker.Stop()
		for range deliveries {
			<-ticker.C
			counters.Received.Add(1)
			lastDelivery.Store(time.Now().UnixNano())
		}
	}()
	start := time.Now()
	ph.drain(context.Background())
	end := time.Now()
	<-feederDone
	if got := counters.Received.Load(); got != deliveries {
		t.Fatalf("drain returned after %d of %d deliveries", got, deliveries)
	}
	if quiet := end.Sub(time.Unix(0, lastDelivery.Load())); quiet < drainQuietPolls*drainPoll*9/10 {
		t.Fatalf("drain returned %v after the last delivery, want at least %d polls of %v", quiet, drainQuietPolls, drainPoll)
	}
	if elapsed := end.Sub(start); elapsed > 10*time.Second {
		t.Fatalf("drain took %v for a stream that stopped after %v", elapsed, time.Duration(deliveries)*drainPoll/2)
	}
}

// TestDrainBoundedByDrainOption: a stream that never stops ends the drain at Options.Drain.
func TestDrainBoundedByDrainOption(t *testing.T) {
	counters := &Counters{}
	ph := &phase{r: &run{o: &Options{Drain: 600 * time.Millisecond}, c: counters}}
	ctx, cancel := context.WithCancel(context.Background())
	feederDone := make(chan struct{})
	go func() {
		defer close(feederDone)
		ticker := time.NewTicker(drainPoll / 4)
		defer ticker.Stop()
		for ctx.Err() == nil {
			<-ticker.C
			counters.Received.Add(1)
		}
	}()
	start := time.Now()
	ph.drain(ctx)
	elapsed := time.Since(start)
	cancel()
	<-feederDone
	if elapsed < 600*time.Millisecond || elapsed > 10*time.Second {
		t.Fatalf("drain of an endless stream took %v, want about Drain (600ms)", elapsed)
	}
}
