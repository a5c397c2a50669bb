package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/slogtest"
	"time"
)

// textLine is the whole-line grammar of the text format:
// `[` [timestamp ` `] LEVEL `] ` message (` ` key `=` value)*
// where message and value are either Go-quoted or bare (no '=', no '"'; values without spaces).
var textLine = regexp.MustCompile(`^\[(?:(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) )?(DEBUG|INFO|WARN|ERROR)\] ` +
	`("(?:[^"\\]|\\.)*"|[^="\\ ](?:[^="]*[^=" ])?)` +
	`((?: [^\s="]+=(?:"(?:[^"\\]|\\.)*"|[^\s="]+))*)$`)

var textAttr = regexp.MustCompile(`([^\s="]+)=("(?:[^"\\]|\\.)*"|[^\s="]+)`)

type parsedText struct {
	time    string
	level   string
	message string
	attrs   map[string]string
	order   []string
}

func unquoteIfQuoted(s string) (string, error) {
	if strings.HasPrefix(s, `"`) {
		return strconv.Unquote(s)
	}
	return s, nil
}

func parseTextLine(line string) (parsedText, error) {
	m := textLine.FindStringSubmatch(line)
	if m == nil {
		return parsedText{}, fmt.Errorf("line does not match the text grammar: %q", line)
	}
	msg, err := unquoteIfQuoted(m[3])
	if err != nil {
		return parsedText{}, fmt.Errorf("message %s: %v", m[3], err)
	}
	p := parsedText{time: m[1], level: m[2], message: msg, attrs: map[string]string{}}
	for _, kv := range textAttr.FindAllStringSubmatch(m[4], -1) {
		v, err := unquoteIfQuoted(kv[2])
		if err != nil {
			return parsedText{}, fmt.Errorf("value %s: %v", kv[2], err)
		}
		if _, dup := p.attrs[kv[1]]; dup {
			return parsedText{}, fmt.Errorf("duplicate key %q in %q", kv[1], line)
		}
		p.attrs[kv[1]] = v
		p.order = append(p.order, kv[1])
	}
	return p, nil
}

