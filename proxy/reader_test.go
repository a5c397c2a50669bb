package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/revenprox/revenprox/config"
)

// clientFrame encodes a frame as a client would, masked with a fixed key. rsv sets reserved bits.
func maskedFrame(op byte, fin bool, payload []byte, masked bool, rsv byte) []byte {
	b0 := op | rsv
	if fin {
		b0 |= 0x80
	}
	var b []byte
	n := len(payload)
	maskBit := byte(0)
	if masked {
		maskBit = 0x80
	}
	switch {
	case n < 126:
		b = []byte{b0, maskBit | byte(n)}
	case n < 1<<16:
		b = []byte{b0, maskBit | 126, 0, 0}
		binary.BigEndian.PutUint16(b[2:], uint16(n))
	default:
		b = []byte{b0, maskBit | 127, 0, 0, 0, 0, 0, 0, 0, 0}
		binary.BigEndian.PutUint64(b[2:], uint64(n))
	}
	key := []byte{0x11, 0x22, 0x33, 0x44}
	if masked {
		b = append(b, key...)
	}
	for i, c := range payload {
		if masked {
			c ^= key[i&3]
		}
		b = append(b, c)
	}
	return b
}

// rawAfterHandshake dials with gorilla (for the handshake and for reading server frames) and
// returns the socket to write hand-made frames to.
func rawAfterHandshake(t *testing.T, n *testNode) (*client, net.Conn) {
	t.Helper()
	c := n.dial(t)
	return c, c.ws.NetConn()
}

func TestFrameReaderProtocol(t *testing.T) {
	n := runNode(t, func(c *config.Config) { c.Limits.MaxFrameBytes = 1024 })
	t.Run("fragmented message with a ping in between", func(t *testing.T) {
		c, raw := rawAfterHandshake(t, n)
		msg := []byte(`{"op":"ping","id":"frag"}`)
		var buf bytes.Buffer
		buf.Write(maskedFrame(wsOpText, false, msg[:5], true, 0))
		buf.Write(maskedFrame(wsOpPing, true, []byte("hb"), true, 0))
		buf.Write(maskedFrame(wsOpContinuation, false, msg[5:12], true, 0))
		buf.Write(maskedFrame(wsOpContinuation, true, msg[12:], true, 0))
		gotPong := make(chan string, 1)
		c.ws.SetPongHandler(func(data string) error { gotPong <- data; return nil })
		if _, err := raw.Write(buf.Bytes()); err != nil {
			t.Fatal(err)
		}
		if f := c.read(); f.Op != "pong" || string(f.ID) != `"frag"` {
			t.Fatalf("reassembled message answered with %+v", f)
		}
		select {
		case d := <-gotPong:
			if d != "hb" {
				t.Errorf("pong payload %q, want the ping's", d)
			}
		case <-time.After(5 * time.Second):
			t.Error("no pong for the WebSocket ping")
		}
	})
	for _, tc := range []struct {
		name  string
		frame []byte
		code  int
	}{
		{"unmasked", maskedFrame(wsOpText, true, []byte(`{"op":"ping"}`), false, 0), int(CloseProtocolError)},
		{"reserved bits", maskedFrame(wsOpText, true, []byte(`{}`), true, 0x40), int(CloseProtocolError)},
		{"unknown opcode", maskedFrame(0x3, true, []byte(`x`), true, 0), int(CloseProtocolError)},
		{"continuation first", maskedFrame(wsOpContinuation, true, []byte(`x`), true, 0), int(CloseProtocolError)},
		{"fragmented control", maskedFrame(wsOpPing, false, []byte(`x`), true, 0), int(CloseProtocolError)},
		{"frame over the limit", maskedFrame(wsOpText, true, make([]byte, 2000), true, 0), int(CloseTooLarge)},
		{"fragments over the limit", append(maskedFrame(wsOpText, false, make([]byte, 800), true, 0), maskedFrame(wsOpContinuation, true, make([]byte, 800), true, 0)...), int(CloseTooLarge)},
		{"close 1000 is answered", maskedFrame(wsOpClose, true, []byte{0x03, 0xe8}, true, 0), int(CloseNormal)},
		{"close 1001 is answered with 1001", maskedFrame(wsOpClose, true, []byte{0x03, 0xe9, 'b', 'y'}, true, 0), int(CloseGoingAway)},
		{"close without code", maskedFrame(wsOpClose, true, nil, true, 0), int(CloseNormal)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, raw := rawAfterHandshake(t, n)
			c.ws.SetCloseHandler(func(int, string) error { return nil }) // read the server's code as it is
			if _, err := raw.Write(tc.frame); err != nil {
				t.Fatal(err)
			}
			if code := c.closeCode(5 * time.Second); code != tc.code {
				t.Fatalf("close code %d, want %d", code, tc.code)
			}
		})
	}
	eventually(t, 5*time.Second, "every connection released", func() bool { return n.active.Load() == 0 })
}

// byteConn is a net.Conn reading from a fixed byte slice (for fuzzing the reader).
type byteConn struct {
	net.Conn
	r *bytes.Reader
}

func (b byteConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// FuzzFrameReader: any byte stream is read without panicking, never yields a data message
// larger than the limit, and ends in EOF or one of the reader's sentinel errors.
func FuzzFrameReader(f *testing.F) {
	f.Add(maskedFrame(wsOpText, true, []byte(`{"op":"ping"}`), true, 0))
	f.Add(append(maskedFrame(wsOpText, false, []byte(`{"op"`), true, 0), maskedFrame(wsOpContinuation, true, []byte(`:"ping"}`), true, 0)...))
	f.Add(maskedFrame(wsOpPing, true, []byte("x"), true, 0))
	f.Add(maskedFrame(wsOpClose, true, []byte{3, 232}, true, 0))
	f.Add(maskedFrame(wsOpText, true, make([]byte, 300), true, 0))
	f.Add([]byte{0x81, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	const limit = 256
	f.Fuzz(func(t *testing.T, stream []byte) {
		r := frameReader{netConn: byteConn{r: bytes.NewReader(stream)}, limit: limit}
		defer r.release()
		for range 1000 {
			op, payload, err := r.next()
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, errProtocol) &&
					!errors.Is(err, errFrameTooBig) && !errors.Is(err, errPeerClosed) {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if (op == wsOpText || op == wsOpBinary) && len(payload) > limit {
				t.Fatalf("message of %d bytes passed a %d-byte limit", len(payload), limit)
			}
			if (op == wsOpPing || op == wsOpPong) && len(payload) > 125 {
				t.Fatalf("control payload of %d bytes", len(payload))
			}
		}
	})
}
