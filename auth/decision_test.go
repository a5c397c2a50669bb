package auth

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/revenprox/revenprox/topics"
)

func TestACL(t *testing.T) {
	d := &Decision{
		Subscribe: []string{"chat.>", "news.*", "user.u-42.inbox", "stocks.*.price"},
		Publish:   []string{"chat.*", "user.u-42.>", "metrics.*.cpu"},
	}
	subs := []struct {
		pattern string
		want    bool
	}{
		{"chat.lobby", true},
		{"chat.lobby.x", true},
		{"chat.*", true},
		{"chat.>", true},
		{"chat", false}, // '>' needs at least one more token
		{"news.sports", true},
		{"news.*", true},
		{"news.>", false}, // deeper than news.* allows
		{"news.sports.x", false},
		{"user.u-42.inbox", true},
		{"user.u-43.inbox", false},
		{"user.*.inbox", false}, // would reach other users
		{"stocks.acme.price", true},
		{"stocks.*.price", true},
		{"stocks.acme.volume", false},
		{">", false},
		{"*", false},
		{"", false},
		{"chat..x", false},
		{"chat.>.x", false},
	}
	for _, tc := range subs {
		if got := d.CanSubscribe(tc.pattern); got != tc.want {
			t.Errorf("CanSubscribe(%q) = %v, want %v", tc.pattern, got, tc.want)
		}
	}
	pubs := []struct {
		topic string
		want  bool
	}{
		{"chat.lobby", true},
		{"chat.lobby.x", false}, // chat.* is exactly one token
		{"chat", false},
		{"user.u-42.outbox", true},
		{"user.u-42.a.b.c", true},
		{"user.u-42", false},
		{"user.u-43.outbox", false},
		{"metrics.node1.cpu", true},
		{"metrics.node1.mem", false},
		{"chat.*", false}, // publishes name a literal topic
		{"chat.>", false},
		{"", false},
		{"news.sports", false},
	}
	for _, tc := range pubs {
		if got := d.CanPublish(tc.topic); got != tc.want {
			t.Errorf("CanPublish(%q) = %v, want %v", tc.topic, got, tc.want)
		}
	}

	all := &Decision{Subscribe: []string{">"}, Publish: []string{">"}}
	if !all.CanSubscribe(">") || !all.CanSubscribe("a.*.c") || !all.CanPublish("a.b.c") {
		t.Error("'>' allows everything")
	}
	none := &Decision{}
	if none.CanSubscribe("a") || none.CanPublish("a") {
		t.Error("absent lists allow nothing")
	}
	var nilDecision *Decision
	if nilDecision.CanSubscribe("a") || nilDecision.CanPublish("a") {
		t.Error("nil decision allows nothing")
	}
}

func TestTokenFromRequest(t *testing.T) {
	for _, tc := range []struct {
		name, auth, url, want string
	}{
		{"bearer", "Bearer abc", "/ws", "abc"},
		{"bearer lower-case scheme", "bearer abc", "/ws", "abc"},
		{"bearer wins over query", "Bearer hdr", "/ws?token=q", "hdr"},
		{"query", "", "/ws?token=q%2B1", "q+1"},
		{"basic falls back to query", "Basic dXNlcjpwdw==", "/ws?token=q", "q"},
		{"empty bearer falls back to query", "Bearer   ", "/ws?token=q", "q"},
		{"none", "", "/ws?other=1", ""},
		{"no query", "", "/ws", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, tc.url, nil)
			if tc.auth != "" {
				r.Header.Set("Authorization", tc.auth)
			}
			if got := TokenFromRequest(r); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestDecodeDecision(t *testing.T) {
	for _, tc := range []struct {
		body  string
		ok    bool
		allow bool
		ttl   float64 // seconds
	}{
		{`{"allow":true,"user":"u-42","ttl":60,"subscribe":["chat.>"],"publish":["chat.>"]}`, true, true, 60},
		{`{"allow":true}`, true, true, 0},
		{`{"allow":true,"ttl":1.5,"extra":{"x":1}}`, true, true, 1.5},
		{`{"allow":true,"ttl":1e300}`, true, true, -1},
		{`{"allow":false,"reason":"no"}`, true, false, 0},
		{`{"allow":true,"ttl":-1}`, false, false, 0},
		{`{"allow":"yes"}`, false, false, 0},
		{`{"user":"u"}`, false, false, 0},
		{`null`, false, false, 0},
		{`[]`, false, false, 0},
		{``, false, false, 0},
		{`{"allow":true} {}`, false, false, 0},
		{`<html>`, false, false, 0},
		{`{"allow":true,"subscribe":"chat.>"}`, false, false, 0},
	} {
		a, err := decodeDecision([]byte(tc.body))
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v, want ok=%v", tc.body, err, tc.ok)
			continue
		}
		if !tc.ok {
			continue
		}
		if a.Allow != tc.allow {
			t.Errorf("%s: allow %v", tc.body, a.Allow)
		}
		if tc.ttl >= 0 && a.TTL.Seconds() != tc.ttl {
			t.Errorf("%s: ttl %v, want %vs", tc.body, a.TTL, tc.ttl)
		}
		if tc.ttl < 0 && a.TTL <= 0 {
			t.Errorf("%s: huge ttl overflowed to %v", tc.body, a.TTL)
		}
	}
}

func FuzzDecodeDecision(f *testing.F) {
	for _, seed := range []string{
		`{"allow":true,"user":"u-42","ttl":60,"subscribe":["chat.>"],"publish":["chat.>"]}`,
		`{"allow":false,"reason":"suspended"}`,
		`{"allow":true,"ttl":0.25,"subscribe":["a.*.c",">","bad..x"],"publish":["*"]}`,
		`{"allow":true,"ttl":1e308}`,
		`{"allow":true,"ttl":-5}`,
		`{"allow":null}`,
		`null`,
		`<html>oops</html>`,
		``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		a, err := decodeDecision(body)
		if err != nil {
			if a.Allow || a.TTL != 0 || len(a.Subscribe)+len(a.Publish) != 0 {
				t.Fatalf("failed decode returned a decision: %+v", a)
			}
			return
		}
		if a.TTL < 0 {
			t.Fatalf("negative ttl %v", a.TTL)
		}
		if !a.Allow && (len(a.Subscribe) != 0 || len(a.Publish) != 0) {
			t.Fatal("a deny carries no patterns")
		}
		for _, p := range append(append([]string(nil), a.Subscribe...), a.Publish...) {
			if topics.ValidatePattern(p) != nil {
				t.Fatalf("invalid pattern %q kept", p)
			}
		}
		d := &Decision{Subscribe: a.Subscribe, Publish: a.Publish}
		d.CanSubscribe("a.b")
		d.CanPublish("a.b")
	})
}

func BenchmarkAuthenticateCached(b *testing.B) {
	wh := newTestWebhook(b)
	h := newHarness(b, testConfig(wh.URL()))
	const tokens = 1024
	names := make([]string, tokens)
	for i := range names {
		names[i] = fmt.Sprintf("bench-token-%04d-abcdefghijklmnopqrstuvwxyz", i)
		h.mustAllow(b, names[i])
	}
	var seq atomic.Uint64
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := seq.Add(1) * 7919
		for pb.Next() {
			i++
			if _, err := h.a.Authenticate(ctx, Request{Token: names[i%tokens], RemoteAddr: "127.0.0.1:1"}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.StopTimer()
	if wh.calls.Load() != tokens {
		b.Fatalf("webhook calls %d, want %d", wh.calls.Load(), tokens)
	}
}
