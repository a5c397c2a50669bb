package proxy

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/revenprox/revenprox/cluster"
	"github.com/revenprox/revenprox/telemetry"
	"github.com/revenprox/revenprox/topics"
)

// publish delivers a message entering this node (from a client, the admin API) to local
// subscribers and hands it once to the mesh for remote nodes. The mesh never echoes it back
// (NoEcho), so local and remote paths cannot double up. Connections that need their queue
// written are appended to writers when the caller batches them (a client's reader flushes after
// every frame it has buffered), or flushed before publish returns when writers is nil.
func (s *Server) publish(ctx context.Context, topic string, data []byte, ingress time.Time, source string, writers *[]*conn) {
	s.received[source].Inc()
	own := writers == nil
	if own {
		writers = getWriterList()
	}
	ctx, span := s.startSpan(ctx, telemetry.SpanPublish, topic)
	if span == nil {
		s.fanout(topic, data, ingress, writers)
	} else {
		_, deliver := s.startSpan(ctx, telemetry.SpanDeliver, topic)
		s.fanout(topic, data, ingress, writers)
		deliver.End()
	}
	if own {
		flushWriters(writers)
	}
	s.mesh.Publish(ctx, topic, data, ingress)
	if span != nil {
		span.End()
	}
}

// fanout encodes one frame per matching pattern and shares its bytes among all that pattern's
// subscribers. Connections this call made busy are appended to writers; the caller writes them
// after the index lock is released.
func (s *Server) fanout(topic string, data []byte, ingress time.Time, writers *[]*conn) {
	ts := ingress.UnixMilli()
	nanos := ingress.UnixNano()
	s.index.Match(topic, func(pattern string, subs []*conn) {
		f := outFrame{buf: encodeMessageFrame(topic, pattern, data, ts), ingress: nanos}
		for _, c := range subs {
			if c.out.enqueue(f) == needsFlush {
				*writers = append(*writers, c)
			}
		}
	})
}

// writerLists recycle the per-publish list of connections this goroutine must flush. Flushing
// after Match (not inside it) keeps socket writes out of the index's read lock.
var writerLists = sync.Pool{New: func() any { l := make([]*conn, 0, 64); return &l }}

func getWriterList() *[]*conn { return writerLists.Get().(*[]*conn) }

// flushWriters writes each connection's queue without blocking, then recycles the list.
func flushWriters(writers *[]*conn) {
	for _, c := range *writers {
		c.out.flush()
	}
	clear(*writers)
	*writers = (*writers)[:0]
	if cap(*writers) <= 1<<16 {
		writerLists.Put(writers)
	}
}

// deliverRemote is the mesh's callback: a message that arrived on the NATS subscription for
// m.Pattern goes to the local subscribers of exactly that pattern, so a subscription matched
// by several of this node's patterns still receives it once per subscription.
func (s *Server) deliverRemote(m *cluster.Message) {
	if topics.ValidateTopic(m.Topic) != nil {
		return // a plain NATS client used a subject that is not a valid topic
	}
	data := m.Data
	if m.Origin == "" && !json.Valid(data) {
		// A plain NATS client published bytes that are not JSON: deliver them as a JSON string.
		quoted, _ := json.Marshal(string(data))
		data = quoted
	}
	s.received[telemetry.SourceCluster].Inc()
	ctx, hop := s.startSpan(m.Ctx, telemetry.SpanClusterReceive, m.Topic)
	_, span := s.startSpan(ctx, telemetry.SpanDeliver, m.Topic)
	f := outFrame{
		buf:     encodeMessageFrame(m.Topic, m.Pattern, data, m.Ingress.UnixMilli()),
		ingress: m.Ingress.UnixNano(),
	}
	s.index.Lookup(m.Pattern, func(subs []*conn) {
		for _, c := range subs {
			if c.out.enqueue(f) == needsFlush {
				s.remoteWriters = append(s.remoteWriters, c)
			}
		}
	})
	if span != nil {
		span.End()
		hop.End()
	}
}

// flushRemote is the mesh's DeliverDone: it writes the queues a burst of cross-node messages
// made busy, one write per subscriber for the whole burst. It runs on the mesh's dispatcher
// goroutine, the only user of remoteWriters.
func (s *Server) flushRemote() {
	for _, c := range s.remoteWriters {
		c.out.flush()
	}
	clear(s.remoteWriters)
	s.remoteWriters = s.remoteWriters[:0]
	if cap(s.remoteWriters) > 1<<16 {
		s.remoteWriters = nil
	}
}

// connRegistry holds every open connection, sharded so accept and close do not contend.
type connRegistry struct {
	shards [connShards]connShard
}

const connShards = 16

type connShard struct {
	mu    sync.Mutex
	conns map[*conn]struct{}
}

func (r *connRegistry) shard(c *conn) *connShard { return &r.shards[c.id%connShards] }

func (r *connRegistry) add(c *conn) {
	sh := r.shard(c)
	sh.mu.Lock()
	if sh.conns == nil {
		sh.conns = make(map[*conn]struct{})
	}
	sh.conns[c] = struct{}{}
	sh.mu.Unlock()
}

func (r *connRegistry) remove(c *conn) {
	sh := r.shard(c)
	sh.mu.Lock()
	delete(sh.conns, c)
	sh.mu.Unlock()
}

// eachInShard calls fn for every connection of one shard (fn must not block).
func (r *connRegistry) eachInShard(i int, fn func(c *conn)) {
	sh := &r.shards[i]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	for c := range sh.conns {
		fn(c)
	}
}

func (r *connRegistry) each(fn func(c *conn)) {
	for i := range r.shards {
		r.eachInShard(i, fn)
	}
}
