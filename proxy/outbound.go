package proxy

import (
	"net"
	"sync"
	"time"

	"github.com/revenprox/revenprox/config"
	"github.com/revenprox/revenprox/telemetry"
)

// outFrame is one complete WebSocket frame waiting in a connection's queue. Message frames are
// shared by every recipient: buf is never modified after creation.
type outFrame struct {
	buf     []byte
	ingress int64 // ingress Unix nanoseconds for message frames (latency metric); 0 otherwise
}

// Writer tuning.
const (
	writeBatchBytes  = 64 << 10         // bytes copied into one socket write
	writeTimeout     = 10 * time.Second // a socket that accepts nothing for this long is dead
	closeWriteWindow = time.Second      // time given to a close frame on a stuck socket
	closeReplyWait   = time.Second      // time a client gets to answer our close frame
)

// writeBufPool holds batch buffers only while a writer is running, so idle connections own no
// write buffer (design §11).
var writeBufPool = sync.Pool{New: func() any { b := make([]byte, 0, writeBatchBytes); return &b }}

// outbound is a connection's byte-bounded queue and its on-demand writer. No goroutine exists
// while the queue is empty: enqueue starts one, and it exits once it has drained the queue.
//
// Lock order: the subscription index lock may be held when enqueue is called; outbound.mu is
// never held while calling into the index or the network.
type outbound struct {
	mu      sync.Mutex
	frames  []outFrame    // unwritten frames, oldest first
	bytes   int           // sum of len(buf) over frames
	writing bool          // a writer goroutine is running
	closed  bool          // no more frames accepted
	closing []byte        // close frame to write after the queue, then shut the socket
	flushed chan struct{} // made when a close is requested; closed when the writer is done

	netConn  net.Conn
	maxBytes int
	policy   string
	metrics  *telemetry.Metrics
}

// enqueueResult tells the caller what happened to a frame.
type enqueueResult int

const (
	enqueued enqueueResult = iota
	droppedFrame
	slowConsumer // queue overflowed under policy disconnect: the connection is being closed
	alreadyClosed
)

// enqueue appends a frame, applying the backpressure policy when it does not fit. Only message
// frames are ever dropped: replies, welcome and pings are the protocol's own and may use up to
// twice the bound before the connection counts as a slow consumer whatever the policy.
func (o *outbound) enqueue(f outFrame) enqueueResult {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return alreadyClosed
	}
	if o.bytes+len(f.buf) > o.maxBytes {
		isMessage := f.ingress != 0
		switch {
		case !isMessage && o.bytes+len(f.buf) <= 2*o.maxBytes:
			// fits in the reply allowance
		case isMessage && o.policy == config.PolicyDropNewest:
			o.mu.Unlock()
			o.metrics.MessagesDropped.WithLabelValues(telemetry.DropQueueFull).Inc()
			return droppedFrame
		case isMessage && o.policy == config.PolicyDropOldest:
			evicted := o.evictMessagesLocked(o.bytes + len(f.buf) - o.maxBytes)
			if o.bytes+len(f.buf) > o.maxBytes {
				evicted++ // only replies left, or the frame alone exceeds the bound
				o.mu.Unlock()
				o.metrics.MessagesDropped.WithLabelValues(telemetry.DropQueueFull).Add(float64(evicted))
				return droppedFrame
			}
			o.metrics.MessagesDropped.WithLabelValues(telemetry.DropQueueFull).Add(float64(evicted))
		default: // policy disconnect, or replies beyond their allowance
			dropped := len(o.frames) + 1
			o.abortLocked(wsFrame(wsOpClose, closePayload(CloseSlowConsumer, closeReasons[CloseSlowConsumer])))
			o.mu.Unlock()
			o.metrics.MessagesDropped.WithLabelValues(telemetry.DropSlowConsumer).Add(float64(dropped))
			return slowConsumer
		}
	}
	o.frames = append(o.frames, f)
	o.bytes += len(f.buf)
	start := !o.writing
	o.writing = true
	o.mu.Unlock()
	if start {
		go o.writeLoop()
	}
	return enqueued
}

// evictMessagesLocked removes the oldest message frames until need bytes are freed, keeping
// every other frame in order. It returns how many frames it removed.
func (o *outbound) evictMessagesLocked(need int) int {
	evicted, kept := 0, 0
	for _, q := range o.frames {
		if need > 0 && q.ingress != 0 {
			need -= len(q.buf)
			o.bytes -= len(q.buf)
			evicted++
			continue
		}
		o.frames[kept] = q
		kept++
	}
	clear(o.frames[kept:])
	o.frames = o.frames[:kept]
	return evicted
}

// closeAfterFlush queues a close frame behind everything already queued and refuses new frames:
// graceful close (drain, client-initiated close, rate-limit close).
func (o *outbound) closeAfterFlush(code CloseCode, reason string) {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return
	}
	o.closed = true
	o.closing = wsFrame(wsOpClose, closePayload(code, reason))
	o.flushed = make(chan struct{})
	start := !o.writing
	o.writing = true
	o.mu.Unlock()
	if start {
		go o.writeLoop()
	}
}