func lines(t *testing.T, buf *bytes.Buffer) []string {
	t.Helper()
	s := buf.String()
	if s == "" {
		return nil
	}
	if !strings.HasSuffix(s, "\n") {
		t.Fatalf("output does not end with a newline: %q", s)
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

type stringer struct{}

func (stringer) String() string { return "from Stringer" }

// writeVariety logs one line of every shape the proxy produces.
func writeVariety(log *slog.Logger) {
	log.Debug("debug detail", "n", 1)
	log.Info("HTTP server started on 0.0.0.0:8080")
	log.Info("listening", "addr", ":8080", "tls", false, "ratio", 0.25, "count", uint64(7))
	log.Warn("connection rate limit exceeded", "ip", "10.0.0.1", "suppressed", 12, "reason", `said "no" twice`)
	log.Error("auth webhook failed", "err", errors.New("dial tcp 10.0.0.9:9000: connection refused"), "took", 1500*time.Millisecond)
	log.Info("peer joined", slog.Group("peer", "id", "proxy-2", "version", "1.0.0"), "peers", 2)
	log.With("component", "cluster").WithGroup("nats").Info("route up", "url", "nats-route://proxy2:5555", "at", time.Date(2024, 1, 15, 10, 30, 45, 0, time.UTC))
	log.Info("message with key=value inside and a \"quote\"", "empty", "", "multi", "line1\nline2", "s", stringer{})
	log.Info("unicode ok: café", "tab", "a\tb", "nilerr", error(nil))
	log.Info("group inline", slog.Group("", "inlined", 1), slog.Group("emptygroup"))
}

func TestTextLogEveryLineParses(t *testing.T) {
	var buf bytes.Buffer
	log, err := NewLogger(&buf, "debug", "text", "proxy-1")
	if err != nil {
		t.Fatal(err)
	}
	writeVariety(log)
	got := lines(t, &buf)
	if len(got) != 10 {
		t.Fatalf("want 10 lines, got %d:\n%s", len(got), buf.String())
	}
	parsed := make([]parsedText, len(got))
	for i, l := range got {
		p, err := parseTextLine(l)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := time.Parse(time.RFC3339, p.time); err != nil || !strings.HasSuffix(p.time, "Z") {
			t.Errorf("line %d: timestamp %q is not second-precision UTC RFC3339", i, p.time)
		}
		parsed[i] = p
	}
	check := func(i int, level, msg string, attrs map[string]string) {
		t.Helper()
		p := parsed[i]
		if p.level != level || p.message != msg {
			t.Errorf("line %d: got [%s] %q, want [%s] %q", i, p.level, p.message, level, msg)
		}
		for k, v := range attrs {
			if p.attrs[k] != v {
				t.Errorf("line %d: %s=%q, want %q (line %q)", i, k, p.attrs[k], v, got[i])
			}
		}
		if len(p.attrs) != len(attrs) {
			t.Errorf("line %d: attrs %v, want exactly %v", i, p.attrs, attrs)
		}
	}
	check(0, "DEBUG", "debug detail", map[string]string{"n": "1"})
	check(1, "INFO", "HTTP server started on 0.0.0.0:8080", nil)
	if !strings.HasSuffix(got[1], "INFO] HTTP server started on 0.0.0.0:8080") {
		t.Errorf("design §9 example not reproduced: %q", got[1])
	}
	check(2, "INFO", "listening", map[string]string{"addr": ":8080", "tls": "false", "ratio": "0.25", "count": "7"})
	check(3, "WARN", "connection rate limit exceeded", map[string]string{"ip": "10.0.0.1", "suppressed": "12", "reason": `said "no" twice`})
	check(4, "ERROR", "auth webhook failed", map[string]string{"err": "dial tcp 10.0.0.9:9000: connection refused", "took": "1.5s"})
	check(5, "INFO", "peer joined", map[string]string{"peer.id": "proxy-2", "peer.version": "1.0.0", "peers": "2"})
	check(6, "INFO", "route up", map[string]string{"component": "cluster", "nats.url": "nats-route://proxy2:5555", "nats.at": "2024-01-15T10:30:45Z"})
	check(7, "INFO", `message with key=value inside and a "quote"`, map[string]string{"empty": "", "multi": "line1\nline2", "s": "from Stringer"})
	check(8, "INFO", "unicode ok: café", map[string]string{"tab": "a\tb", "nilerr": "<nil>"})
	check(9, "INFO", "group inline", map[string]string{"inlined": "1"})
	// Values with spaces or quotes are quoted; simple ones are not.
	if !strings.Contains(got[3], `reason="said \"no\" twice"`) || !strings.Contains(got[3], " ip=10.0.0.1") {
		t.Errorf("quoting: %q", got[3])
	}
}

func TestJSONLogEveryLineParses(t *testing.T) {
	var buf bytes.Buffer
	log, err := NewLogger(&buf, "debug", "json", "proxy-1")
	if err != nil {
		t.Fatal(err)
	}
	writeVariety(log)
	log.Info("colliding keys", "message", "user field", "node", "other", "time", 1, "level", "x")
	got := lines(t, &buf)
	if len(got) != 11 {
		t.Fatalf("want 11 lines, got %d:\n%s", len(got), buf.String())
	}
	objs := make([]map[string]any, len(got))
	for i, l := range got {
		var o map[string]any
		dec := json.NewDecoder(strings.NewReader(l))
		dec.UseNumber()
		if err := dec.Decode(&o); err != nil {
			t.Fatalf("line %d is not JSON: %v: %s", i, err, l)
		}
		for _, k := range []string{"timestamp", "level", "message", "node"} {
			if _, ok := o[k].(string); !ok {
				t.Errorf("line %d: %q missing or not a string: %s", i, k, l)
			}
		}
		if o["node"] != "proxy-1" {
			t.Errorf("line %d: node=%v", i, o["node"])
		}
		ts, _ := o["timestamp"].(string)
		if _, err := time.Parse(time.RFC3339Nano, ts); err != nil || !strings.HasSuffix(ts, "Z") || len(ts) != len("2024-01-15T10:30:45.123Z") {
			t.Errorf("line %d: timestamp %q is not millisecond UTC RFC3339", i, ts)
		}
		if !strings.HasPrefix(l, `{"timestamp":`) {
			t.Errorf("line %d: timestamp is not first: %s", i, l)
		}
		objs[i] = o
	}
	levels := []string{"DEBUG", "INFO", "INFO", "WARN", "ERROR", "INFO", "INFO", "INFO", "INFO", "INFO", "INFO"}
	for i, want := range levels {
		if objs[i]["level"] != want {
			t.Errorf("line %d: level %v, want %s", i, objs[i]["level"], want)
		}
	}
	if objs[1]["message"] != "HTTP server started on 0.0.0.0:8080" {
		t.Errorf("message: %v", objs[1]["message"])
	}
	if objs[4]["err"] != "dial tcp 10.0.0.9:9000: connection refused" || objs[4]["took"] != "1.5s" {
		t.Errorf("error/duration: %s", got[4])
	}
	peer, _ := objs[5]["peer"].(map[string]any)
	if peer["id"] != "proxy-2" {
		t.Errorf("group: %s", got[5])
	}
	nats, _ := objs[6]["nats"].(map[string]any)
	if objs[6]["component"] != "cluster" || nats["url"] != "nats-route://proxy2:5555" {
		t.Errorf("WithGroup: %s", got[6])
	}
	c := objs[10]
	if c["message"] != "colliding keys" || c["node"] != "proxy-1" || c["message_attr"] != "user field" ||
		c["node_attr"] != "other" || c["level"] != "INFO" || c["level_attr"] != "x" || c["time_attr"] == nil {
		t.Errorf("reserved keys not protected: %s", got[10])
	}
	if strings.Count(got[10], `"message":`) != 1 || strings.Count(got[10], `"node":`) != 1 {
		t.Errorf("duplicate envelope keys: %s", got[10])
	}
}

func TestLogLevelFiltering(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		for _, tc := range []struct {
			level string
			want  []string
		}{
			{"debug", []string{"DEBUG", "INFO", "WARN", "ERROR"}},
			{"info", []string{"INFO", "WARN", "ERROR"}},
			{"WARN", []string{"WARN", "ERROR"}},
			{"warning", []string{"WARN", "ERROR"}},
			{"error", []string{"ERROR"}},
		} {
			var buf bytes.Buffer
			log, err := NewLogger(&buf, tc.level, format, "n1")
			if err != nil {
				t.Fatal(err)
			}
			log.Debug("d")
			log.Info("i")
			log.Warn("w")
			log.Error("e")
			var levels []string
			for _, l := range lines(t, &buf) {
				if format == "text" {
					p, err := parseTextLine(l)
					if err != nil {
						t.Fatal(err)
					}
					levels = append(levels, p.level)
				} else {
					var o struct{ Level string }
					if err := json.Unmarshal([]byte(l), &o); err != nil {
						t.Fatal(err)
					}
					levels = append(levels, o.Level)
				}
			}
			if strings.Join(levels, ",") != strings.Join(tc.want, ",") {
				t.Errorf("%s at %s: got %v, want %v", format, tc.level, levels, tc.want)
			}
			if log.Enabled(context.Background(), slog.LevelDebug) != (tc.level == "debug") {
				t.Errorf("%s at %s: Enabled(debug) wrong", format, tc.level)
			}
		}
	}
}

func TestNewLoggerRejectsBadValues(t *testing.T) {
	for _, tc := range []struct{ level, format, bad string }{
		{"verbose", "text", "verbose"},
		{"info", "xml", "xml"},
	} {
		_, err := NewLogger(io.Discard, tc.level, tc.format, "n")
		if !errors.Is(err, ErrBadLogConfig) || !strings.Contains(err.Error(), tc.bad) {
			t.Errorf("NewLogger(%q, %q): err %v, want ErrBadLogConfig naming %q", tc.level, tc.format, err, tc.bad)
		}
	}
}

// Concurrent writers never interleave within a line.
func TestTextLogConcurrentLinesIntact(t *testing.T) {
	var buf bytes.Buffer
	log, _ := NewLogger(&syncWriter{w: &buf}, "info", "text", "n")
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := log.With("g", g)
			for i := range 200 {
				l.Info("concurrent line", "i", i, "text", strings.Repeat("x", 100))
			}
		}()
	}
	wg.Wait()
	got := lines(t, &buf)
	if len(got) != 1600 {
		t.Fatalf("lines: %d", len(got))
	}
	for _, l := range got {
		if _, err := parseTextLine(l); err != nil {
			t.Fatal(err)
		}
	}
}

