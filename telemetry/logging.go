package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// ErrBadLogConfig is returned by NewLogger for an unknown level or format.
var ErrBadLogConfig = errors.New("telemetry: bad log configuration")

// ParseLevel maps a configured level name (debug, info, warn, error; "warning" is accepted
// for warn, case does not matter) to its slog.Level.
func ParseLevel(level string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(level)) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("%w: log.level %q (want debug, info, warn or error)", ErrBadLogConfig, level)
}

// NewLogger builds the process logger of design §9.
//
// Text (one line per record, UTC, second precision):
//
//	[2024-01-15T10:30:45Z INFO] listening addr=:8080 peer.id=proxy-2 reason="read timeout"
//
// JSON (one object per line, millisecond precision, node on every line):
//
//	{"timestamp":"2024-01-15T10:30:45.123Z","level":"INFO","message":"listening","node":"proxy-1","addr":":8080"}
//
// Durations are written as Go duration strings ("1.5s") in both formats, errors as their
// message. The text format leaves the node out: a human reading one node's output knows it,
// and aggregated logs should use JSON.
func NewLogger(w io.Writer, level, format, node string) (*slog.Logger, error) {
	lvl, err := ParseLevel(level)
	if err != nil {
		return nil, err
	}
	switch strings.ToLower(strings.TrimSpace(format)) {
	case "text", "":
		return slog.New(newTextHandler(w, lvl)), nil
	case "json":
		return slog.New(newJSONHandler(w, lvl).WithAttrs([]slog.Attr{slog.String("node", node)})), nil
	}
	return nil, fmt.Errorf("%w: log.format %q (want text or json)", ErrBadLogConfig, format)
}

// bufPool recycles line buffers; lines above maxPooledBuf are left to the GC so one huge
// record does not pin memory forever.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

const maxPooledBuf = 16 << 10

// textHandler writes `[ts LEVEL] message k=v ...`. Groups become dotted key prefixes.
// Derived handlers (WithAttrs/WithGroup) share the writer's mutex so lines never interleave.
type textHandler struct {
	mu     *sync.Mutex
	w      io.Writer
	level  slog.Leveler
	prefix string // dotted group prefix ("" or "a.b.") for attributes added later
	pre    []byte // attributes already formatted by WithAttrs, each with a leading space
}

func newTextHandler(w io.Writer, level slog.Leveler) *textHandler {
	return &textHandler{mu: new(sync.Mutex), w: w, level: level}
}

func (h *textHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level.Level() }

func (h *textHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	h2 := *h
	h2.pre = append([]byte(nil), h.pre...)
	for _, a := range attrs {
		h2.pre = appendTextAttr(h2.pre, h.prefix, a)
	}
	return &h2
}

func (h *textHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.prefix = h.prefix + name + "."
	return &h2
}

func (h *textHandler) Handle(_ context.Context, r slog.Record) error {
	bp := bufPool.Get().(*[]byte)
	b := (*bp)[:0]
	b = append(b, '[')
	if !r.Time.IsZero() { // slog's rule: a zero time is left out
		b = r.Time.UTC().AppendFormat(b, time.RFC3339)
		b = append(b, ' ')
	}
	b = append(b, r.Level.String()...)
	b = append(b, "] "...)
	b = appendMessage(b, r.Message)
	b = append(b, h.pre...)
	r.Attrs(func(a slog.Attr) bool {
		b = appendTextAttr(b, h.prefix, a)
		return true
	})
	b = append(b, '\n')

	h.mu.Lock()
	_, err := h.w.Write(b)
	h.mu.Unlock()

	if cap(b) <= maxPooledBuf {
		*bp = b
		bufPool.Put(bp)
	}
	return err
}

// appendTextAttr appends " key=value", flattening groups into dotted keys.
func appendTextAttr(b []byte, prefix string, a slog.Attr) []byte {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return b
	}
	if a.Value.Kind() == slog.KindGroup {
		attrs := a.Value.Group()
		if len(attrs) == 0 {
			return b
		}
		p := prefix
		if a.Key != "" {
			p = prefix + a.Key + "."
		}
		for _, ga := range attrs {
			b = appendTextAttr(b, p, ga)
		}
		return b
	}
	b = append(b, ' ')
	b = appendKey(b, prefix+a.Key)
	b = append(b, '=')
	return appendValue(b, a.Value)
}

// appendKey writes a key with the characters that would break the k=v grammar replaced.
func appendKey(b []byte, key string) []byte {
	if key == "" {
		return append(b, '_')
	}
	for _, r := range key {
		if r == '=' || r == '"' || !unicode.IsPrint(r) || unicode.IsSpace(r) || r == utf8.RuneError {
			r = '_'
		}
		b = utf8.AppendRune(b, r)
	}
	return b
}

