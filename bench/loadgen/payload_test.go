package loadgen

import (
	"encoding/json"
	"testing"
)

func TestPayloadRoundTripAndSize(t *testing.T) {
	in := Stamp{Publisher: 7, Topic: 42, Seq: 123456, SentNanos: 1763800000123456789}
	for _, size := range []int{0, 10, 100, 1000} {
		b := AppendPayload(nil, in, size)
		if size > 60 && len(b) != size {
			t.Fatalf("size %d: payload is %d bytes", size, len(b))
		}
		if !json.Valid(b) {
			t.Fatalf("size %d: not JSON: %s", size, b)
		}
		out, err := ParsePayload(b)
		if err != nil || out != in {
			t.Fatalf("size %d: got %+v, %v; want %+v", size, out, err, in)
		}
	}
}

func TestParsePayloadInsideAMessageFrame(t *testing.T) {
	in := Stamp{Publisher: 1, Topic: 2, Seq: 3, SentNanos: 4}
	frame := []byte(`{"op":"message","topic":"bench.g0.t2","sub":"bench.g0.*","data":` + string(AppendPayload(nil, in, 100)) + `,"ts":1763800000123}`)
	out, err := ParsePayload(frame)
	if err != nil || out != in {
		t.Fatalf("got %+v, %v", out, err)
	}
}

func TestParsePayloadRejectsGarbage(t *testing.T) {
	for _, s := range []string{``, `{}`, `{"p":}`, `{"p":1,"q":2}`, `{"p":1,"q":2,"s":3,"t":x}`,
		`{"p":99999999999,"q":0,"s":0,"t":0}`, `{"p":1,"q":2,"s":3,"t":4`, `{"p":1,"q":2,"s":99999999999999999999999,"t":4}`} {
		if _, err := ParsePayload([]byte(s)); err == nil {
			t.Errorf("%q: parsed", s)
		}
	}
}

func FuzzParsePayload(f *testing.F) {
	f.Add(AppendPayload(nil, Stamp{1, 2, 3, 4}, 64))
	f.Add([]byte(`{"op":"message","data":{"p":1,"q":2,"s":3,"t":4,"x":""}}`))
	f.Add([]byte(`{"p":18446744073709551615,"q":1,"s":1,"t":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParsePayload(b)
		if err != nil {
			return
		}
		// Whatever parses must survive a round trip.
		again, err := ParsePayload(AppendPayload(nil, s, 0))
		if err != nil || again != s {
			t.Fatalf("round trip of %+v: %+v, %v", s, again, err)
		}
	})
}

func BenchmarkParsePayload(b *testing.B) {
	frame := []byte(`{"op":"message","topic":"bench.g0.t2","sub":"bench.g0.t2","data":` + string(AppendPayload(nil, Stamp{1, 2, 3, 4}, 100)) + `,"ts":1}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParsePayload(frame); err != nil {
			b.Fatal(err)
		}
	}
}