// syncWriter makes the race detector see that the handler serialises writes (bytes.Buffer is
// not safe for concurrent use); it records an error if two writes ever overlap.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	if !s.mu.TryLock() {
		panic("overlapping writes")
	}
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// The handlers follow slog's handler rules (groups, empty attrs, zero time, WithAttrs).
func TestHandlersConformToSlog(t *testing.T) {
	t.Run("text", func(t *testing.T) {
		var buf bytes.Buffer
		slogtest.Run(t, func(*testing.T) slog.Handler {
			buf.Reset()
			return newTextHandler(&buf, slog.LevelInfo)
		}, func(t *testing.T) map[string]any {
			line := strings.TrimSuffix(buf.String(), "\n")
			p, err := parseTextLine(line)
			if err != nil {
				t.Fatal(err)
			}
			m := map[string]any{slog.LevelKey: p.level, slog.MessageKey: p.message}
			if p.time != "" {
				ts, _ := time.Parse(time.RFC3339, p.time)
				m[slog.TimeKey] = ts
			}
			for _, k := range p.order { // dotted keys back into nested maps
				cur := m
				parts := strings.Split(k, ".")
				for _, g := range parts[:len(parts)-1] {
					next, ok := cur[g].(map[string]any)
					if !ok {
						next = map[string]any{}
						cur[g] = next
					}
					cur = next
				}
				cur[parts[len(parts)-1]] = p.attrs[k]
			}
			return m
		})
	})
	t.Run("json", func(t *testing.T) {
		var buf bytes.Buffer
		slogtest.Run(t, func(*testing.T) slog.Handler {
			buf.Reset()
			return newJSONHandler(&buf, slog.LevelInfo)
		}, func(t *testing.T) map[string]any {
			var m map[string]any
			if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
				t.Fatal(err)
			}
			if ts, ok := m["timestamp"]; ok {
				m[slog.TimeKey] = ts
				delete(m, "timestamp")
			}
			m[slog.MessageKey] = m["message"]
			delete(m, "message")
			return m
		})
	})
}

