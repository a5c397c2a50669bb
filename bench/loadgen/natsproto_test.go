package loadgen

import (
	"bytes"
	"errors"
	"testing"
)

type natsSeen struct {
	kind                  int
	subj, sid, reply, pay string
}

func feedAll(t *testing.T, p *NATSParser, chunks ...[]byte) ([]natsSeen, error) {
	t.Helper()
	var out []natsSeen
	for _, c := range chunks {
		err := p.Feed(c, func(op *NATSOp) error {
			out = append(out, natsSeen{op.Kind, string(op.Subject), string(op.SID), string(op.Reply), string(op.Payload)})
			return nil
		})
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

const natsStream = "INFO {\"server_id\":\"x\"}\r\n+OK\r\nPING\r\nMSG a.b 1 5\r\nhello\r\nMSG a.c 22 _INBOX.x 0\r\n\r\n" +
	"HMSG a.d 3 12 17\r\nNATS/1.0\r\n\r\nworld\r\n-ERR 'Slow Consumer'\r\npong\r\n"

var natsWant = []natsSeen{
	{NATSInfo, "", "", "", `{"server_id":"x"}`},
	{NATSOK, "", "", "", ""},
	{NATSPing, "", "", "", ""},
	{NATSMsg, "a.b", "1", "", "hello"},
	{NATSMsg, "a.c", "22", "_INBOX.x", ""},
	{NATSMsg, "a.d", "3", "", "world"},
	{NATSErr, "", "", "", "Slow Consumer"},
	{NATSPong, "", "", "", ""},
}

func TestNATSParserWholeAndSplitAtEveryByte(t *testing.T) {
	got, err := feedAll(t, &NATSParser{}, []byte(natsStream))
	if err != nil || len(got) != len(natsWant) {
		t.Fatalf("whole: %v %+v", err, got)
	}
	for i := range natsWant {
		if got[i] != natsWant[i] {
			t.Fatalf("op %d: got %+v want %+v", i, got[i], natsWant[i])
		}
	}
	for split := 1; split < len(natsStream); split++ {
		got, err := feedAll(t, &NATSParser{}, []byte(natsStream[:split]), []byte(natsStream[split:]))
		if err != nil || len(got) != len(natsWant) {
			t.Fatalf("split at %d: %v, %d ops", split, err, len(got))
		}
		for i := range natsWant {
			if got[i] != natsWant[i] {
				t.Fatalf("split at %d op %d: got %+v", split, i, got[i])
			}
		}
	}
}

func TestNATSParserErrors(t *testing.T) {
	for _, s := range []string{"BOGUS\r\n", "MSG a\r\n", "MSG a 1 x\r\n", "MSG a 1 3\r\nabcXY", "HMSG a 1 9 3\r\n"} {
		if _, err := feedAll(t, &NATSParser{}, []byte(s)); !errors.Is(err, ErrNATSProtocol) {
			t.Errorf("%q: err %v", s, err)
		}
	}
	if _, err := feedAll(t, &NATSParser{}, bytes.Repeat([]byte("x"), natsMaxLine+1)); !errors.Is(err, ErrNATSProtocol) {
		t.Errorf("long line: %v", err)
	}
}

func TestAppendNATSPub(t *testing.T) {
	if got := string(AppendNATSPub(nil, "a.b", []byte("hi"))); got != "PUB a.b 2\r\nhi\r\n" {
		t.Fatalf("got %q", got)
	}
}

func FuzzNATSParser(f *testing.F) {
	f.Add([]byte(natsStream), 7)
	f.Add([]byte("MSG a 1 3\r\nabc\r\n"), 1)
	f.Add([]byte("HMSG a 1 2 4\r\nhhpp\r\n"), 3)
	f.Add([]byte("MSG a 1 99999999999999999999\r\n"), 0)
	f.Fuzz(func(t *testing.T, b []byte, split int) {
		// Parsing in two pieces must give the same operations as parsing at once.
		collect := func(chunks ...[]byte) ([]natsSeen, error) {
			p := &NATSParser{}
			var out []natsSeen
			for _, c := range chunks {
				if err := p.Feed(c, func(op *NATSOp) error {
					out = append(out, natsSeen{op.Kind, string(op.Subject), string(op.SID), string(op.Reply), string(op.Payload)})
					return nil
				}); err != nil {
					return out, err
				}
			}
			return out, nil
		}
		whole, errWhole := collect(b)
		if split < 0 {
			split = -split
		}
		k := 0
		if len(b) > 0 {
			k = split % len(b)
		}
		parts, errParts := collect(b[:k], b[k:])
		if (errWhole == nil) != (errParts == nil) {
			// An over-long partial line may be refused earlier in pieces; both must refuse
			// or both accept otherwise.
			if !(len(b) > natsMaxLine) {
				t.Fatalf("whole err %v, parts err %v", errWhole, errParts)
			}
			return
		}
		if errWhole == nil {
			if len(whole) != len(parts) {
				t.Fatalf("whole %d ops, parts %d ops", len(whole), len(parts))
			}
			for i := range whole {
				if whole[i] != parts[i] {
					t.Fatalf("op %d: %+v vs %+v", i, whole[i], parts[i])
				}
			}
		}
	})
}

func BenchmarkNATSParserMsg(b *testing.B) {
	msg := []byte("MSG bench.g0.t1 1 100\r\n" + string(bytes.Repeat([]byte("x"), 100)) + "\r\n")
	p := &NATSParser{}
	b.ReportAllocs()
	for b.Loop() {
		_ = p.Feed(msg, func(*NATSOp) error { return nil })
	}
}
