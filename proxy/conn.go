package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime/debug"
	"slices"
	"strconv"
	"time"

	"golang.org/x/time/rate"

	"github.com/revenprox/revenprox/auth"
	"github.com/revenprox/revenprox/telemetry"
	"github.com/revenprox/revenprox/topics"
)

// conn is one client connection. Its reader goroutine owns subs, limiter and strikes; out is
// shared with publishers (see outbound).
type conn struct {
	srv      *Server
	in       frameReader
	id       uint64
	decision *auth.Decision
	created  time.Time
	out      outbound

	// Reader-owned state. deferred lists connections (this one included) whose queues the
	// reader made busy while handling frames already buffered; they are written when the buffer
	// runs dry, so a burst of pipelined publishes costs one write per subscriber, not one per
	// message (as nats-server flushes after each read).
	deferred []*conn
	subs     []string // subscribed patterns; a slice, not a map: most connections hold a few, and idle memory matters more than lookup speed at ≤ max_subscriptions
	limiter  *rate.Limiter
	strikes  int
}

func (c *conn) connID() string { return "c-" + strconv.FormatUint(c.id, 16) }

// send queues a frame. Backpressure is applied by out.
func (c *conn) send(buf []byte) { c.out.send(outFrame{buf: buf}) }

// reply queues a frame from the reader goroutine; it is written with the next flushDeferred.
func (c *conn) reply(buf []byte) {
	if c.out.enqueue(outFrame{buf: buf}) == needsFlush {
		c.deferred = append(c.deferred, c)
	}
}

// flushDeferred writes every queue the reader made busy since the last flush.
func (c *conn) flushDeferred() {
	for _, w := range c.deferred {
		w.out.flush()
	}
	clear(c.deferred)
	c.deferred = c.deferred[:0]
	if cap(c.deferred) > 4096 {
		c.deferred = nil // a huge fan-out once should not pin a huge array
	}
}

func (c *conn) sendError(id []byte, code, message string) {
	c.reply(encodeError(id, code, message))
}