// Any message, key and value round-trip through one parseable text line.
func FuzzTextLogLine(f *testing.F) {
	f.Add("hello", "k", "v")
	f.Add("", "", "")
	f.Add(" lead", "a b", "x=y")
	f.Add("a=b", "k=", `"q"`)
	f.Add("line\nbreak", "k\n", "\x00\xff")
	f.Add("trail ", "é", "tab\there")
	f.Fuzz(func(t *testing.T, msg, key, value string) {
		var buf bytes.Buffer
		log := slog.New(newTextHandler(&buf, slog.LevelInfo))
		log.Info(msg, key, value)
		out := buf.String()
		if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") {
			t.Fatalf("not exactly one line: %q", out)
		}
		p, err := parseTextLine(strings.TrimSuffix(out, "\n"))
		if err != nil {
			t.Fatal(err)
		}
		if p.message != msg {
			t.Fatalf("message %q came back as %q", msg, p.message)
		}
		if len(p.attrs) != 1 {
			t.Fatalf("attrs %v from %q", p.attrs, out)
		}
		for _, v := range p.attrs {
			if strings.ToValidUTF8(value, "\uFFFD") != strings.ToValidUTF8(v, "\uFFFD") {
				t.Fatalf("value %q came back as %q", value, v)
			}
		}
	})
}

func BenchmarkTextLogLine(b *testing.B) {
	log, _ := NewLogger(io.Discard, "info", "text", "n")
	b.ReportAllocs()
	for b.Loop() {
		log.Info("connection closed", "conn", 12345, "reason", "client gone", "took", time.Second)
	}
}

func BenchmarkJSONLogLine(b *testing.B) {
	log, _ := NewLogger(io.Discard, "info", "json", "n")
	b.ReportAllocs()
	for b.Loop() {
		log.Info("connection closed", "conn", 12345, "reason", "client gone", "took", time.Second)
	}
}
