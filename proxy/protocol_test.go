package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/revenprox/revenprox/config"
	"github.com/revenprox/revenprox/telemetry"
)

func TestWelcomeAndSubprotocol(t *testing.T) {
	n := runNode(t, func(c *config.Config) { c.PingInterval = config.Duration(7 * time.Second) })
	dialer := websocket.Dialer{Subprotocols: []string{"revenprox.v1"}}
	ws, resp, err := dialer.Dial(n.url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != "revenprox.v1" {
		t.Errorf("subprotocol = %q, want revenprox.v1", got)
	}
	c := &client{t: t, ws: ws}
	f := c.read()
	if f.Op != "welcome" || !strings.HasPrefix(f.ConnID, "c-") || f.Node != "test-1" || f.PingIntervalMs != 7000 {
		t.Fatalf("welcome = %+v", f)
	}
}

func TestOpsEchoIDs(t *testing.T) {
	n := runNode(t, nil)
	c := n.dial(t)
	cases := []struct {
		frame  string
		op, id string
	}{
		{`{"op":"subscribe","topic":"chat.lobby","id":1}`, "ack", `1`},
		{`{"op":"subscribe","topic":"chat.lobby","id":"again"}`, "ack", `"again"`}, // idempotent
		{`{"op":"ping","id":4}`, "pong", `4`},
		{`{"op":"ping"}`, "pong", ``},
		{`{"op":"ping","id":null}`, "pong", ``},
		{`{"op":"ping","id":-2.5e3}`, "pong", `-2.5e3`},
		{`{"op":"unsubscribe","topic":"chat.lobby","id":2}`, "ack", `2`},
		{`{"op":"unsubscribe","topic":"never.subscribed","id":5}`, "ack", `5`},
		{`{"op":"publish","topic":"chat.lobby","data":{"text":"hi"},"id":"p-3"}`, "ack", `"p-3"`},
	}
	for _, tc := range cases {
		f := c.request(tc.frame)
		if f.Op != tc.op || string(f.ID) != tc.id {
			t.Errorf("%s → op=%s id=%s, want op=%s id=%s", tc.frame, f.Op, f.ID, tc.op, tc.id)
		}
	}
}

func TestMessageFramePassesDataThrough(t *testing.T) {
	n := runNode(t, nil)
	sub := n.dial(t)
	sub.subscribe("chat.*")
	pub := n.dial(t)
	// Odd spacing, unicode escapes and big numbers must reach subscribers byte for byte.
	data := `{ "text" : "h\u00e9llo" , "n":12345678901234567890, "list":[1 , 2] }`
	before := time.Now().UnixMilli()
	if f := pub.request(`{"op":"publish","topic":"chat.lobby","data":` + data + `,"id":9}`); f.Op != "ack" {
		t.Fatalf("publish: %+v", f)
	}
	raw := sub.readRaw()
	want := `{"op":"message","topic":"chat.lobby","sub":"chat.*","data":` + data + `,"ts":`
	if !bytes.HasPrefix(raw, []byte(want)) {
		t.Fatalf("message = %s\nwant prefix %s", raw, want)
	}
	var f serverFrame
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	if f.TS < before || f.TS > time.Now().UnixMilli() {
		t.Errorf("ts %d outside [%d, now]", f.TS, before)
	}
}

func TestErrorsKeepConnectionOpen(t *testing.T) {
	n := runNode(t, func(c *config.Config) {
		c.Auth.Anonymous = config.ACLConfig{Subscribe: []string{"public.>"}, Publish: []string{"public.chat"}}
	})
	c := n.dial(t)
	cases := []struct {
		name, frame, code, id string
	}{
		{"malformed JSON", `{"op":"subscribe",`, CodeBadRequest, ``},
		{"not an object", `[1,2]`, CodeBadRequest, ``},
		{"unknown op", `{"op":"dance","id":1}`, CodeBadRequest, `1`},
		{"missing op", `{"topic":"a","id":2}`, CodeBadRequest, `2`},
		{"id is an object", `{"op":"ping","id":{"a":1}}`, CodeBadRequest, ``},
		{"topic wrong type", `{"op":"subscribe","topic":5,"id":3}`, CodeBadRequest, ``},
		{"invalid topic", `{"op":"subscribe","topic":"a..b","id":4}`, CodeInvalidTopic, `4`},
		{"bad byte", `{"op":"subscribe","topic":"a.b c","id":5}`, CodeInvalidTopic, `5`},
		{"> not last", `{"op":"subscribe","topic":"public.>.x","id":6}`, CodeInvalidTopic, `6`},
		{"publish wildcard", `{"op":"publish","topic":"public.*","data":1,"id":7}`, CodeInvalidTopic, `7`},
		{"publish no data", `{"op":"publish","topic":"public.chat","id":8}`, CodeBadRequest, `8`},
		{"publish bad JSON data", `{"op":"publish","topic":"public.chat","data":tru,"id":9}`, CodeBadRequest, ``},
		{"subscribe forbidden", `{"op":"subscribe","topic":"private.x","id":10}`, CodeForbidden, `10`},
		{"subscribe wider than allowed", `{"op":"subscribe","topic":">","id":11}`, CodeForbidden, `11`},
		{"publish forbidden", `{"op":"publish","topic":"public.other","data":1,"id":12}`, CodeForbidden, `12`},
		{"empty topic", `{"op":"unsubscribe","topic":"","id":13}`, CodeInvalidTopic, `13`},
		{"17 tokens", `{"op":"subscribe","topic":"public` + strings.Repeat(".a", 16) + `","id":14}`, CodeInvalidTopic, `14`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c.t = t
			f := c.request(tc.frame)
			if f.Op != "error" || f.Code != tc.code || string(f.ID) != tc.id || f.Message == "" {
				t.Errorf("got %+v, want error code=%s id=%s with a message", f, tc.code, tc.id)
			}
		})
	}
	c.t = t
	// Binary frames get bad_request too.
	if err := c.ws.WriteMessage(websocket.BinaryMessage, []byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	if f := c.read(); f.Op != "error" || f.Code != CodeBadRequest {
		t.Errorf("binary frame → %+v", f)
	}
	// Still open and working.
	if f := c.request(`{"op":"subscribe","topic":"public.news","id":"ok"}`); f.Op != "ack" {
		t.Fatalf("after errors: %+v", f)
	}
}

func TestWildcardMatchingAndOncePerSubscription(t *testing.T) {
	n := runNode(t, nil)
	c := n.dial(t)
	for _, p := range []string{"chat.*", "chat.>", "chat.lobby", "*.lobby", "news.>"} {
		c.subscribe(p)
	}
	pub := n.dial(t)
	cases := []struct {
		topic string
		subs  []string
	}{
		{"chat.lobby", []string{"chat.*", "chat.>", "chat.lobby", "*.lobby"}},
		{"chat.lobby.x", []string{"chat.>"}},
		{"chat", nil},
		{"news.eu.fr", []string{"news.>"}},
		{"sport.lobby", []string{"*.lobby"}},
	}
	for _, tc := range cases {
		pub.request(fmt.Sprintf(`{"op":"publish","topic":%q,"data":"x"}`, tc.topic))
		// A marker publish on a topic only chat.> sees tells us all deliveries for tc arrived.
		pub.request(`{"op":"publish","topic":"chat.marker.end","data":"end"}`)
		got := map[string]int{}
		for {
			f := c.read()
			if f.Topic == "chat.marker.end" {
				break
			}
			if f.Topic != tc.topic {
				t.Fatalf("unexpected %+v", f)
			}
			got[f.Sub]++
		}
		if len(got) != len(tc.subs) {
			t.Errorf("%s delivered via %v, want %v", tc.topic, got, tc.subs)
		}
		for _, s := range tc.subs {
			if got[s] != 1 {
				t.Errorf("%s via %s: %d deliveries, want 1", tc.topic, s, got[s])
			}
		}
	}
}

func TestOrderPerPublisher(t *testing.T) {
	n := runNode(t, func(c *config.Config) { c.Limits.PublishRate = 0 })
	const count = 500
	subs := []*client{n.dial(t), n.dial(t), n.dial(t)}
	for _, s := range subs {
		s.subscribe("seq.>")
	}
	pubs := []*client{n.dial(t), n.dial(t)}
	done := make(chan struct{}, len(pubs))
	for p, pub := range pubs {
		go func() {
			for i := range count {
				_ = pub.ws.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, `{"op":"publish","topic":"seq.p%d","data":%d}`, p, i))
			}
			done <- struct{}{}
		}()
	}
	for _, s := range subs {
		next := map[string]int{}
		for range count * len(pubs) {
			f := s.read()
			var v int
			if err := json.Unmarshal(f.Data, &v); err != nil {
				t.Fatal(err)
			}
			if v != next[f.Topic] {
				t.Fatalf("%s: got %d, want %d (reordered or lost)", f.Topic, v, next[f.Topic])
			}
			next[f.Topic]++
		}
	}
	for range pubs {
		<-done
	}
}