func appendValue(b []byte, v slog.Value) []byte {
	switch v.Kind() {
	case slog.KindString:
		return appendMaybeQuoted(b, v.String())
	case slog.KindInt64:
		return strconv.AppendInt(b, v.Int64(), 10)
	case slog.KindUint64:
		return strconv.AppendUint(b, v.Uint64(), 10)
	case slog.KindFloat64:
		return strconv.AppendFloat(b, v.Float64(), 'g', -1, 64)
	case slog.KindBool:
		return strconv.AppendBool(b, v.Bool())
	case slog.KindDuration:
		return append(b, v.Duration().String()...)
	case slog.KindTime:
		return v.Time().UTC().AppendFormat(b, time.RFC3339Nano)
	}
	switch x := v.Any().(type) {
	case error:
		return appendMaybeQuoted(b, x.Error())
	case fmt.Stringer:
		return appendMaybeQuoted(b, x.String())
	default:
		return appendMaybeQuoted(b, fmt.Sprint(x))
	}
}

// appendMessage writes the message bare when that keeps the line unambiguous (no '=', no
// quote, no control character, no leading or trailing space), else Go-quoted.
func appendMessage(b []byte, msg string) []byte {
	if msg == "" || strings.ContainsRune(msg, '=') || msg[0] == ' ' || msg[len(msg)-1] == ' ' || hasUnsafe(msg, true) {
		return strconv.AppendQuote(b, msg)
	}
	return append(b, msg...)
}

func appendMaybeQuoted(b []byte, s string) []byte {
	if s == "" || strings.ContainsRune(s, '=') || hasUnsafe(s, false) {
		return strconv.AppendQuote(b, s)
	}
	return append(b, s...)
}

// hasUnsafe reports a double quote, an unprintable rune, invalid UTF-8, or (unless spaceOK)
// any white space: characters that must be quoted to keep one record on one parseable line.
func hasUnsafe(s string, spaceOK bool) bool {
	for _, r := range s {
		switch {
		case r == '"', r == utf8.RuneError:
			return true
		case r == ' ':
			if !spaceOK {
				return true
			}
		case unicode.IsSpace(r), !unicode.IsPrint(r):
			return true
		}
	}
	return false
}

// jsonReserved are the keys of the JSON envelope; a user attribute with one of these names at
// top level is renamed (suffix "_attr") so every line has exactly one of each.
var jsonReserved = map[string]bool{
	slog.TimeKey: true, slog.LevelKey: true, slog.MessageKey: true, slog.SourceKey: true,
	"timestamp": true, "message": true, "node": true,
}

// jsonHandler is slog's JSONHandler with design §9's envelope: "timestamp" (UTC, ms),
// "level", "message"; durations as strings. It renames colliding top-level user keys.
type jsonHandler struct {
	inner   slog.Handler
	grouped bool // a group is open: attributes can no longer collide with the envelope
	nodeSet bool // "node" was already added (by NewLogger); later ones are renamed
}

func newJSONHandler(w io.Writer, level slog.Leveler) *jsonHandler {
	inner := slog.NewJSONHandler(w, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 {
				switch a.Key {
				case slog.TimeKey:
					if a.Value.Kind() == slog.KindTime {
						return slog.String("timestamp", a.Value.Time().UTC().Format("2006-01-02T15:04:05.000Z07:00"))
					}
				case slog.MessageKey:
					return slog.Attr{Key: "message", Value: a.Value}
				}
			}
			if a.Value.Kind() == slog.KindDuration {
				return slog.String(a.Key, a.Value.Duration().String())
			}
			return a
		},
	})
	return &jsonHandler{inner: inner}
}

func (h *jsonHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.inner.Enabled(ctx, l) }

func (h *jsonHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &jsonHandler{inner: h.inner.WithGroup(name), grouped: true, nodeSet: h.nodeSet}
}

// WithAttrs is also how NewLogger adds "node", so the first "node" passes unrenamed.
func (h *jsonHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	if !h.grouped {
		attrs = renameReserved(attrs, h.nodeSet)
	}
	return &jsonHandler{inner: h.inner.WithAttrs(attrs), grouped: h.grouped, nodeSet: true}
}

func (h *jsonHandler) Handle(ctx context.Context, r slog.Record) error {
	if h.grouped {
		return h.inner.Handle(ctx, r)
	}
	collide := false
	r.Attrs(func(a slog.Attr) bool {
		if jsonReserved[a.Key] {
			collide = true
			return false
		}
		return true
	})
	if !collide {
		return h.inner.Handle(ctx, r)
	}
	attrs := make([]slog.Attr, 0, r.NumAttrs())
	r.Attrs(func(a slog.Attr) bool { attrs = append(attrs, a); return true })
	r2 := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r2.AddAttrs(renameReserved(attrs, true)...)
	return h.inner.Handle(ctx, r2)
}

// renameReserved renames top-level attributes whose key is part of the envelope. The very
// first "node" (added by NewLogger) is kept when nodeTaken is false.
func renameReserved(attrs []slog.Attr, nodeTaken bool) []slog.Attr {
	out := attrs
	copied := false
	for i, a := range attrs {
		if !jsonReserved[a.Key] {
			continue
		}
		if a.Key == "node" && !nodeTaken {
			nodeTaken = true
			continue
		}
		if !copied {
			out = append([]slog.Attr(nil), attrs...)
			copied = true
		}
		out[i].Key = a.Key + "_attr"
	}
	return out
}
