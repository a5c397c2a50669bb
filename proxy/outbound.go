package proxy

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
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

// outbound is a connection's byte-bounded queue. Whoever turns the queue from idle to busy
// (enqueue returns needsFlush) becomes its writer and flushes at once with non-blocking
// writes: for a healthy client the publishing goroutine writes straight into the socket and no
// goroutine is started. Only when the socket would block is a writer goroutine started; it
// finishes with blocking writes (bounded by writeTimeout) and exits once the queue is empty.
//
// Lock order: the subscription index lock may be held when enqueue is called; outbound.mu is
// never held while calling into the index or the network.
type outbound struct {
	mu       sync.Mutex
	frames   []outFrame    // unwritten frames, oldest first
	bytes    int           // sum of len(buf) over frames
	writing  bool          // someone is writing: an inline flush or the writer goroutine
	closed   bool          // no more frames accepted
	aborting bool          // closed without flushing (slow consumer, protocol error): only the close frame is written
	closing  []byte        // close frame to write after the queue, then shut the socket
	flushed  chan struct{} // made when a close is requested; closed when the writer is done
	spare    []outFrame    // the previous batch's backing array, reused by the next
	pending  []byte        // bytes a non-blocking flush could not write; the writer goroutine sends them first
	try      tryWriter     // non-blocking socket writes; nil: always use the writer goroutine

	netConn  net.Conn
	maxBytes int
	policy   string
	metrics  *telemetry.Metrics
	writes   atomic.Uint64 // socket writes made (frames per write shows how well writes batch)
}

// enqueueResult tells the caller what happened to a frame.
type enqueueResult int

const (
	enqueued   enqueueResult = iota
	needsFlush               // queued, and the caller became the writer: it must call flush
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
	if o.writing {
		o.mu.Unlock()
		return enqueued
	}
	o.writing = true
	o.mu.Unlock()
	return needsFlush
}

// send enqueues a frame and, when this call made the caller the writer, flushes at once from
// the caller's goroutine (replies from the reader, pings from keepalive).
func (o *outbound) send(f outFrame) enqueueResult {
	r := o.enqueue(f)
	if r == needsFlush {
		o.flush()
	}
	return r
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
	o.aborting = true
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

// tryWriter writes without ever blocking: it returns how much the socket took, and
// errWouldBlock when the socket buffer is full.
type tryWriter interface {
	tryWrite(p []byte) (int, error)
}

var errWouldBlock = errors.New("proxy: socket would block")

// rawTryWriter writes to a TCP socket's descriptor directly, bypassing the runtime's wait for
// writability, so a full socket returns at once instead of parking the publisher.
type rawTryWriter struct{ rc syscall.RawConn }

func newTryWriter(c net.Conn, raw syscall.RawConn) tryWriter {
	if raw != nil {
		return rawTryWriter{raw}
	}
	if t, ok := c.(tryWriter); ok {
		return t
	}
	return nil
}

func (w rawTryWriter) tryWrite(p []byte) (int, error) {
	op := rawWritePool.Get().(*rawWrite)
	op.p = p
	err := w.rc.Write(op.write)
	n, werr := op.n, op.err
	*op = rawWrite{write: op.write}
	rawWritePool.Put(op)
	if n < 0 {
		n = 0
	}
	switch {
	case err != nil:
		return n, err
	case errors.Is(werr, syscall.EAGAIN):
		return n, errWouldBlock
	case errors.Is(werr, syscall.EINTR):
		return n, nil
	}
	return n, werr
}

// rawWrite carries one write's arguments and results through syscall.RawConn.Write. A closure
// over them would escape to the heap on every write (three allocations per delivery); pooled
// operations with a method value bound once allocate nothing (BenchmarkFanoutLoopback).
type rawWrite struct {
	p     []byte
	n     int
	err   error
	write func(fd uintptr) bool // op.do, bound once
}

var rawWritePool = sync.Pool{New: func() any {
	op := &rawWrite{}
	op.write = op.do
	return op
}}

func (op *rawWrite) do(fd uintptr) bool {
	op.n, op.err = syscall.Write(int(fd), op.p)
	return true // never wait: a full socket is the writer goroutine's business
}

// takeBatch moves the queued frames out under the lock, or ends the writer role when there are
// none. done reports that the caller is no longer the writer (closing holds a close frame the
// caller must still write, in blocking mode).
func (o *outbound) takeBatch() (batch []outFrame, closing []byte, done bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.frames) == 0 {
		if o.closing != nil {
			closing, o.closing = o.closing, nil
			return nil, closing, true
		}
		// Same critical section as the emptiness check: an enqueue after this point sees
		// writing == false and becomes the writer itself.
		o.writing = false
		if o.flushed != nil {
			close(o.flushed)
			o.flushed = nil
		}
		return nil, nil, true
	}
	batch, o.frames = o.frames, o.spare[:0]
	o.spare = nil
	o.bytes = 0
	return batch, nil, false
}