func TestAdminPublish(t *testing.T) {
	n := runNode(t, func(c *config.Config) {
		c.Admin = config.AdminConfig{Listen: "127.0.0.1:0", APIKey: "k3y"}
		c.Auth.Anonymous = config.ACLConfig{Subscribe: []string{">"}} // clients may not publish
	})
	sub := n.dial(t)
	sub.subscribe("alerts.*")
	if f := sub.request(`{"op":"publish","topic":"alerts.x","data":1,"id":1}`); f.Code != CodeForbidden {
		t.Fatalf("client publish = %+v, want forbidden", f)
	}
	post := func(key, body string) int {
		req, _ := http.NewRequest(http.MethodPost, "http://"+n.AdminAddr()+"/v1/publish", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := post("wrong", `{"topic":"alerts.x","data":1}`); got != http.StatusUnauthorized {
		t.Errorf("wrong key → %d", got)
	}
	if got := post("k3y", `{"topic":"alerts.*","data":1}`); got != http.StatusBadRequest {
		t.Errorf("wildcard topic → %d", got)
	}
	if got := post("k3y", `{"topic":"alerts.fire","data":{"level":"high"}}`); got != http.StatusAccepted {
		t.Fatalf("publish → %d", got)
	}
	f := sub.read()
	if f.Topic != "alerts.fire" || string(f.Data) != `{"level":"high"}` {
		t.Fatalf("delivered %+v", f)
	}
	if v := metricValue(t, n, "messages_received_total", telemetry.SourceAPI); v != 1 {
		t.Errorf("messages_received_total{source=api} = %v", v)
	}
}
