package proxy

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"strconv"
)

// ErrBadFrame is wrapped by every client-frame decoding error.
var ErrBadFrame = errors.New("proxy: bad frame")

// Client operations.
const (
	opSubscribe   = "subscribe"
	opUnsubscribe = "unsubscribe"
	opPublish     = "publish"
	opPing        = "ping"
)

// clientFrame is one decoded client → server frame. Data and ID stay raw: data is passed through
// byte for byte, and the id is echoed exactly as the client wrote it.
type clientFrame struct {
	Op          string          `json:"op"`
	Topic       string          `json:"topic"`
	Data        json.RawMessage `json:"data"`
	ID          json.RawMessage `json:"id"`
	Traceparent string          `json:"traceparent"`
}

// decodeClientFrame parses one text frame. The returned frame's ID is valid (absent, a number or
// a string) whenever the error is nil, and also when only the op is bad, so replies can echo it.
func decodeClientFrame(msg []byte) (clientFrame, error) {
	var f clientFrame
	if err := json.Unmarshal(msg, &f); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			return clientFrame{}, errors.Join(ErrBadFrame, errors.New("field "+strconv.Quote(typeErr.Field)+" has the wrong type"))
		}
		return clientFrame{}, errors.Join(ErrBadFrame, errors.New("malformed JSON: a frame is one JSON object"))
	}
	if len(f.ID) > 0 {
		switch f.ID[0] {
		case '"', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		case 'n': // null: same as absent
			f.ID = nil
		default:
			f.ID = nil
			return f, errors.Join(ErrBadFrame, errors.New("id must be a number or a string"))
		}
		if len(f.ID) > 128 {
			f.ID = nil
			return f, errors.Join(ErrBadFrame, errors.New("id longer than 128 bytes"))
		}
	}
	return f, nil
}

// WebSocket framing (RFC 6455 §5.2). Server frames are never masked, so the node writes whole
// frames itself: a frame is encoded once and its bytes shared by every recipient's queue.
const (
	wsOpText  = 0x1
	wsOpClose = 0x8
	wsOpPing  = 0x9
	wsOpPong  = 0xA
	wsFin     = 0x80
)

// frameHeaderLen is the length of a server frame header for a payload of n bytes.
func frameHeaderLen(n int) int {
	switch {
	case n < 126:
		return 2
	case n < 1<<16:
		return 4
	default:
		return 10
	}
}

// putFrameHeader writes the header of an unmasked final frame into b, which has exactly
// frameHeaderLen(n) bytes.
func putFrameHeader(b []byte, opcode byte, n int) {
	b[0] = wsFin | opcode
	switch len(b) {
	case 2:
		b[1] = byte(n)
	case 4:
		b[1] = 126
		binary.BigEndian.PutUint16(b[2:], uint16(n))
	default:
		b[1] = 127
		binary.BigEndian.PutUint64(b[2:], uint64(n))
	}
}

// wsFrame wraps a payload into a complete frame.
func wsFrame(opcode byte, payload []byte) []byte {
	h := frameHeaderLen(len(payload))
	b := make([]byte, h+len(payload))
	putFrameHeader(b[:h], opcode, len(payload))
	copy(b[h:], payload)
	return b
}

// closePayload is a close frame's body: the code and a short reason.
func closePayload(code CloseCode, reason string) []byte {
	if len(reason) > 123 {
		reason = reason[:123]
	}
	b := make([]byte, 2+len(reason))
	binary.BigEndian.PutUint16(b, uint16(code))
	copy(b[2:], reason)
	return b
}

// Message frame pieces: {"op":"message","topic":T,"sub":P,"data":D,"ts":N}. Topics and
// patterns are validated to [A-Za-z0-9_.*>-], so they need no JSON escaping.
const (
	msgPart1 = `{"op":"message","topic":"`
	msgPart2 = `","sub":"`
	msgPart3 = `","data":`
	msgPart4 = `,"ts":`
)

// encodeMessageFrame builds the complete WebSocket frame of one `message`, in one allocation.
// data must be valid JSON.
func encodeMessageFrame(topic, pattern string, data []byte, tsMillis int64) []byte {
	var tsBuf [20]byte
	ts := strconv.AppendInt(tsBuf[:0], tsMillis, 10)
	n := len(msgPart1) + len(topic) + len(msgPart2) + len(pattern) + len(msgPart3) + len(data) + len(msgPart4) + len(ts) + 1
	h := frameHeaderLen(n)
	b := make([]byte, h, h+n)
	putFrameHeader(b, wsOpText, n)
	b = append(b, msgPart1...)
	b = append(b, topic...)
	b = append(b, msgPart2...)
	b = append(b, pattern...)
	b = append(b, msgPart3...)
	b = append(b, data...)
	b = append(b, msgPart4...)
	b = append(b, ts...)
	b = append(b, '}')
	return b
}

// encodeReply builds an ack or pong frame echoing the request id.
func encodeReply(op string, id json.RawMessage) []byte {
	p := make([]byte, 0, 24+len(id))
	p = append(p, `{"op":"`...)
	p = append(p, op...)
	p = append(p, '"')
	if len(id) > 0 {
		p = append(p, `,"id":`...)
		p = append(p, id...)
	}
	p = append(p, '}')
	return wsFrame(wsOpText, p)
}

// encodeError builds an error frame.
func encodeError(id json.RawMessage, code, message string) []byte {
	p := make([]byte, 0, 64+len(id)+len(message))
	p = append(p, `{"op":"error"`...)
	if len(id) > 0 {
		p = append(p, `,"id":`...)
		p = append(p, id...)
	}
	p = append(p, `,"code":"`...)
	p = append(p, code...)
	p = append(p, `","message":`...)
	quoted, _ := json.Marshal(message) // a string always marshals
	p = append(p, quoted...)
	p = append(p, '}')
	return wsFrame(wsOpText, p)
}

// welcomeEncoder builds each connection's first frame from parts fixed at start: only the
// connection id (c-<hex>, needing no escaping) changes.
type welcomeEncoder struct{ prefix, suffix []byte }

func newWelcomeEncoder(node string, pingIntervalMs int64) welcomeEncoder {
	quotedNode, _ := json.Marshal(node) // a string always marshals
	suffix := append([]byte(`","node":`), quotedNode...)
	suffix = append(suffix, `,"ping_interval_ms":`...)
	suffix = strconv.AppendInt(suffix, pingIntervalMs, 10)
	suffix = append(suffix, '}')
	return welcomeEncoder{prefix: []byte(`{"op":"welcome","conn_id":"`), suffix: suffix}
}

func (w welcomeEncoder) encode(connID string) []byte {
	n := len(w.prefix) + len(connID) + len(w.suffix)
	h := frameHeaderLen(n)
	b := make([]byte, h, h+n)
	putFrameHeader(b, wsOpText, n)
	b = append(b, w.prefix...)
	b = append(b, connID...)
	return append(b, w.suffix...)
}
