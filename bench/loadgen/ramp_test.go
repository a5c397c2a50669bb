package loadgen

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/pprof"
	"os"
	"strings"
	"testing"
	"time"
)

// stepWith builds a step of rate r that published n per topic to subs per topic, received
// recv deliveries with latency lat µs each, sending at exactly the target rate.
func stepWith(r float64, n, subs, recv int64, lat int64) *StepResult {
	h := NewHist()
	for i := int64(0); i < recv; i++ {
		recordMicros(h, lat)
	}
	pub := n * 2
	span := int64(float64(pub-1) / r * 1e9)
	return &StepResult{
		Step: 1, Rate: r, Published: pub,
		PublishedPerTopic: []int64{n, n}, SubscribedPerTopic: []int64{subs, subs},
		Received: recv, Latency: EncodeHist(h),
		FirstSendNanos: 1e9, LastSendNanos: 1e9 + span, LastRecvNanos: 1e9 + span + lat*1000,
		Server: &ServerStats{CPUSeconds: 0.5, SysCPUSeconds: 0.25, WindowSeconds: 1, Dropped: 0},
	}
}

func TestStepJudgePassAndEachFailure(t *testing.T) {
	ok := stepWith(100, 50, 3, 300, 2000).Judge(0)
	if !ok.Pass || ok.Why != "" || ok.Expected != 300 || ok.Lost != 0 {
		t.Fatalf("passing step judged %+v", ok)
	}
	if ok.CPUPerDelivery < 1666 || ok.CPUPerDelivery > 1667 || ok.KernelShare != 0.5 || ok.ServerCPUCores != 0.5 {
		t.Fatalf("server figures %+v", ok)
	}
	if ok.PublishPerSec < 99 || ok.PublishPerSec > 101 {
		t.Fatalf("publish rate %v", ok.PublishPerSec)
	}
	cases := map[string]*StepResult{
		"deliveries missing": stepWith(100, 50, 3, 299, 2000),
		"p99 ":               stepWith(100, 50, 3, 300, 150_000),
	}
	behind := stepWith(100, 50, 3, 300, 2000)
	behind.Rate = 200 // sent at 100/s against a target of 200/s
	cases["behind schedule (100/s of 200/s)"] = behind
	dropped := stepWith(100, 50, 3, 300, 2000)
	dropped.Server.Dropped = 4
	cases["server dropped 4"] = dropped
	closed := stepWith(100, 50, 3, 300, 2000)
	closed.ClosedByServer = 2
	cases["server closed 2"] = closed
	for want, st := range cases {
		j := st.Judge(100 * time.Millisecond)
		if j.Pass || !strings.Contains(j.Why, want) {
			t.Errorf("%s: judged %+v", want, j)
		}
	}
	// A looser p99 bound lets the slow step pass.
	if j := stepWith(100, 50, 3, 300, 150_000).Judge(time.Second); !j.Pass {
		t.Errorf("p99 bound ignored: %+v", j)
	}
}

func TestRampSummaryStopsAtFirstFailure(t *testing.T) {
	a, b, c := stepWith(100, 50, 3, 300, 2000), stepWith(150, 75, 3, 449, 2000), stepWith(225, 100, 3, 600, 2000)
	b.Step, c.Step = 2, 3
	r := &Result{Options: Options{RampP99: 100 * time.Millisecond}, Steps: []*StepResult{a, b, c}}
	rs := r.Ramp()
	if len(rs.Steps) != 2 || rs.Sustained == nil || rs.Sustained.Step != 1 || !strings.Contains(rs.Stop, "step 2") {
		t.Fatalf("ramp %+v", rs)
	}
	if v := r.Summary().Verdict; !strings.Contains(v, "ramp sustained") || !strings.Contains(v, "stop: step 2") {
		t.Fatalf("verdict %q", v)
	}
	// Merging two workers' halves of a step sums them.
	m := &Result{}
	m.Merge(&Result{Steps: []*StepResult{a}})
	m.Merge(&Result{Steps: []*StepResult{a}})
	if m.Steps[0].Received != 600 || m.Steps[0].Published != 200 || m.Steps[0].SubscribedPerTopic[0] != 6 {
		t.Fatalf("merged step %+v", m.Steps[0])
	}
	if (&Result{}).Ramp() != nil {
		t.Fatal("a run without steps has a ramp")
	}
}

