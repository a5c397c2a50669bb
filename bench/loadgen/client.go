package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

// Targets the generator speaks to.
const (
	TargetRevenProx = "revenprox"
	TargetNATS      = "nats"
)

// Errors a connection reports; Reason turns any error into a short label for tables.
var (
	// ErrRefused wraps every refusal that came from the server (HTTP status, close code, -ERR).
	ErrRefused = errors.New("loadgen: refused by server")
	// ErrProtocol is an unexpected frame from the server.
	ErrProtocol = errors.New("loadgen: unexpected frame")
)

// RefusalError is a server-side refusal with its label (http_503, close_4001, nats_err ...).
type RefusalError struct{ Reason string }

func (e *RefusalError) Error() string { return "loadgen: refused by server: " + e.Reason }
func (e *RefusalError) Unwrap() error { return ErrRefused }

// DialConfig is shared by every connection of a run.
type DialConfig struct {
	Target string
	// SourceIPs spreads connections over 127.0.0.2 .. 127.0.0.(1+SourceIPs) when the target is
	// on loopback, so that each source address has its own ephemeral port range. 0: the
	// kernel picks.
	SourceIPs int
	// HandshakeTimeout bounds the dial, the upgrade and the first server frame.
	HandshakeTimeout time.Duration
}

// Conn is one client connection to RevenProx (protocol v1) or to a NATS WebSocket listener.
type Conn struct {
	ws     *websocket.Conn
	target string
	wmu    sync.Mutex // one writer at a time: publisher, PONG replies, close
	rbuf   bytes.Buffer
	parser NATSParser
	nextID int
	wbuf   []byte
}

var writeBufPool = &sync.Pool{}

// sourceAddr returns the local address for connection index i, or nil.
func (d DialConfig) sourceAddr(rawURL string, i int) *net.TCPAddr {
	if d.SourceIPs <= 0 {
		return nil
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil
	}
	ip := net.ParseIP(u.Hostname())
	if u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback() || ip.To4() == nil) {
		return nil
	}
	n := d.SourceIPs
	if n > 250 {
		n = 250
	}
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%n))}
}

// Dial opens connection number index to rawURL and completes the handshake: the welcome frame
// for RevenProx, INFO + CONNECT + PING/PONG for NATS. token, when set, goes in the
// Authorization header.
func Dial(ctx context.Context, d DialConfig, rawURL string, index int, token string) (*Conn, error) {
	timeout := d.HandshakeTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	nd := &net.Dialer{Timeout: timeout}
	if a := d.sourceAddr(rawURL, index); a != nil {
		nd.LocalAddr = a
	}
	wd := websocket.Dialer{
		NetDialContext:   nd.DialContext,
		HandshakeTimeout: timeout,
		ReadBufferSize:   1024,
		WriteBufferSize:  1024,
		WriteBufferPool:  writeBufPool,
	}
	var hdr http.Header
	if d.Target == TargetRevenProx {
		wd.Subprotocols = []string{"revenprox.v1"}
	}
	if token != "" {
		hdr = http.Header{"Authorization": {"Bearer " + token}}
	}
	ws, resp, err := wd.DialContext(ctx, rawURL, hdr)
	if err != nil {
		if resp != nil {
			if resp.Body != nil {
				resp.Body.Close()
			}
			return nil, &RefusalError{Reason: "http_" + strconv.Itoa(resp.StatusCode)}
		}
		return nil, err
	}
	c := &Conn{ws: ws, target: d.Target}
	deadline, _ := ctx.Deadline()
	_ = ws.SetReadDeadline(deadline)
	if d.Target == TargetNATS {
		err = c.natsHandshake()
	} else {
		err = c.readWelcome()
	}
	if err != nil {
		ws.Close()
		return nil, err
	}
	_ = ws.SetReadDeadline(time.Time{})
	return c, nil
}

func (c *Conn) readFrame() ([]byte, error) {
	_, r, err := c.ws.NextReader()
	if err != nil {
		return nil, err
	}
	c.rbuf.Reset()
	if _, err := c.rbuf.ReadFrom(r); err != nil {
		return nil, err
	}
	return c.rbuf.Bytes(), nil
}

type rpFrame struct {
	Op   string          `json:"op"`
	ID   json.RawMessage `json:"id"`
	Code string          `json:"code"`
}

func (c *Conn) readWelcome() error {
	b, err := c.readFrame()
	if err != nil {
		return err
	}
	var f rpFrame
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("%w: %.80q", ErrProtocol, b)
	}
	switch f.Op {
	case "welcome":
		return nil
	case "error":
		return &RefusalError{Reason: "error_" + f.Code}
	}
	return fmt.Errorf("%w: %s before welcome", ErrProtocol, f.Op)
}