// returnBatch keeps a batch's array for reuse, unless it grew large (idle connections should
// not keep big arrays).
func (o *outbound) returnBatch(batch []outFrame) {
	clear(batch)
	if cap(batch) > 64 {
		return
	}
	o.mu.Lock()
	if o.spare == nil {
		o.spare = batch[:0]
	}
	o.mu.Unlock()
}

// flush is called by the goroutine that became the writer (enqueue returned needsFlush). It
// writes without blocking; what the socket does not take is handed to a writer goroutine.
func (o *outbound) flush() {
	if o.try == nil {
		go o.writeLoop()
		return
	}
	bufPtr := writeBufPool.Get().(*[]byte)
	defer writeBufPool.Put(bufPtr)
	for {
		batch, closing, done := o.takeBatch()
		if done {
			if closing != nil {
				go o.finish(closing)
			}
			return
		}
		rest, err := o.writeFrames(bufPtr, batch, func(p []byte) (int, error) { return o.try.tryWrite(p) })
		o.returnBatch(batch)
		switch {
		case errors.Is(err, errWouldBlock):
			o.mu.Lock()
			o.pending = rest
			o.mu.Unlock()
			go o.writeLoop()
			return
		case err != nil:
			o.writeFailed()
			return
		}
	}
}

// writeLoop is the blocking writer goroutine: it sends pending bytes left by a non-blocking
// flush, then drains the queue in batches until it is empty.
func (o *outbound) writeLoop() {
	bufPtr := writeBufPool.Get().(*[]byte)
	defer writeBufPool.Put(bufPtr)
	o.mu.Lock()
	pending := o.pending
	o.pending = nil
	o.mu.Unlock()
	if len(pending) > 0 {
		if _, err := o.blockingWrite(pending); err != nil {
			o.writeFailed()
			return
		}
	}
	for {
		batch, closing, done := o.takeBatch()
		if done {
			if closing != nil {
				o.finish(closing)
			}
			return
		}
		_, err := o.writeFrames(bufPtr, batch, o.blockingWrite)
		o.returnBatch(batch)
		if err != nil {
			o.writeFailed()
			return
		}
	}
}

// blockingWrite writes all of p. The deadline is per write: a client that reads slowly but
// steadily is not cut off in a long batch; one that accepts nothing for writeTimeout is.
func (o *outbound) blockingWrite(p []byte) (int, error) {
	o.mu.Lock()
	timeout := writeTimeout
	if o.aborting {
		timeout = closeWriteWindow // slow consumer or abort: the queue is gone, only the close frame matters
	}
	o.mu.Unlock()
	_ = o.netConn.SetWriteDeadline(time.Now().Add(timeout))
	return o.netConn.Write(p)
}

// writeFailed ends a connection whose socket failed.
func (o *outbound) writeFailed() {
	dropped := o.markClosed()
	o.metrics.MessagesDropped.WithLabelValues(telemetry.DropClosed).Add(float64(dropped))
	_ = o.netConn.Close()
	o.stopWriting()
}

// writeFrames copies frames into buffer-sized chunks and writes each chunk with one call. On
// errWouldBlock it returns every byte not yet written (a copy), to be sent before anything else.
func (o *outbound) writeFrames(bufPtr *[]byte, batch []outFrame, write func([]byte) (int, error)) ([]byte, error) {
	nowNanos := time.Now().UnixNano()
	buf := (*bufPtr)[:0]
	var messages, sent int
	defer func() {
		*bufPtr = buf[:0]
		if messages > 0 {
			o.metrics.MessagesSent.Add(float64(messages))
		}
		o.metrics.BytesSent.Add(float64(sent))
	}()
	// leftover builds the unwritten remainder: the tail of the current chunk and every later frame.
	leftover := func(chunk []byte, from int) []byte {
		rest := append([]byte(nil), chunk...)
		for _, f := range batch[from:] {
			rest = append(rest, f.buf...)
		}
		return rest
	}
	writeChunk := func(chunk []byte, next int) ([]byte, error) {
		o.writes.Add(1)
		n, err := write(chunk)
		sent += n
		if errors.Is(err, errWouldBlock) || (err == nil && n < len(chunk)) {
			return leftover(chunk[n:], next), errWouldBlock
		}
		return nil, err
	}
	for i, f := range batch {
		if f.ingress != 0 {
			messages++
			o.metrics.MessageLatency.Observe(float64(nowNanos-f.ingress) / 1e9)
		}
		if len(buf)+len(f.buf) > cap(buf) && len(buf) > 0 {
			if rest, err := writeChunk(buf, i); err != nil {
				buf = buf[:0]
				return rest, err
			}
			buf = buf[:0]
		}
		if len(f.buf) > cap(buf) {
			if rest, err := writeChunk(f.buf, i+1); err != nil {
				return rest, err
			}
			continue
		}
		buf = append(buf, f.buf...)
	}
	if len(buf) > 0 {
		rest, err := writeChunk(buf, len(batch))
		buf = buf[:0]
		return rest, err
	}
	return nil, nil
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
