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

	if err := r.ctl.Ready(ctx); err != nil {
		return err
	}

	// Publish.
	perPub := o.Rate / float64(o.Publishers)
	total := o.Count
	if total <= 0 {
		total = int64(o.Rate * o.Duration.Seconds())
	}
	published := make([]int64, o.Topics)
	var pubMu sync.Mutex
	var firstSend, lastSend atomic.Int64
	// A little slack so that a publisher slightly behind schedule still sends its quota.
	pubCtx, cancel := context.WithTimeout(ctx, o.Duration+o.Duration/10+200*time.Millisecond)
	start := time.Now()
	var wg sync.WaitGroup
	for p, c := range pubs {
		quota := total / int64(o.Publishers)
		if int64(p) < total%int64(o.Publishers) {
			quota++
		}
		wg.Add(1)
		go func(p int, c *Conn, quota int64) {
			defer wg.Done()
			seqs := make([]uint64, o.Topics)
			mine := make([]int64, o.Topics)
			defer func() {
				pubMu.Lock()
				for t, n := range mine {
					published[t] += n
				}
				pubMu.Unlock()
			}()
			// Spread the publishers' phases evenly over one interval.
			offset := time.Duration(float64(p) / float64(o.Publishers) / perPub * float64(time.Second))
			var buf []byte
			for k := int64(0); k < quota; k++ {
				due := start.Add(offset + time.Duration(float64(k)/perPub*float64(time.Second)))
				if d := time.Until(due); d > 0 {
					sleepCtx(pubCtx, d)
				}
				if pubCtx.Err() != nil {
					return
				}
				t := (p + int(k)) % o.Topics
				now := time.Now().UnixNano()
				buf = AppendPayload(buf[:0], Stamp{Publisher: uint32(p), Topic: uint32(t), Seq: seqs[t], SentNanos: now}, o.Size)
				if err := c.Publish(TopicName(t), buf); err != nil {
					r.mu.Lock()
					r.res.PublishFailures++
					r.mu.Unlock()
					return
				}
				seqs[t]++
				mine[t]++
				r.c.Published.Add(1)
				firstSend.CompareAndSwap(0, now)
				for {
					old := lastSend.Load()
					if now <= old || lastSend.CompareAndSwap(old, now) {
						break
					}
				}
			}
		}(p, c, quota)
	}
	wg.Wait()
	cancel()

	// Drain: wait until deliveries stop arriving for a while, at most Drain.
	drainEnd := time.Now().Add(o.Drain)
	last, quietSince := r.c.Received.Load(), time.Now()
	for time.Now().Before(drainEnd) && ctx.Err() == nil {
		sleepCtx(ctx, 50*time.Millisecond)
		if n := r.c.Received.Load(); n != last {
			last, quietSince = n, time.Now()
		} else if time.Since(quietSince) > 500*time.Millisecond {
			break
		}
	}
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
	res.FirstSendNanos, res.LastSendNanos, res.LastRecvNanos = firstSend.Load(), lastSend.Load(), lastRecv.Load()
	return err
}
