package proxy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
)

// The node reads client frames itself (RFC 6455 §5) instead of through gorilla's Conn, which
// is used for the handshake only. Owning the reader lets an idle connection wait for data with
// no read buffer and a shallow stack: the reader parks on socket readability at the top of its
// loop, holds a pooled buffer only while bytes are arriving, and handles control frames without
// descending into a message reader. Idle connections are most of a node's memory.

// Sentinel errors of the frame reader; each maps to a close code in readFailed.
var (
	errProtocol    = errors.New("proxy: websocket protocol error")  // close 1002
	errFrameTooBig = errors.New("proxy: message larger than limit") // close 1009
	errPeerClosed  = errors.New("proxy: client sent close")         // answered with close
)

// readBufferSize is the pooled buffer a connection holds while frames arrive; larger payloads
// stream through it.
const readBufferSize = 4096

var readBuffers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufferSize) }}

// frameReader reads client frames from one socket. It belongs to the connection's reader
// goroutine.
type frameReader struct {
	netConn net.Conn
	raw     syscall.RawConn // nil when the socket offers none: then reads block in bufio
	br      *bufio.Reader   // held only while buffered bytes remain
	limit   int             // limits.max_frame_bytes: largest message accepted
	partial []byte          // fragments of a message split over several frames
	inMsg   bool            // a fragmented message is in progress
	msgOp   byte            // its opcode
	closeAt CloseCode       // code the client sent with its close frame
}

// frame is one decoded client frame.
type frame struct {
	op      byte
	fin     bool
	payload []byte
}

// waitReadable parks until the socket has data (or an error, EOF or the read deadline),
// without holding a buffer. It returns the deadline or close error of the wait itself.
func (r *frameReader) waitReadable() error {
	if r.br != nil && r.br.Buffered() > 0 {
		return nil
	}
	if r.br != nil {
		r.br.Reset(nil)
		readBuffers.Put(r.br)
		r.br = nil
	}
	if r.raw == nil {
		return nil
	}
	var peek [1]byte
	err := r.raw.Read(func(fd uintptr) bool {
		_, _, perr := syscall.Recvfrom(int(fd), peek[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		// Data, EOF or a socket error: the read that follows reports it.
		return !errors.Is(perr, syscall.EAGAIN)
	})
	return err
}

func (r *frameReader) buffer() *bufio.Reader {
	if r.br == nil {
		r.br = readBuffers.Get().(*bufio.Reader)
		r.br.Reset(r.netConn)
	}
	return r.br
}

// frameBuffered reports whether a whole frame is already in the buffer, so reading it will not
// wait on the network.
func (r *frameReader) frameBuffered() bool {
	if r.br == nil {
		return false
	}
	n := r.br.Buffered()
	if n < 2 {
		return false
	}
	hdr, _ := r.br.Peek(2)
	need := 2 + 4 // header and mask key
	switch plen := int(hdr[1] & 0x7f); plen {
	case 126, 127:
		extra := 2
		if plen == 127 {
			extra = 8
		}
		if n < 2+extra {
			return false
		}
		ext, _ := r.br.Peek(2 + extra)
		var size uint64
		if extra == 2 {
			size = uint64(binary.BigEndian.Uint16(ext[2:]))
		} else {
			size = binary.BigEndian.Uint64(ext[2:])
		}
		if size > uint64(n) {
			return false
		}
		need += extra + int(size)
	default:
		need += plen
	}
	return n >= need
}

// release returns the buffer for good (the connection is ending).
func (r *frameReader) release() {
	if r.br != nil {
		r.br.Reset(nil)
		readBuffers.Put(r.br)
		r.br = nil
	}
}

// next reads one frame and returns either a complete data message (op text or binary with
// its payload), or a control frame (ping, pong) for the caller to answer. A close frame
// returns errPeerClosed.
func (r *frameReader) next() (op byte, payload []byte, err error) {
	f, err := r.readFrame()
	if err != nil {
		return 0, nil, err
	}
	switch f.op {
	case wsOpPing, wsOpPong:
		return f.op, f.payload, nil
	case wsOpClose:
		r.closeAt = closeNoStatus
		if len(f.payload) >= 2 {
			r.closeAt = CloseCode(binary.BigEndian.Uint16(f.payload))
		} else if len(f.payload) == 1 {
			return 0, nil, fmt.Errorf("%w: close payload of 1 byte", errProtocol)
		}
		return 0, nil, errPeerClosed
	case wsOpText, wsOpBinary:
		if r.inMsg {
			return 0, nil, fmt.Errorf("%w: new message inside a fragmented one", errProtocol)
		}
		if f.fin {
			return f.op, f.payload, nil
		}
		r.inMsg, r.msgOp, r.partial = true, f.op, f.payload
		return 0, nil, nil
	case wsOpContinuation:
		if !r.inMsg {
			return 0, nil, fmt.Errorf("%w: continuation without a message", errProtocol)
		}
		if len(r.partial)+len(f.payload) > r.limit {
			return 0, nil, errFrameTooBig
		}
		r.partial = append(r.partial, f.payload...)
		if !f.fin {
			return 0, nil, nil
		}
		msg := r.partial
		r.inMsg, r.partial = false, nil
		return r.msgOp, msg, nil
	}
	return 0, nil, fmt.Errorf("%w: opcode %#x", errProtocol, f.op)
}

// readFrame reads and unmasks one frame.
func (r *frameReader) readFrame() (frame, error) {
	br := r.buffer()
	var hdr [14]byte
	if _, err := io.ReadFull(br, hdr[:2]); err != nil {
		return frame{}, err
	}
	f := frame{fin: hdr[0]&0x80 != 0, op: hdr[0] & 0x0f}
	if hdr[0]&0x70 != 0 {
		return f, fmt.Errorf("%w: reserved bits set (no extension was negotiated)", errProtocol)
	}
	if hdr[1]&0x80 == 0 {
		return f, fmt.Errorf("%w: client frames must be masked", errProtocol)
	}
	n := uint64(hdr[1] & 0x7f)
	extra := 0
	switch n {
	case 126:
		extra = 2
	case 127:
		extra = 8
	}
	if _, err := io.ReadFull(br, hdr[2:2+extra+4]); err != nil {
		return f, err
	}
	switch extra {
	case 2:
		n = uint64(binary.BigEndian.Uint16(hdr[2:]))
	case 8:
		n = binary.BigEndian.Uint64(hdr[2:])
	}
	mask := hdr[2+extra : 2+extra+4]
	if f.op >= 0x8 {
		if !f.fin || n > 125 {
			return f, fmt.Errorf("%w: control frames are final and at most 125 bytes", errProtocol)
		}
	} else if n > uint64(r.limit) {
		return f, errFrameTooBig
	}
	f.payload = make([]byte, n)
	if _, err := io.ReadFull(br, f.payload); err != nil {
		return f, err
	}
	for i := range f.payload {
		f.payload[i] ^= mask[i&3]
	}
	return f, nil
}

// Opcodes not used by the writer.
const (
	wsOpContinuation = 0x0
	wsOpBinary       = 0x2
)