func TestRampAgainstRealNATS(t *testing.T) {
	_, url := startNATS(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctl := &recordingControl{}
	o := Options{
		Scenario: ScenarioFanout, Target: TargetNATS, URLs: []string{url},
		Subscribers: 20, Topics: 5, Publishers: 2, Rate: 40, Size: 100,
		Duration: 500 * time.Millisecond, Drain: 2 * time.Second, Concurrency: 10,
		Ramp: true, RampFactor: 2, RampSteps: 3, RampP99: 5 * time.Second,
	}
	res, err := Run(ctx, o, ctl, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Without a StepControl the run judges locally; every step passes at these rates.
	if len(res.Steps) != 3 || ctl.ready != 3 || ctl.done != 1 {
		t.Fatalf("steps %d ready %d done %d", len(res.Steps), ctl.ready, ctl.done)
	}
	var published, received int64
	for k, st := range res.Steps {
		if st.Rate != 40*float64(int(1)<<k) || st.Step != k+1 {
			t.Errorf("step %d rate %v", st.Step, st.Rate)
		}
		published += st.Published
		received += st.Received
	}
	s := res.Summary()
	if published != res.Published || received != s.Received || s.Lost != 0 || s.Duplicates != 0 || res.Seq.Reordered != 0 {
		t.Fatalf("steps published %d received %d vs run %+v", published, received, s)
	}
	if s.Ramp == nil || s.Ramp.Sustained == nil || s.Ramp.Sustained.Step != 3 || !strings.Contains(s.Ramp.Stop, "every step passed") {
		t.Fatalf("ramp %+v", s.Ramp)
	}
	if want := int64(40*0.5 + 80*0.5 + 160*0.5); res.Published != want {
		t.Fatalf("published %d want %d", res.Published, want)
	}
}

// adminServer serves net/http/pprof behind a Bearer key, as RevenProx's admin listener does.
func adminServer(t *testing.T, key string) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+key {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestMeasurerProfilesEachWindow(t *testing.T) {
	srv := adminServer(t, "k")
	dir := t.TempDir()
	p := &Profiler{AdminURL: srv.URL, Key: "k", Prefix: dir + "/run", CPUSeconds: 1, Heap: true}
	m := &Measurer{PIDs: []int{os.Getpid()}, GeneratorPIDs: []int{os.Getpid()}, Profiler: p}
	m.Baseline()
	for w := 1; w <= 2; w++ {
		m.AtReady(context.Background())
		st := m.AtDone(context.Background())
		if len(st.Notes) != 0 || st.Goroutines < 1 || st.MachineBusy < 0 || st.MachineBusy > 1 || st.LoadAvg == "" {
			t.Fatalf("window %d: %+v", w, st)
		}
		for _, f := range []string{".cpu.pprof", ".heap.pprof", ".goroutine.txt"} {
			name := dir + "/run.w" + string(rune('0'+w)) + f
			if fi, err := os.Stat(name); err != nil || fi.Size() == 0 {
				t.Fatalf("window %d: %s: %v", w, name, err)
			}
		}
	}
	// A wrong key is reported, not fatal.
	bad := &Measurer{Profiler: &Profiler{AdminURL: srv.URL, Key: "wrong", Prefix: dir + "/bad", Heap: true}}
	bad.Baseline()
	bad.AtReady(context.Background())
	if st := bad.AtDone(context.Background()); len(st.Notes) == 0 || !strings.Contains(strings.Join(st.Notes, " "), "HTTP 401") || st.Goroutines != -1 {
		t.Fatalf("wrong key: %+v", st)
	}
}