func (c *Conn) natsHandshake() error {
	gotInfo, gotPong := false, false
	for !gotPong {
		b, err := c.readFrame()
		if err != nil {
			return err
		}
		err = c.parser.Feed(b, func(op *NATSOp) error {
			switch op.Kind {
			case NATSInfo:
				if !gotInfo {
					gotInfo = true
					return c.write([]byte(natsConnectLine + "PING\r\n"))
				}
			case NATSPong:
				gotPong = true
			case NATSPing:
				return c.write([]byte("PONG\r\n"))
			case NATSErr:
				return &RefusalError{Reason: "nats_err " + string(op.Payload)}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func (c *Conn) write(b []byte) error {
	mt := websocket.TextMessage
	if c.target == TargetNATS {
		mt = websocket.BinaryMessage // as nats.go does
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.ws.WriteMessage(mt, b)
}

// Subscribe subscribes to pattern and waits for the server to confirm it (ack for RevenProx;
// PONG after SUB for NATS, which the server sends only after processing the SUB). Call it
// before ReadLoop.
func (c *Conn) Subscribe(ctx context.Context, pattern string, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	_ = c.ws.SetReadDeadline(time.Now().Add(timeout))
	defer func() { _ = c.ws.SetReadDeadline(time.Time{}) }()
	c.nextID++
	if c.target == TargetNATS {
		if err := c.write([]byte("SUB " + pattern + " " + strconv.Itoa(c.nextID) + "\r\nPING\r\n")); err != nil {
			return err
		}
		return c.natsWaitPong()
	}
	id := strconv.Itoa(c.nextID)
	if err := c.write([]byte(`{"op":"subscribe","topic":` + strconv.Quote(pattern) + `,"id":` + id + `}`)); err != nil {
		return err
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		b, err := c.readFrame()
		if err != nil {
			return err
		}
		var f rpFrame
		if json.Unmarshal(b, &f) != nil || string(f.ID) != id {
			continue // a message or someone else's reply
		}
		switch f.Op {
		case "ack":
			return nil
		case "error":
			return &RefusalError{Reason: "error_" + f.Code}
		}
	}
}

func (c *Conn) natsWaitPong() error {
	for done := false; !done; {
		b, err := c.readFrame()
		if err != nil {
			return err
		}
		err = c.parser.Feed(b, func(op *NATSOp) error {
			switch op.Kind {
			case NATSPong:
				done = true
			case NATSPing:
				return c.write([]byte("PONG\r\n"))
			case NATSErr:
				return &RefusalError{Reason: "nats_err " + string(op.Payload)}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// Publish sends payload (a JSON value) to topic, one frame per publish.
func (c *Conn) Publish(topic string, payload []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b := c.wbuf[:0]
	mt := websocket.TextMessage
	if c.target == TargetNATS {
		b = AppendNATSPub(b, topic, payload)
		mt = websocket.BinaryMessage
	} else {
		b = append(b, `{"op":"publish","topic":`...)
		b = strconv.AppendQuote(b, topic)
		b = append(b, `,"data":`...)
		b = append(b, payload...)
		b = append(b, '}')
	}
	c.wbuf = b
	return c.ws.WriteMessage(mt, b)
}

// Handler receives what a read loop sees. Delivery gets the frame (RevenProx) or the MSG
// payload (NATS); the slice is reused after the call returns.
type Handler struct {
	Delivery    func(b []byte)
	ServerError func(code string)
}

var (
	rpMessageOp = []byte(`"op":"message"`)
	rpErrorOp   = []byte(`"op":"error"`)
)

// ReadLoop reads until the connection fails or is closed and returns the error that ended it
// (a *websocket.CloseError when the server closed it with a code).
func (c *Conn) ReadLoop(h Handler) error {
	for {
		b, err := c.readFrame()
		if err != nil {
			return err
		}
		if c.target == TargetNATS {
			err = c.parser.Feed(b, func(op *NATSOp) error {
				switch op.Kind {
				case NATSMsg:
					if h.Delivery != nil {
						h.Delivery(op.Payload)
					}
				case NATSPing:
					return c.write([]byte("PONG\r\n"))
				case NATSErr:
					if h.ServerError != nil {
						h.ServerError("nats_err " + string(op.Payload))
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
			continue
		}
		switch {
		case bytes.Contains(b, rpMessageOp):
			if h.Delivery != nil {
				h.Delivery(b)
			}
		case bytes.Contains(b, rpErrorOp):
			var f rpFrame
			_ = json.Unmarshal(b, &f)
			if h.ServerError != nil {
				h.ServerError("error_" + f.Code)
			}
		}
	}
}

// Close sends a normal close frame and closes the socket without waiting for the reply.
// Safe to call twice.
func (c *Conn) Close() {
	c.wmu.Lock()
	_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	c.wmu.Unlock()
	_ = c.ws.Close()
}

// Reason labels an error for tables: http_503, close_4001, nats_err ..., refused, timeout,
// no_source_port, client_fd_limit, reset, eof, protocol, other.
func Reason(err error) string {
	var re *RefusalError
	var ce *websocket.CloseError
	var ne net.Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &re):
		return re.Reason
	case errors.As(err, &ce):
		return "close_" + strconv.Itoa(ce.Code)
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.EADDRNOTAVAIL), errors.Is(err, syscall.EADDRINUSE):
		return "no_source_port"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "client_fd_limit"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, ErrProtocol), errors.Is(err, ErrNATSProtocol):
		return "protocol"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	return "other"
}

// ServerRefusal reports whether a Reason label means the server side refused or shed the
// connection (its own limits, auth, or overload) rather than the client failing.
func ServerRefusal(reason string) bool {
	switch reason {
	case "http_503", "http_429", "http_401", "http_403", "close_1008", "close_1013", "close_4001",
		"close_4008", "close_4029", "refused":
		return true
	}
	return len(reason) > 9 && reason[:9] == "nats_err "
}
