package cluster

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"

	"github.com/revenprox/revenprox/telemetry"
	"github.com/revenprox/revenprox/topics"
)

// W3C trace context header names, as the propagator writes them.
const (
	headerTraceparent = "traceparent"
	headerTracestate  = "tracestate"
)

// Interest registers this node's interest in pattern: one NATS subscription on prefix+pattern
// (topic wildcards are NATS wildcards). Called by the proxy for the first local subscriber of
// pattern, possibly under its own lock: it only buffers a SUB. Calling it for a pattern that
// already has interest does nothing. Before Start the pattern is remembered and subscribed by
// Start; after Shutdown it is ignored.
//
// Design note: all pattern subscriptions are channel subscriptions feeding one shared queue
// drained by one dispatcher goroutine. A nats.go async subscription would cost a goroutine and
// its own pending buffers per pattern, and a node can hold tens of thousands of patterns; the
// shared queue also keeps the arrival order across patterns.
func (m *Mesh) Interest(pattern string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state == stateClosed {
		return
	}
	if _, ok := m.subs[pattern]; ok {
		return
	}
	ps := &patternSub{}
	m.subs[pattern] = ps
	if m.state == stateStarted {
		m.subscribeLocked(m.nc.Load(), pattern, ps)
	}
}

// Uninterest drops the NATS subscription of pattern (its last local subscriber left). Messages
// already queued for it are still handed to Deliver, which finds no local subscriber.
func (m *Mesh) Uninterest(pattern string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ps, ok := m.subs[pattern]
	if !ok {
		return
	}
	delete(m.subs, pattern)
	if ps.sub == nil || m.state == stateClosed {
		return
	}
	m.countDropsLocked(ps)
	if err := ps.sub.Unsubscribe(); err != nil {
		if ok, suppressed := m.warn.allow("unsubscribe"); ok {
			m.log.Warn("NATS unsubscribe failed", "pattern", pattern, "error", err, "suppressed", suppressed)
		}
	}
}

// subscribeLocked creates the NATS subscription of pattern. m.mu is held. A single node keeps
// only the bookkeeping: no other node can publish into its server.
func (m *Mesh) subscribeLocked(nc *nats.Conn, pattern string, ps *patternSub) {
	if m.mode == ModeSingle {
		return
	}
	sub, err := nc.ChanSubscribe(m.prefix+pattern, m.deliverCh)
	if err != nil {
		// Only a closed connection or an invalid subject fail here; the proxy validated the
		// pattern, so this means shutdown is under way.
		if ok, suppressed := m.warn.allow("subscribe"); ok {
			m.log.Warn("NATS subscribe failed", "pattern", pattern, "error", err, "suppressed", suppressed)
		}
		return
	}
	ps.sub = sub
}

// Patterns reports how many patterns this node has NATS interest in.
func (m *Mesh) Patterns() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.subs)
}

// countDrops adds the slow-consumer drops of every subscription to
// messages_dropped_total{reason="nats"}. Called once per heartbeat.
func (m *Mesh) countDrops() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state != stateStarted {
		return
	}
	for _, ps := range m.subs {
		m.countDropsLocked(ps)
	}
	if m.hbSub != nil {
		if n, err := m.hbSub.Dropped(); err == nil && n > m.hbDropped {
			m.metrics.MessagesDropped.WithLabelValues(telemetry.DropNATS).Add(float64(n - m.hbDropped))
			m.hbDropped = n
		}
	}
}

func (m *Mesh) countDropsLocked(ps *patternSub) {
	if ps.sub == nil {
		return
	}
	n, err := ps.sub.Dropped()
	if err != nil || n <= ps.dropped {
		return
	}
	m.metrics.MessagesDropped.WithLabelValues(telemetry.DropNATS).Add(float64(n - ps.dropped))
	ps.dropped = n
}

// dispatch hands every message of the pattern subscriptions to Deliver, in arrival order.
// maxBurst bounds the messages handed to Deliver between two DeliverDone calls.
const maxBurst = 256

func (m *Mesh) deliverOne(msg *nats.Msg) {
	if out := m.decode(msg, time.Now()); out != nil {
		m.opts.Deliver(out)
	}
}

func (m *Mesh) dispatch() {
	defer close(m.dispatchDone)
	for {
		select {
		case msg := <-m.deliverCh:
			m.deliverOne(msg)
			// Hand over everything already waiting before signalling the end of the burst,
			// bounded so one flood cannot postpone the receiver's writes indefinitely.
			for range maxBurst {
				select {
				case more := <-m.deliverCh:
					m.deliverOne(more)
					continue
				default:
				}
				break
			}
			if m.opts.DeliverDone != nil {
				m.opts.DeliverDone()
			}
		case <-m.stopDispatch:
			return
		}
	}
}

