package loadgen

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// startNATS runs a real NATS server with a WebSocket listener on a random loopback port.
func startNATS(t *testing.T, maxConn int) (*server.Server, string) {
	t.Helper()
	opts := &server.Options{
		Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true, MaxConn: maxConn,
		Websocket: server.WebsocketOpts{Host: "127.0.0.1", Port: -1, NoTLS: true},
	}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(5 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s, s.WebsocketURL()
}

type recordingControl struct{ ready, done int }

func (c *recordingControl) Ready(context.Context) error { c.ready++; return nil }
func (c *recordingControl) Done(context.Context) error  { c.done++; return nil }

func TestFanoutAgainstRealNATS(t *testing.T) {
	_, url := startNATS(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ctl := &recordingControl{}
	counters := &Counters{}
	o := Options{
		Scenario: ScenarioFanout, Target: TargetNATS, URLs: []string{url},
		Subscribers: 40, Topics: 20, Publishers: 3, Rate: 300, Size: 100, Wildcard: 4,
		Duration: time.Second, Drain: 3 * time.Second, Concurrency: 10, SourceIPs: 4,
	}
	res, err := Run(ctx, o, ctl, counters)
	if err != nil {
		t.Fatal(err)
	}
	if ctl.ready != 1 || ctl.done != 1 {
		t.Fatalf("phases: ready %d done %d", ctl.ready, ctl.done)
	}
	s := res.Summary()
	if res.Connect.Established != 43 || res.Connect.Failed != 0 {
		t.Fatalf("connections: %+v", res.Connect)
	}
	if res.Published == 0 || s.Expected == 0 {
		t.Fatalf("nothing published: %+v", s)
	}
	// Wildcard subscribers (every 4th) cover ten topics each, so there are more
	// subscriptions than subscribers.
	var subs int64
	for _, n := range res.SubscribedPerTopic {
		subs += n
	}
	if subs <= 40 {
		t.Fatalf("subscriptions %d: wildcards not counted", subs)
	}
	if s.Received != s.Expected || s.Lost != 0 || s.Duplicates != 0 || res.Seq.Holes != 0 || res.BadPayloads != 0 {
		t.Fatalf("accounting: %+v holes %d bad %d", s, res.Seq.Holes, res.BadPayloads)
	}
	if s.Latency.Count != s.Received || s.Latency.P50 <= 0 {
		t.Fatalf("latency: %+v", s.Latency)
	}
	if p := counters.Snapshot(); p.Received != s.Received || p.Published != res.Published {
		t.Fatalf("counters %+v vs result", p)
	}
}

func TestIdleReportsServerRefusal(t *testing.T) {
	_, url := startNATS(t, 5)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := Run(ctx, Options{
		Scenario: ScenarioIdle, Target: TargetNATS, URLs: []string{url},
		Conns: 12, Topics: 2, Duration: 10 * time.Millisecond, Concurrency: 4,
	}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Connect.Established != 5 || res.Connect.Failed != 7 {
		t.Fatalf("connect: %+v", res.Connect)
	}
	s := res.Summary()
	if s.Refusals != 7 || !strings.Contains(s.Verdict, "SERVER REFUSED") {
		t.Fatalf("refusals %d verdict %q failures %v", s.Refusals, s.Verdict, res.Connect.Failures)
	}
}

func TestRunBoundedByContext(t *testing.T) {
	_, url := startNATS(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _ = Run(ctx, Options{
		Scenario: ScenarioIdle, Target: TargetNATS, URLs: []string{url}, Conns: 3, Duration: time.Hour,
	}, nil, nil)
	if time.Since(start) > 10*time.Second {
		t.Fatal("run did not stop with its context")
	}
}

func TestOptionsValidate(t *testing.T) {
	bad := []Options{
		{Scenario: "nope", URLs: []string{"ws://x"}},
		{Scenario: ScenarioIdle, URLs: []string{"ws://x"}},
		{Scenario: ScenarioFanout, URLs: []string{"ws://x"}, Subscribers: 1},
		{Scenario: ScenarioCluster, URLs: []string{"ws://x"}, Subscribers: 1, Topics: 1, Publishers: 1, Rate: 1},
		{Scenario: ScenarioIdle, Conns: 1},
		{Scenario: ScenarioIdle, Conns: 1, URLs: []string{"ws://x"}, Target: "kafka"},
	}
	for i, o := range bad {
		if err := o.Validate(); err == nil {
			t.Errorf("case %d validated", i)
		}
	}
}
