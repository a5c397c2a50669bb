package loadgen

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// fanout runs the fanout and cluster scenarios: subscribers spread over the URLs, publishers
// on the first URL or on all of them, publishing at a fixed total rate for Duration.
func (r *run) fanout(ctx context.Context) error {
	o := r.o
	nURL := len(o.URLs)
	cluster := o.Scenario == ScenarioCluster
	pubNode := func(p int) int {
		if o.PublishOn == "all" {
			return p % nURL
		}
		return 0
	}
	hist := NewShardedHist(16)
	// stepHist holds the current ramp step's latencies (nil outside a ramp).
	var stepHist atomic.Pointer[ShardedHist]
	var local, remote *ShardedHist
	if cluster {
		local, remote = NewShardedHist(16), NewShardedHist(16)
	}
	var lastRecv atomic.Int64
	var badPayloads atomic.Int64
	subscribed := make([]int64, o.Topics)
	var trackers []*SeqTracker
	var trackersMu sync.Mutex

	// Subscribers.
	r.dialMany(ctx, o.mine(o.Subscribers), func(i int) string { return o.URLs[i%nURL] }, func(i int, c *Conn) error {
		pattern, cover := o.subscription(i)
		if err := c.Subscribe(ctx, pattern, o.HandshakeTimeout); err != nil {
			return err
		}
		tr := NewSeqTracker()
		trackersMu.Lock()
		trackers = append(trackers, tr)
		for _, t := range cover {
			subscribed[t]++
		}
		trackersMu.Unlock()
		node := i % nURL
		r.keep(c, Handler{
			ServerError: r.serverError,
			Delivery: func(b []byte) {
				now := time.Now().UnixNano()
				st, err := ParsePayload(b)
				if err != nil {
					badPayloads.Add(1)
					return
				}
				tr.Observe(st.Publisher, st.Topic, st.Seq)
				r.c.Received.Add(1)
				lat := (now - st.SentNanos) / 1000
				hist.Record(i, lat)
				if sh := stepHist.Load(); sh != nil {
					sh.Record(i, lat)
				}
				if cluster {
					if pubNode(int(st.Publisher)) == node {
						local.Record(i, lat)
					} else {
						remote.Record(i, lat)
					}
				}
				for {
					old := lastRecv.Load()
					if now <= old || lastRecv.CompareAndSwap(old, now) {
						break
					}
				}
			},
		})
		return nil
	}, true)

	// Publishers: counted as connections too, but their latency is not a subscriber's.
	pubIdx := o.mine(o.Publishers)
	pubs := make(map[int]*Conn, len(pubIdx))
	var pubsMu sync.Mutex
	r.dialMany(ctx, pubIdx, func(p int) string { return o.URLs[pubNode(p)] }, func(p int, c *Conn) error {
		pubsMu.Lock()
		pubs[p] = c
		pubsMu.Unlock()
		r.keep(c, Handler{ServerError: r.serverError})
		return nil
	}, true)
	r.res.SubscribedPerTopic = subscribed
	if o.Settle > 0 {
		sleepCtx(ctx, o.Settle)
	}

	if !o.Ramp { // a ramp opens one measured window per step
		if err := r.ctl.Ready(ctx); err != nil {
			return err
		}
	}

	// One publisher state per connection, so sequence numbers run on across ramp steps.
	states := make([]*pubState, 0, len(pubs))
	for p, c := range pubs {
		states = append(states, &pubState{p: p, c: c, seqs: make([]uint64, o.Topics)})
	}
	ph := &phase{r: r, states: states, lastRecv: &lastRecv, stepHist: &stepHist}
	if o.Ramp {
		if err := r.ramp(ctx, ph, subscribed); err != nil {
			r.closeAll()
			return err
		}
	} else {
		total := o.Count
		if total <= 0 {
			total = int64(o.Rate * o.Duration.Seconds())
		}
		ph.publish(ctx, o.Rate, total)
		ph.drain(ctx)
	}
	published, firstSend, lastSend := ph.totals()
	err := r.ctl.Done(ctx)

	r.closeAll()
	var sc SeqCounts
	for _, tr := range trackers {
		sc.Add(tr.Counts())
	}
	res := r.res
	res.Seq = sc
	res.PublishedPerTopic = published
	for _, n := range published {
		res.Published += n
	}
	res.BadPayloads = badPayloads.Load()
	res.Latency = EncodeHist(hist.Merged())
	if cluster {
		res.LatencyLocal = EncodeHist(local.Merged())
		res.LatencyRemote = EncodeHist(remote.Merged())
	}
	res.FirstSendNanos, res.LastSendNanos, res.LastRecvNanos = firstSend, lastSend, lastRecv.Load()
	return err
}

// pubState is one publisher connection and its sequence numbers per topic.
type pubState struct {
	p      int
	c      *Conn
	seqs   []uint64
	failed bool // a publish failed: the connection is gone, later rounds skip it
}

// phase publishes in one or more rounds (one per ramp step) over the same connections.
type phase struct {
	r        *run
	states   []*pubState
	lastRecv *atomic.Int64
	stepHist *atomic.Pointer[ShardedHist]

	published []int64 // per topic, over the whole run (written between rounds only)

	firstSend, lastSend atomic.Int64 // whole run
	roundFirst          atomic.Int64 // current round
	roundLast           atomic.Int64
	roundFailures       atomic.Int64
}

func storeMax(a *atomic.Int64, v int64) {
	for {
		old := a.Load()
		if v <= old || a.CompareAndSwap(old, v) {
			return
		}
	}
}