// readLoop is the connection's only reader. It runs until the socket fails or closes, then
// releases everything the connection holds. Between frames it parks at the top of the loop
// (frameReader.waitReadable) with no buffer, so idle connections stay small.
func (c *conn) readLoop() {
	s := c.srv
	deadline := 2 * s.cfg.PingInterval.D()
	defer c.cleanup()
	defer func() {
		// A bug handling one client's frame must not take the node down: log it, close that
		// connection with 1011, keep serving everyone else.
		if r := recover(); r != nil {
			s.log.Error("Internal error handling a client frame", "conn", c.connID(), "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			c.out.abort(CloseInternal)
		}
	}()
	for {
		if !c.in.frameBuffered() {
			// About to wait on the network: write what the buffered frames produced.
			c.flushDeferred()
		}
		// Any frame, pongs included, proves the peer alive for two more ping intervals.
		_ = c.out.netConn.SetReadDeadline(time.Now().Add(deadline))
		if err := c.in.waitReadable(); err != nil {
			c.readFailed(err)
			return
		}
		op, payload, err := c.in.next()
		if err != nil {
			c.readFailed(err)
			return
		}
		switch op {
		case 0: // a fragment of a longer message
		case wsOpPing:
			c.reply(wsFrame(wsOpPong, payload))
		case wsOpPong:
		case wsOpBinary:
			c.sendError(nil, CodeBadRequest, "binary frames are not supported: send JSON text frames")
		case wsOpText:
			s.metrics.BytesReceived.Add(float64(len(payload)))
			c.handle(payload)
		}
	}
}

// readFailed decides how a connection whose read failed is closed.
func (c *conn) readFailed(err error) {
	switch {
	case errors.Is(err, errFrameTooBig):
		c.out.abort(CloseTooLarge)
	case errors.Is(err, errProtocol):
		c.out.abort(CloseProtocolError)
	case errors.Is(err, errPeerClosed):
		// Answer the client's close after what is already queued (RFC 6455 §5.5.1).
		code := CloseNormal
		if c.in.closeAt == CloseGoingAway {
			code = CloseGoingAway
		}
		c.out.closeAfterFlush(code, closeReasons[code])
	}
}

// cleanup runs once, on the reader goroutine, after the read loop ends.
func (c *conn) cleanup() {
	s := c.srv
	c.flushDeferred() // other connections' queues this reader made busy must still be written
	for _, pattern := range c.subs {
		s.index.Unsubscribe(pattern, c)
	}
	if len(c.subs) > 0 {
		s.subscribedConns.Add(-1)
	}
	c.subs = nil
	// Let a close frame being written reach the client before the socket goes.
	if done := c.out.closeDone(); done != nil {
		t := time.NewTimer(closeWriteWindow)
		select {
		case <-done:
		case <-t.C:
		}
		t.Stop()
	}
	if dropped := c.out.markClosed(); dropped > 0 {
		s.metrics.MessagesDropped.WithLabelValues(telemetry.DropClosed).Add(float64(dropped))
	}
	c.in.release()
	_ = c.out.netConn.Close()
	s.conns.remove(c)
	s.closed.Add(1)
	s.metrics.ConnectionsActive.Dec()
	s.metrics.ConnectionDuration.Observe(time.Since(c.created).Seconds())
	s.releaseSlot()
}

// handle processes one client frame.
func (c *conn) handle(msg []byte) {
	f, err := decodeClientFrame(msg)
	if err != nil {
		c.sendError(f.ID, CodeBadRequest, errMessage(err))
		return
	}
	switch f.Op {
	case opSubscribe:
		c.subscribe(f)
	case opUnsubscribe:
		c.unsubscribe(f)
	case opPublish:
		c.publish(f)
	case opPing:
		c.reply(encodeReply("pong", f.ID))
	case "":
		c.sendError(f.ID, CodeBadRequest, `missing "op"`)
	default:
		c.sendError(f.ID, CodeBadRequest, fmt.Sprintf("unknown op %q: use subscribe, unsubscribe, publish or ping", truncate(f.Op, 32)))
	}
}

func (c *conn) subscribe(f clientFrame) {
	if err := topics.ValidatePattern(f.Topic); err != nil {
		c.sendError(f.ID, CodeInvalidTopic, errMessage(err))
		return
	}
	if slices.Contains(c.subs, f.Topic) {
		c.reply(encodeReply("ack", f.ID)) // idempotent
		return
	}
	if !c.decision.CanSubscribe(f.Topic) {
		c.sendError(f.ID, CodeForbidden, "subscribe to "+f.Topic+" not allowed")
		return
	}
	if len(c.subs) >= c.srv.cfg.Limits.MaxSubscriptions {
		c.sendError(f.ID, CodeTooManySubscriptions, "at most "+strconv.Itoa(c.srv.cfg.Limits.MaxSubscriptions)+" subscriptions per connection")
		return
	}
	if len(c.subs) == 0 {
		c.srv.subscribedConns.Add(1)
	}
	c.subs = append(c.subs, f.Topic)
	c.srv.index.Subscribe(f.Topic, c)
	c.reply(encodeReply("ack", f.ID))
}

func (c *conn) unsubscribe(f clientFrame) {
	if err := topics.ValidatePattern(f.Topic); err != nil {
		c.sendError(f.ID, CodeInvalidTopic, errMessage(err))
		return
	}
	if i := slices.Index(c.subs, f.Topic); i >= 0 {
		c.subs = slices.Delete(c.subs, i, i+1)
		c.srv.index.Unsubscribe(f.Topic, c)
		if len(c.subs) == 0 {
			c.srv.subscribedConns.Add(-1)
		}
	}
	c.reply(encodeReply("ack", f.ID))
}

func (c *conn) publish(f clientFrame) {
	s := c.srv
	if err := topics.ValidateTopic(f.Topic); err != nil {
		c.sendError(f.ID, CodeInvalidTopic, errMessage(err)+" (publish names a literal topic)")
		return
	}
	if len(f.Data) == 0 {
		c.sendError(f.ID, CodeBadRequest, `publish needs "data" (any JSON value)`)
		return
	}
	if !c.decision.CanPublish(f.Topic) {
		c.sendError(f.ID, CodeForbidden, "publish to "+f.Topic+" not allowed")
		return
	}
	if s.cfg.Limits.PublishRate > 0 {
		if c.limiter == nil {
			r := s.cfg.Limits.PublishRate
			c.limiter = rate.NewLimiter(rate.Limit(r), max(1, int(r)))
		}
		if !c.limiter.Allow() {
			c.strikes++
			if c.strikes >= rateLimitStrikeLimit {
				c.sendError(f.ID, CodeRateLimited, "publish rate limit exceeded repeatedly: closing")
				c.out.closeAfterFlush(CloseRateLimited, closeReasons[CloseRateLimited])
				return
			}
			c.sendError(f.ID, CodeRateLimited, "at most "+strconv.FormatFloat(s.cfg.Limits.PublishRate, 'g', -1, 64)+" publishes per second")
			return
		}
		c.strikes = 0
	}
	if messageFrameLen(f.Topic, f.Topic, f.Data) > s.cfg.Backpressure.QueueBytes {
		c.sendError(f.ID, CodeMessageTooLarge, "message larger than a subscriber's outbound queue")
		return
	}
	ctx := context.Background()
	if f.Traceparent != "" {
		ctx = telemetry.ExtractTraceparent(ctx, f.Traceparent)
	}
	s.publish(ctx, f.Topic, f.Data, time.Now(), telemetry.SourceClient, &c.deferred)
	c.reply(encodeReply("ack", f.ID))
}

// messageFrameLen is an upper bound of the frame a publish produces (pattern ≤ topic length is
// not guaranteed for wildcard subscribers, so add room for the longest pattern).
func messageFrameLen(topic, pattern string, data []byte) int {
	return len(msgPart1) + len(topic) + len(msgPart2) + topics.MaxTopicBytes + len(msgPart3) + len(data) + len(msgPart4) + 21 + 10
}

// errMessage strips the package prefix of sentinel errors for client-facing text.
func errMessage(err error) string {
	msg := err.Error()
	for _, prefix := range []string{"proxy: bad frame\n", "topics: invalid topic: "} {
		if len(msg) > len(prefix) && msg[:len(prefix)] == prefix {
			msg = msg[len(prefix):]
		}
	}
	return msg
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// remoteIP returns the host part of an address.
func remoteIP(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}
