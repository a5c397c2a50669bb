package proxy

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/revenprox/revenprox/config"
	"github.com/revenprox/revenprox/telemetry"
)

// dialSlow connects with a tiny receive buffer and never reads unless told: a client that
// stopped reading.
func (n *testNode) dialSlow(t *testing.T) *client {
	t.Helper()
	u, _ := url.Parse(n.url)
	d := websocket.Dialer{NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			_ = c.(*net.TCPConn).SetReadBuffer(4096)
		}
		return c, err
	}}
	ws, _, err := d.Dial(u.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	c := &client{t: t, ws: ws}
	if f := c.read(); f.Op != "welcome" {
		t.Fatal(f)
	}
	return c
}

// flood publishes count messages of size bytes on topic, each acknowledged before the next
// (pub.read fails the test after 5 s: a slow reader must never hold a publisher up).
func flood(t *testing.T, pub *client, topic string, count, size int) {
	t.Helper()
	floodPaced(t, pub, topic, count, size, nil)
}

// floodPaced calls pace(i) before publishing message i (to keep a reading subscriber's queue
// short under the race detector, where the test client reads slower than the node writes).
func floodPaced(t *testing.T, pub *client, topic string, count, size int, pace func(i int)) {
	t.Helper()
	payload := `"` + strings.Repeat("p", size) + `"`
	for i := range count {
		if pace != nil {
			pace(i)
		}
		pub.send(fmt.Sprintf(`{"op":"publish","topic":%q,"data":%s,"id":%d}`, topic, payload, i))
		if f := pub.read(); f.Op != "ack" {
			t.Fatalf("publish not acked: %+v", f)
		}
	}
}

// smallSocketBuffers makes a client that stops reading fill its kernel buffers within a few
// kilobytes, so backpressure tests move little data.
func smallSocketBuffers(n *testNode) { n.socketSendBuffer.Store(4096) }

func TestSlowConsumerDisconnected4008(t *testing.T) {
	n := runNode(t, func(c *config.Config) {
		c.Limits.PublishRate = 0
		c.Backpressure = config.BackpressureConfig{QueueBytes: 32 << 10, Policy: config.PolicyDisconnect}
	})
	smallSocketBuffers(n)
	slow := n.dialSlow(t)
	slow.subscribe("feed")
	fast := n.dial(t)
	fast.subscribe("feed")
	pub := n.dial(t)

	const count, size = 300, 1 << 10 // 300 KB: far beyond small socket buffers plus a 32 KiB queue
	received := make(chan int, 1)
	var fastGot atomic.Int64
	go func() {
		for fastGot.Load() < count {
			_ = fast.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, _, err := fast.ws.ReadMessage(); err != nil {
				t.Logf("fast subscriber: %v", err)
				break
			}
			fastGot.Add(1)
		}
		received <- int(fastGot.Load())
	}()
	floodPaced(t, pub, "feed", count, size, func(i int) {
		eventually(t, 5*time.Second, "fast subscriber keeping up", func() bool { return fastGot.Load() >= int64(i-8) })
	})
	if got := <-received; got != count {
		t.Fatalf("fast subscriber received %d of %d", got, count)
	}
	eventually(t, 10*time.Second, "slow consumer dropped", func() bool {
		return metricValue(t, n, "messages_dropped_total", telemetry.DropSlowConsumer) > 0
	})
	// When the slow client finally reads, it finds a close 4008 after what was already sent.
	if code := slow.closeCode(10 * time.Second); code != int(CloseSlowConsumer) && code != websocket.CloseAbnormalClosure {
		t.Fatalf("slow client close code %d, want 4008", code)
	}
	eventually(t, 5*time.Second, "slow connection released", func() bool { return n.active.Load() == 2 })
}

func TestDropPoliciesKeepConnection(t *testing.T) {
	for _, policy := range []string{config.PolicyDropOldest, config.PolicyDropNewest} {
		t.Run(policy, func(t *testing.T) {
			n := runNode(t, func(c *config.Config) {
				c.Limits.PublishRate = 0
				c.Backpressure = config.BackpressureConfig{QueueBytes: 32 << 10, Policy: policy}
			})
			smallSocketBuffers(n)
			slow := n.dialSlow(t)
			slow.subscribe("feed")
			pub := n.dial(t)
			const count, size = 300, 1 << 10
			flood(t, pub, "feed", count, size)
			eventually(t, 10*time.Second, "drops counted", func() bool {
				return metricValue(t, n, "messages_dropped_total", telemetry.DropQueueFull) > 0
			})
			// The slow client is still connected: it drains what is left and gets a pong.
			slow.send(`{"op":"ping","id":"still-here"}`)
			got, pong := 0, false
			for !pong {
				f := slow.read()
				switch f.Op {
				case "message":
					got++
				case "pong":
					pong = true
				}
			}
			dropped := int(metricValue(t, n, "messages_dropped_total", telemetry.DropQueueFull))
			if got+dropped != count {
				t.Errorf("received %d + dropped %d != published %d", got, dropped, count)
			}
			if policy == config.PolicyDropOldest {
				// The newest message survived.
				pub.request(`{"op":"publish","topic":"feed","data":"last","id":"x"}`)
				if f := slow.read(); string(f.Data) != `"last"` {
					t.Errorf("after drain got %s", f.Data)
				}
			}
		})
	}
}

// TestPipelinedPublishesBatchWrites sends a burst of publishes in one TCP write: the node writes
// the subscriber's messages in a few socket writes, not one per message, and in order.
func TestPipelinedPublishesBatchWrites(t *testing.T) {
	n := runNode(t, func(c *config.Config) { c.Limits.PublishRate = 0 })
	sub := n.dial(t)
	sub.subscribe("burst")
	var subConn *conn
	n.index.Lookup("burst", func(subs []*conn) { subConn = subs[0] })
	before := subConn.out.writes.Load()
	pub, raw := rawAfterHandshake(t, n)
	const count = 200
	var burst []byte
	for i := range count {
		burst = append(burst, maskedFrame(wsOpText, true, fmt.Appendf(nil, `{"op":"publish","topic":"burst","data":%d}`, i), true, 0)...)
	}
	if _, err := raw.Write(burst); err != nil {
		t.Fatal(err)
	}
	for i := range count {
		f := sub.read()
		if string(f.Data) != fmt.Sprint(i) {
			t.Fatalf("message %d: %s", i, f.Data)
		}
	}
	writes := subConn.out.writes.Load() - before
	t.Logf("%d socket writes for %d messages", writes, count)
	if writes > count/4 {
		t.Errorf("%d socket writes for %d pipelined messages, want a few", writes, count)
	}
	_ = pub
}
