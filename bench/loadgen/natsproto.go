package loadgen

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// ErrNATSProtocol is returned for a server line the parser cannot understand.
var ErrNATSProtocol = errors.New("loadgen: nats protocol error")

// NATS server operations the parser reports.
const (
	NATSInfo = iota + 1
	NATSMsg
	NATSPing
	NATSPong
	NATSOK
	NATSErr
)

// NATSOp is one server operation. Slices point into the parser's buffer and are valid only
// during the callback.
type NATSOp struct {
	Kind    int
	Subject []byte
	SID     []byte
	Reply   []byte
	Payload []byte // MSG/HMSG payload (headers stripped), INFO JSON, or -ERR text
}

// Limits that keep a corrupt stream from growing the buffer without bound.
const (
	natsMaxLine    = 64 << 10
	natsMaxPayload = 64 << 20
)

// NATSParser parses the NATS server-to-client text protocol from a byte stream that arrives
// in arbitrary pieces (over WebSocket, one frame may hold several operations or part of one).
// It is used by one goroutine.
type NATSParser struct {
	buf []byte
}

// Feed appends b and calls fn for every complete operation. An error from fn stops parsing
// and is returned.
func (p *NATSParser) Feed(b []byte, fn func(op *NATSOp) error) error {
	p.buf = append(p.buf, b...)
	data := p.buf
	var op NATSOp
	for len(data) > 0 {
		eol := bytes.Index(data, []byte("\r\n"))
		if eol < 0 {
			if len(data) > natsMaxLine {
				return fmt.Errorf("%w: control line longer than %d bytes", ErrNATSProtocol, natsMaxLine)
			}
			break
		}
		line := data[:eol]
		rest := data[eol+2:]
		op = NATSOp{}
		consumed, need, err := parseNATSLine(line, rest, &op)
		if err != nil {
			return err
		}
		if need { // MSG whose payload has not fully arrived yet
			break
		}
		data = rest[consumed:]
		if err := fn(&op); err != nil {
			p.compact(data)
			return err
		}
	}
	p.compact(data)
	return nil
}

func (p *NATSParser) compact(rest []byte) {
	n := copy(p.buf, rest)
	p.buf = p.buf[:n]
}

// parseNATSLine parses one control line. For MSG/HMSG it takes the payload from rest and
// returns how many bytes of rest it consumed, or need=true when rest is still too short.
func parseNATSLine(line, rest []byte, op *NATSOp) (consumed int, need bool, err error) {
	verb, args := line, []byte(nil)
	if i := bytes.IndexAny(line, " \t"); i >= 0 {
		verb, args = line[:i], bytes.TrimLeft(line[i+1:], " \t")
	}
	switch {
	case asciiEqualFold(verb, "MSG"), asciiEqualFold(verb, "HMSG"):
		headers := len(verb) == 4
		f := bytes.Fields(args)
		var hdrLen, total uint64
		var ok bool
		switch {
		case !headers && (len(f) == 3 || len(f) == 4):
			total, _, ok = parseUintAll(f[len(f)-1])
		case headers && (len(f) == 4 || len(f) == 5):
			hdrLen, _, ok = parseUintAll(f[len(f)-2])
			if ok {
				total, _, ok = parseUintAll(f[len(f)-1])
			}
			ok = ok && hdrLen <= total
		}
		if !ok || total > natsMaxPayload {
			return 0, false, fmt.Errorf("%w: bad %s line %.80q", ErrNATSProtocol, verb, line)
		}
		op.Kind, op.Subject, op.SID = NATSMsg, f[0], f[1]
		if (headers && len(f) == 5) || (!headers && len(f) == 4) {
			op.Reply = f[2]
		}
		if uint64(len(rest)) < total+2 {
			return 0, true, nil
		}
		if rest[total] != '\r' || rest[total+1] != '\n' {
			return 0, false, fmt.Errorf("%w: payload not followed by CRLF", ErrNATSProtocol)
		}
		op.Payload = rest[hdrLen:total]
		return int(total) + 2, false, nil
	case asciiEqualFold(verb, "PING"):
		op.Kind = NATSPing
	case asciiEqualFold(verb, "PONG"):
		op.Kind = NATSPong
	case asciiEqualFold(verb, "+OK"):
		op.Kind = NATSOK
	case asciiEqualFold(verb, "-ERR"):
		op.Kind, op.Payload = NATSErr, bytes.Trim(args, " '")
	case asciiEqualFold(verb, "INFO"):
		op.Kind, op.Payload = NATSInfo, args
	default:
		return 0, false, fmt.Errorf("%w: unknown operation %.40q", ErrNATSProtocol, verb)
	}
	return 0, false, nil
}

func parseUintAll(b []byte) (uint64, []byte, bool) {
	v, rest, ok := parseUint(b)
	return v, rest, ok && len(rest) == 0
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// AppendNATSPub appends `PUB subject n\r\npayload\r\n`.
func AppendNATSPub(dst []byte, subject string, payload []byte) []byte {
	dst = append(dst, "PUB "...)
	dst = append(dst, subject...)
	dst = append(dst, ' ')
	dst = strconv.AppendInt(dst, int64(len(payload)), 10)
	dst = append(dst, "\r\n"...)
	dst = append(dst, payload...)
	return append(dst, "\r\n"...)
}

// natsConnectLine is what the bench client sends after INFO: no echo of its own messages, no
// verbose +OK per operation (as nats.go does).
const natsConnectLine = `CONNECT {"verbose":false,"pedantic":false,"lang":"go","version":"revenprox-bench","protocol":1,"echo":false,"headers":false}` + "\r\n"
