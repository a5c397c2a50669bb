package proxy

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestDecodeClientFrame(t *testing.T) {
	cases := []struct {
		in      string
		op, id  string
		topic   string
		data    string
		wantErr bool
	}{
		{in: `{"op":"subscribe","topic":"a.b","id":1}`, op: "subscribe", topic: "a.b", id: "1"},
		{in: `{"op":"publish","topic":"a","data":{"x":[1,2]},"id":"q"}`, op: "publish", topic: "a", data: `{"x":[1,2]}`, id: `"q"`},
		{in: `{"op":"publish","topic":"a","data":null}`, op: "publish", topic: "a", data: `null`},
		{in: `{"op":"ping","id":null}`, op: "ping"},
		{in: `{"op":"ping","extra":"ignored"}`, op: "ping"},
		{in: `{"op":"ping","id":true}`, op: "ping", wantErr: true},
		{in: `{"op":"ping","id":[1]}`, op: "ping", wantErr: true},
		{in: `{"op":"ping","id":"` + strings.Repeat("x", 200) + `"}`, op: "ping", wantErr: true},
		{in: `{"op":1}`, wantErr: true},
		{in: `[]`, wantErr: true},
		{in: `"subscribe"`, wantErr: true},
		{in: ``, wantErr: true},
		{in: `{"op":"ping"} trailing`, wantErr: true},
	}
	for _, tc := range cases {
		f, err := decodeClientFrame([]byte(tc.in))
		if (err != nil) != tc.wantErr {
			t.Errorf("%s: err = %v, want error %v", tc.in, err, tc.wantErr)
			continue
		}
		if err != nil {
			if !errors.Is(err, ErrBadFrame) {
				t.Errorf("%s: %v does not wrap ErrBadFrame", tc.in, err)
			}
			if len(f.ID) != 0 {
				t.Errorf("%s: invalid id %s kept for echo", tc.in, f.ID)
			}
			continue
		}
		if f.Op != tc.op || f.Topic != tc.topic || string(f.Data) != tc.data || string(f.ID) != tc.id {
			t.Errorf("%s → %+v", tc.in, f)
		}
	}
}

// parseServerFrame decodes one complete unmasked server frame, checking the header.
func parseServerFrame(t testing.TB, b []byte) (opcode byte, payload []byte) {
	t.Helper()
	if len(b) < 2 || b[0]&0x80 == 0 || b[1]&0x80 != 0 {
		t.Fatalf("bad header % x", b[:min(len(b), 4)])
	}
	n, off := int(b[1]&0x7f), 2
	switch n {
	case 126:
		n, off = int(binary.BigEndian.Uint16(b[2:])), 4
	case 127:
		n, off = int(binary.BigEndian.Uint64(b[2:])), 10
	}
	if len(b) != off+n {
		t.Fatalf("frame length %d, header says %d+%d", len(b), off, n)
	}
	return b[0] & 0x0f, b[off:]
}

func TestEncodedFramesAreValid(t *testing.T) {
	for _, size := range []int{0, 10, 125, 126, 200, 65535, 65536, 70000} {
		data := []byte(`"` + strings.Repeat("d", size) + `"`)
		op, payload := parseServerFrame(t, encodeMessageFrame("a.b", "a.*", data, 1763800000123))
		if op != wsOpText {
			t.Fatalf("opcode %d", op)
		}
		var f serverFrame
		if err := json.Unmarshal(payload, &f); err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		if f.Op != "message" || f.Topic != "a.b" || f.Sub != "a.*" || f.TS != 1763800000123 || !bytes.Equal(f.Data, data) {
			t.Fatalf("size %d: %+v", size, f)
		}
	}
	for _, b := range [][]byte{
		encodeReply("ack", json.RawMessage(`"x"`)),
		encodeReply("pong", nil),
		encodeError(json.RawMessage(`7`), CodeForbidden, "quote \" and newline \n"),
		newWelcomeEncoder(`node "quoted"`, 25000).encode("c-1"),
	} {
		_, payload := parseServerFrame(t, b)
		if !json.Valid(payload) {
			t.Errorf("invalid JSON %s", payload)
		}
	}
	op, payload := parseServerFrame(t, wsFrame(wsOpClose, closePayload(CloseSlowConsumer, strings.Repeat("r", 200))))
	if op != wsOpClose || binary.BigEndian.Uint16(payload) != uint16(CloseSlowConsumer) || len(payload) > 125 {
		t.Errorf("close frame op=%d payload=%d bytes", op, len(payload))
	}
}

// FuzzDecodeClientFrame: any bytes decode without panicking; an accepted frame has an echo-safe
// id, and a publish built from it encodes to a valid message frame.
func FuzzDecodeClientFrame(f *testing.F) {
	for _, seed := range []string{
		`{"op":"subscribe","topic":"chat.lobby","id":1}`,
		`{"op":"unsubscribe","topic":"chat.*","id":"2"}`,
		`{"op":"publish","topic":"chat.lobby","data":{"text":"hi"},"id":3}`,
		`{"op":"publish","topic":"a","data":[1,"x",null,true,{"k":-1.5e9}],"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}`,
		`{"op":"ping","id":4}`,
		`{"op":"ping","id":{"nested":1}}`,
		`{"op":`, `[]`, `null`, `{"op":"x","id":"\u0000"}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		fr, err := decodeClientFrame(msg)
		if len(fr.ID) > 0 {
			if !json.Valid(fr.ID) || (fr.ID[0] != '"' && fr.ID[0] != '-' && (fr.ID[0] < '0' || fr.ID[0] > '9')) {
				t.Fatalf("echoable id %q is not a number or string", fr.ID)
			}
			_, payload := parseServerFrame(t, encodeReply("ack", fr.ID))
			if !json.Valid(payload) {
				t.Fatalf("ack with id %q is invalid JSON", fr.ID)
			}
		}
		if err != nil || fr.Op != opPublish || len(fr.Data) == 0 {
			return
		}
		_, payload := parseServerFrame(t, encodeMessageFrame("t", "t", fr.Data, 1))
		if !json.Valid(payload) {
			t.Fatalf("message frame with data %q is invalid JSON", fr.Data)
		}
	})
}
