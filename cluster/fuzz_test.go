package cluster

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/revenprox/revenprox/config"
	"github.com/revenprox/revenprox/telemetry"
	"github.com/revenprox/revenprox/topics"
)

func fuzzMesh(t testing.TB) *Mesh {
	m, err := New(Options{Config: config.Default().Cluster, NodeID: "self", Metrics: telemetry.NewMetrics(), Deliver: func(*Message) {}})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// FuzzReceiveHeartbeat feeds arbitrary heartbeat bodies and subjects to the peer table: it must
// never panic, never admit a peer whose id does not match its subject, and never keep more
// than TopTopics patterns per peer.
func FuzzReceiveHeartbeat(f *testing.F) {
	f.Add("revenprox.sys.hb.p2", []byte(`{"node":"p2","version":"1","connections":3,"topic_count":1,"topics":[{"pattern":"a","subscribers":2}],"sent_at":"2026-01-01T00:00:00Z"}`))
	f.Add("revenprox.sys.hb.p2", []byte(`{"node":"p2","leaving":true}`))
	f.Add("revenprox.sys.hb.self", []byte(`{"node":"self"}`))
	f.Add("revenprox.sys.hb.x", []byte(`{"node":"y"}`))
	f.Add("revenprox.sys.hb.p3", []byte(`not json`))
	f.Add("revenprox.sys.hb.p3", []byte(`{"node":"p3","topics":[{},{},{},{},{},{},{},{},{},{},{},{}]}`))
	m := fuzzMesh(f)
	f.Fuzz(func(t *testing.T, subject string, body []byte) {
		clear(m.peers.peers) // judge each input alone
		m.receiveHeartbeat(&nats.Msg{Subject: subject, Data: body}, time.Now())
		for _, p := range m.Peers() {
			if p.ID == "self" || p.ID == "" || len(p.Topics) > TopTopics {
				t.Fatalf("admitted peer %+v from %q", p, subject)
			}
			if len(subject) < len(p.ID) || subject[len(subject)-len(p.ID):] != p.ID {
				t.Fatalf("peer %q does not match subject %q", p.ID, subject)
			}
		}
		_ = m.View()
	})
}

// FuzzDecode feeds arbitrary subjects and headers to the receive path: it must never panic, and
// whatever it delivers from a plain NATS client names a valid topic.
func FuzzDecode(f *testing.F) {
	f.Add("revenprox.t.chat.x", "chat.>", "A", "1700000000123456789", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	f.Add("revenprox.t.chat.x", "chat.>", "", "", "")
	f.Add("revenprox.t.bad$", ">", "", "-5", "garbage")
	f.Add("other.subject", ">", "", "x", "")
	m := fuzzMesh(f)
	f.Fuzz(func(t *testing.T, subject, pattern, origin, ts, traceparent string) {
		h := nats.Header{}
		if origin != "" {
			h[HeaderNode] = []string{origin}
		}
		if ts != "" {
			h[HeaderTs] = []string{ts}
		}
		if traceparent != "" {
			h[headerTraceparent] = []string{traceparent}
		}
		sub := &nats.Subscription{Subject: m.prefix + pattern}
		now := time.Now()
		out := m.decode(&nats.Msg{Subject: subject, Header: h, Data: []byte(`1`), Sub: sub}, now)
		if out == nil {
			return
		}
		if out.Ctx == nil || out.Ingress.IsZero() || out.Pattern != pattern {
			t.Fatalf("decoded %+v", out)
		}
		if out.Origin == "" && topics.ValidateTopic(out.Topic) != nil {
			t.Fatalf("delivered invalid topic %q from a plain client", out.Topic)
		}
	})
}
