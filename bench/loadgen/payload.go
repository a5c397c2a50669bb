package loadgen

import (
	"bytes"
	"errors"
	"strconv"
)

// ErrBadPayload is returned when a delivery does not carry a bench stamp.
var ErrBadPayload = errors.New("loadgen: payload without a bench stamp")

// Stamp is what every published payload carries: who sent it, to which topic index, its
// sequence number within (publisher, topic), and the wall-clock send time in Unix nanoseconds
// (wall clock because sender and receiver may be different processes on the same machine).
type Stamp struct {
	Publisher uint32
	Topic     uint32
	Seq       uint64
	SentNanos int64
}

var stampPrefix = []byte(`{"p":`)

// AppendPayload appends a JSON object carrying s, padded with a string field so that the object
// is size bytes long when size is larger than the bare stamp. The object is a valid JSON value,
// so it can be the `data` of a protocol v1 publish and the body of a NATS PUB alike.
func AppendPayload(dst []byte, s Stamp, size int) []byte {
	start := len(dst)
	dst = append(dst, stampPrefix...)
	dst = strconv.AppendUint(dst, uint64(s.Publisher), 10)
	dst = append(dst, `,"q":`...)
	dst = strconv.AppendUint(dst, uint64(s.Topic), 10)
	dst = append(dst, `,"s":`...)
	dst = strconv.AppendUint(dst, s.Seq, 10)
	dst = append(dst, `,"t":`...)
	dst = strconv.AppendInt(dst, s.SentNanos, 10)
	dst = append(dst, `,"x":"`...)
	pad := size - (len(dst) - start) - 2 // closing `"}`
	for i := 0; i < pad; i++ {
		dst = append(dst, 'x')
	}
	return append(dst, `"}`...)
}

// ParsePayload finds the stamp in b. b may be the payload itself or a whole protocol v1
// message frame that embeds it as `data` (data is passed through byte for byte, and topic and
// pattern names cannot contain '{', so the first `{"p":` is ours).
func ParsePayload(b []byte) (Stamp, error) {
	i := bytes.Index(b, stampPrefix)
	if i < 0 {
		return Stamp{}, ErrBadPayload
	}
	b = b[i+len(stampPrefix):]
	var s Stamp
	var v uint64
	var ok bool
	if v, b, ok = parseUint(b); !ok || v > 1<<32-1 {
		return Stamp{}, ErrBadPayload
	}
	s.Publisher = uint32(v)
	if b, ok = expect(b, `,"q":`); !ok {
		return Stamp{}, ErrBadPayload
	}
	if v, b, ok = parseUint(b); !ok || v > 1<<32-1 {
		return Stamp{}, ErrBadPayload
	}
	s.Topic = uint32(v)
	if b, ok = expect(b, `,"s":`); !ok {
		return Stamp{}, ErrBadPayload
	}
	if s.Seq, b, ok = parseUint(b); !ok {
		return Stamp{}, ErrBadPayload
	}
	if b, ok = expect(b, `,"t":`); !ok {
		return Stamp{}, ErrBadPayload
	}
	if v, b, ok = parseUint(b); !ok || v > 1<<63-1 {
		return Stamp{}, ErrBadPayload
	}
	s.SentNanos = int64(v)
	if len(b) == 0 || (b[0] != ',' && b[0] != '}') {
		return Stamp{}, ErrBadPayload
	}
	return s, nil
}

func expect(b []byte, lit string) ([]byte, bool) {
	if len(b) < len(lit) || string(b[:len(lit)]) != lit {
		return b, false
	}
	return b[len(lit):], true
}

// parseUint reads decimal digits; it refuses empty input and overflow.
func parseUint(b []byte) (uint64, []byte, bool) {
	var v uint64
	n := 0
	for n < len(b) && b[n] >= '0' && b[n] <= '9' {
		d := uint64(b[n] - '0')
		if v > (1<<64-1-d)/10 {
			return 0, b, false
		}
		v = v*10 + d
		n++
	}
	if n == 0 {
		return 0, b, false
	}
	return v, b[n:], true
}