// abort discards the queue and closes with code as soon as possible.
func (o *outbound) abort(code CloseCode) {
	o.mu.Lock()
	if !o.closed {
		o.abortLocked(wsFrame(wsOpClose, closePayload(code, closeReasons[code])))
	}
	o.mu.Unlock()
}

func (o *outbound) abortLocked(closeFrame []byte) {
	o.closed = true
	clear(o.frames)
	o.frames = nil
	o.bytes = 0
	o.closing = closeFrame
	o.flushed = make(chan struct{})
	if o.writing {
		// The writer may be blocked on a socket that accepts nothing: cut its wait short.
		_ = o.netConn.SetWriteDeadline(time.Now().Add(closeWriteWindow))
		return
	}
	o.writing = true
	go o.writeLoop()
}

// markClosed refuses new frames and drops queued ones (the socket is already gone). It returns
// how many frames were dropped.
func (o *outbound) markClosed() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := len(o.frames)
	o.closed = true
	clear(o.frames)
	o.frames = nil
	o.bytes = 0
	o.closing = nil
	return n
}

// queued reports the frames and bytes waiting.
func (o *outbound) queued() (frames, bytes int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.frames), o.bytes
}

// writeLoop drains the queue in batches: many frames are copied into one buffer and written
// with one system call. It exits when the queue is empty.
func (o *outbound) writeLoop() {
	bufPtr := writeBufPool.Get().(*[]byte)
	defer writeBufPool.Put(bufPtr)
	var batch []outFrame
	for {
		o.mu.Lock()
		if len(o.frames) == 0 {
			closing := o.closing
			o.closing = nil
			if closing == nil {
				// Same critical section as the emptiness check: an enqueue after this
				// point sees writing == false and starts a new writer.
				o.writing = false
				if o.flushed != nil {
					close(o.flushed)
					o.flushed = nil
				}
				o.mu.Unlock()
				return
			}
			o.mu.Unlock()
			o.finish(closing)
			return
		}
		batch, o.frames = o.frames, batch[:0]
		o.bytes = 0
		o.mu.Unlock()

		if err := o.writeBatch(bufPtr, batch); err != nil {
			dropped := o.markClosed()
			o.metrics.MessagesDropped.WithLabelValues(telemetry.DropClosed).Add(float64(dropped))
			_ = o.netConn.Close()
			o.stopWriting()
			return
		}
		clear(batch)
	}
}

func (o *outbound) writeBatch(bufPtr *[]byte, batch []outFrame) error {
	now := time.Now()
	nowNanos := now.UnixNano()
	buf := (*bufPtr)[:0]
	var messages, sent int
	write := func(p []byte) error {
		// The deadline is per write: a client that reads slowly but steadily is not cut off
		// in the middle of a long batch; one that accepts nothing for writeTimeout is.
		_ = o.netConn.SetWriteDeadline(time.Now().Add(writeTimeout))
		_, err := o.netConn.Write(p)
		return err
	}
	flush := func() error {
		if len(buf) == 0 {
			return nil
		}
		err := write(buf)
		sent += len(buf)
		buf = buf[:0]
		return err
	}
	for _, f := range batch {
		if f.ingress != 0 {
			messages++
			o.metrics.MessageLatency.Observe(float64(nowNanos-f.ingress) / 1e9)
		}
		if len(buf)+len(f.buf) > cap(buf) {
			if err := flush(); err != nil {
				return err
			}
			if len(f.buf) > cap(buf) {
				if err := write(f.buf); err != nil {
					return err
				}
				sent += len(f.buf)
				continue
			}
		}
		buf = append(buf, f.buf...)
	}
	err := flush()
	*bufPtr = buf[:0]
	if messages > 0 {
		o.metrics.MessagesSent.Add(float64(messages))
	}
	o.metrics.BytesSent.Add(float64(sent))
	return err
}

// finish writes the close frame, then gives the client a moment to answer before the reader's
// deadline shuts the socket.
func (o *outbound) finish(closing []byte) {
	_ = o.netConn.SetWriteDeadline(time.Now().Add(closeWriteWindow))
	if _, err := o.netConn.Write(closing); err != nil {
		_ = o.netConn.Close()
	} else {
		_ = o.netConn.SetReadDeadline(time.Now().Add(closeReplyWait))
	}
	o.stopWriting()
}

// stopWriting marks the writer gone and signals a pending close as done.
func (o *outbound) stopWriting() {
	o.mu.Lock()
	o.writing = false
	if o.flushed != nil {
		close(o.flushed)
		o.flushed = nil
	}
	o.mu.Unlock()
}

// closeDone returns a channel closed once a requested close frame has been written (or given
// up on), or nil when no close is in progress.
func (o *outbound) closeDone() <-chan struct{} {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.flushed == nil || !o.writing {
		return nil
	}
	return o.flushed
}