// publish sends total publishes at rate per second, spread over the publishers (counts are
// global; this process sends its publishers' share), and returns what it published per topic.
func (ph *phase) publish(ctx context.Context, rate float64, total int64) []int64 {
	r, o := ph.r, ph.r.o
	perPub := rate / float64(o.Publishers)
	dur := time.Duration(float64(total) / rate * float64(time.Second))
	ph.roundFirst.Store(0)
	ph.roundLast.Store(0)
	ph.roundFailures.Store(0)
	round := make([]int64, o.Topics)
	var roundMu sync.Mutex
	// A little slack so that a publisher slightly behind schedule still sends its quota.
	pubCtx, cancel := context.WithTimeout(ctx, dur+dur/10+200*time.Millisecond)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for _, st := range ph.states {
		if st.failed {
			continue
		}
		quota := total / int64(o.Publishers)
		if int64(st.p) < total%int64(o.Publishers) {
			quota++
		}
		wg.Add(1)
		go func(st *pubState, quota int64) {
			defer wg.Done()
			mine := make([]int64, o.Topics)
			defer func() {
				roundMu.Lock()
				for t, n := range mine {
					round[t] += n
				}
				roundMu.Unlock()
			}()
			// Spread the publishers' phases evenly over one interval.
			offset := time.Duration(float64(st.p) / float64(o.Publishers) / perPub * float64(time.Second))
			var buf []byte
			for k := int64(0); k < quota; k++ {
				due := start.Add(offset + time.Duration(float64(k)/perPub*float64(time.Second)))
				if d := time.Until(due); d > 0 {
					sleepCtx(pubCtx, d)
				}
				if pubCtx.Err() != nil {
					return
				}
				t := (st.p + int(k)) % o.Topics
				now := time.Now().UnixNano()
				buf = AppendPayload(buf[:0], Stamp{Publisher: uint32(st.p), Topic: uint32(t), Seq: st.seqs[t], SentNanos: now}, o.Size)
				if err := st.c.Publish(TopicName(t), buf); err != nil {
					st.failed = true
					ph.roundFailures.Add(1)
					r.mu.Lock()
					r.res.PublishFailures++
					r.mu.Unlock()
					return
				}
				st.seqs[t]++
				mine[t]++
				r.c.Published.Add(1)
				ph.firstSend.CompareAndSwap(0, now)
				ph.roundFirst.CompareAndSwap(0, now)
				storeMax(&ph.lastSend, now)
				storeMax(&ph.roundLast, now)
			}
		}(st, quota)
	}
	wg.Wait()
	ph.published = addSlice(ph.published, round)
	return round
}

// drainPoll and drainQuietPolls: the stream is quiet after this many consecutive polls without a
// delivery. Counting polls rather than wall time matters at saturation: a generator process that
// was descheduled for half a second must see its readers run again before it calls the stream
// quiet, or it ends a step with deliveries still in its sockets and counts them missing.
const (
	drainPoll       = 50 * time.Millisecond
	drainQuietPolls = 10
)

// drain waits until deliveries stop arriving (drainQuietPolls polls in a row), at most Drain.
func (ph *phase) drain(ctx context.Context) {
	r := ph.r
	drainEnd := time.Now().Add(r.o.Drain)
	last, quiet := r.c.Received.Load(), 0
	for time.Now().Before(drainEnd) && ctx.Err() == nil {
		sleepCtx(ctx, drainPoll)
		if n := r.c.Received.Load(); n != last {
			last, quiet = n, 0
		} else if quiet++; quiet >= drainQuietPolls {
			break
		}
	}
}

// totals returns the publishes per topic over the whole run and the first and last send times.
func (ph *phase) totals() ([]int64, int64, int64) {
	published := ph.published
	if published == nil {
		published = make([]int64, ph.r.o.Topics)
	}
	return published, ph.firstSend.Load(), ph.lastSend.Load()
}

// ramp runs the saturation search: one Ready/publish/drain/Step round per rate step. The
// measured window of each step opens in Ready and closes in Step (StepControl) or right after
// the drain; the run's final Done follows the last step.
func (r *run) ramp(ctx context.Context, ph *phase, subscribed []int64) error {
	o := r.o
	for k := 0; k < o.RampSteps; k++ {
		if err := r.ctl.Ready(ctx); err != nil {
			return err
		}
		rate := o.RampRate(k)
		sh := NewShardedHist(16)
		ph.stepHist.Store(sh)
		recv0, closed0 := r.c.Received.Load(), r.c.Closed.Load()
		round := ph.publish(ctx, rate, int64(rate*o.Duration.Seconds()))
		ph.drain(ctx)
		ph.stepHist.Store(nil)
		st := &StepResult{
			Step: k + 1, Rate: rate,
			PublishedPerTopic: round, SubscribedPerTopic: append([]int64(nil), subscribed...),
			PublishFailures: ph.roundFailures.Load(),
			Received:        r.c.Received.Load() - recv0,
			ClosedByServer:  r.c.Closed.Load() - closed0,
			Latency:         EncodeHist(sh.Merged()),
			FirstSendNanos:  ph.roundFirst.Load(), LastSendNanos: ph.roundLast.Load(), LastRecvNanos: ph.lastRecv.Load(),
		}
		for _, n := range round {
			st.Published += n
		}
		r.mu.Lock()
		r.res.Steps = append(r.res.Steps, st)
		r.mu.Unlock()
		next := false
		var err error
		if sc, ok := r.ctl.(StepControl); ok {
			next, err = sc.Step(ctx, st)
		} else {
			next = st.Judge(o.RampP99).Pass
		}
		if err != nil {
			return err
		}
		if !next || ctx.Err() != nil {
			break
		}
	}
	return nil //nolint:nilerr // a cancelled run ends the ramp early; the steps so far are the result
}