// decode turns a NATS message into a Message; nil when it cannot be delivered.
func (m *Mesh) decode(msg *nats.Msg, now time.Time) *Message {
	if msg.Sub == nil || !strings.HasPrefix(msg.Subject, m.prefix) || !strings.HasPrefix(msg.Sub.Subject, m.prefix) {
		return nil
	}
	out := &Message{
		Pattern: msg.Sub.Subject[len(m.prefix):],
		Topic:   msg.Subject[len(m.prefix):],
		Data:    msg.Data,
		Ingress: now,
		Ctx:     context.Background(),
	}
	h := msg.Header
	if h != nil {
		out.Origin = h.Get(HeaderNode)
		if ts := h.Get(HeaderTs); ts != "" {
			if ns, err := strconv.ParseInt(ts, 10, 64); err == nil && ns > 0 {
				out.Ingress = time.Unix(0, ns)
			}
		}
		if _, ok := h[headerTraceparent]; ok {
			out.Ctx = otel.GetTextMapPropagator().Extract(out.Ctx, headerCarrier(h))
		}
	}
	if out.Origin == "" {
		// A plain NATS client may publish on any subject under the prefix; RevenProx nodes
		// validated their topics at ingress.
		if err := topics.ValidateTopic(out.Topic); err != nil {
			if ok, suppressed := m.warn.allow("invalid-topic"); ok {
				m.log.Warn("ignoring NATS message whose subject is not a valid topic", "subject", msg.Subject, "suppressed", suppressed)
			}
			return nil
		}
	}
	return out
}

// Publish sends a publication to the other nodes: subject prefix+topic, headers Rp-Node,
// Rp-Ts (ingress Unix nanoseconds) and the trace context of ctx. It never blocks on the
// network beyond nats.go's buffered write and never fails the caller: errors are counted in
// messages_dropped_total{reason="nats"} and logged, rate-limited. data is not retained.
// On a single node it returns at once: nothing can connect to its listener-less server, so a
// publication handed to it would cost a NATS round through the in-process pipe and be dropped.
func (m *Mesh) Publish(ctx context.Context, topic string, data []byte, ingress time.Time) {
	if m.mode == ModeSingle {
		return
	}
	nc := m.nc.Load()
	if nc == nil {
		m.publishFailed(errNotStarted)
		return
	}
	out := m.pubPool.Get().(*outMsg)
	out.prepare(m.prefix, topic, data, ingress)
	otel.GetTextMapPropagator().Inject(ctx, out)
	err := nc.PublishMsg(&out.msg)
	out.reset()
	m.pubPool.Put(out)
	if err != nil {
		m.publishFailed(err)
		return
	}
	m.metrics.ClusterMessagesSent.Inc()
}

type publishError string

func (e publishError) Error() string { return string(e) }

const errNotStarted = publishError("cluster: not started")

func (m *Mesh) publishFailed(err error) {
	m.metrics.MessagesDropped.WithLabelValues(telemetry.DropNATS).Inc()
	if m.closing.Load() {
		return
	}
	if ok, suppressed := m.warn.allow("publish:" + err.Error()); ok {
		m.log.Warn("NATS publish failed; message not forwarded to other nodes", "error", err, "suppressed", suppressed)
	}
}

// outMsg is a reusable outgoing NATS message. nats.go serializes subject, headers and data into
// its write buffer inside PublishMsg, so the message and its header slices can be reused at once.
type outMsg struct {
	msg  nats.Msg
	node []string // shared, never written
	ts   [1]string
	tp   [1]string
	tst  [1]string
	tsb  [20]byte
}

func newOutMsg(node string) *outMsg {
	o := &outMsg{node: []string{node}}
	o.msg.Header = make(nats.Header, 4)
	return o
}

func (o *outMsg) prepare(prefix, topic string, data []byte, ingress time.Time) {
	o.msg.Subject = prefix + topic
	o.msg.Data = data
	o.ts[0] = string(strconv.AppendInt(o.tsb[:0], ingress.UnixNano(), 10))
	o.msg.Header[HeaderNode] = o.node
	o.msg.Header[HeaderTs] = o.ts[:]
}

func (o *outMsg) reset() {
	o.msg.Data = nil
	for k := range o.msg.Header {
		if k != HeaderNode && k != HeaderTs {
			delete(o.msg.Header, k) // whatever the propagator wrote
		}
	}
}

// Get, Set and Keys make outMsg a propagation.TextMapCarrier writing into the reused header.
func (o *outMsg) Get(key string) string { return o.msg.Header.Get(key) }

func (o *outMsg) Set(key, value string) {
	switch key {
	case headerTraceparent:
		o.tp[0] = value
		o.msg.Header[key] = o.tp[:]
	case headerTracestate:
		o.tst[0] = value
		o.msg.Header[key] = o.tst[:]
	default:
		o.msg.Header[key] = []string{value}
	}
}

func (o *outMsg) Keys() []string {
	keys := make([]string, 0, len(o.msg.Header))
	for k := range o.msg.Header {
		keys = append(keys, k)
	}
	return keys
}

// headerCarrier reads a received NATS header as a propagation.TextMapCarrier. Unlike
// propagation.HeaderCarrier it does not canonicalize keys: NATS headers are case-sensitive and
// the W3C propagator uses lower-case names.
type headerCarrier nats.Header

func (h headerCarrier) Get(key string) string { return nats.Header(h).Get(key) }

func (h headerCarrier) Set(key, value string) { nats.Header(h).Set(key, value) }

func (h headerCarrier) Keys() []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	return keys
}
