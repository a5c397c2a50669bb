// Command revenprox-bench is the load generator and benchmark client of RevenProx. It speaks
// protocol v1 as any client would (and the NATS protocol over a NATS WebSocket listener for the
// peer baseline), runs the idle, fanout, connect and cluster scenarios, spreads work over
// worker processes when one process cannot hold enough sockets, and reports a table or JSON.
//
//	revenprox-bench idle    --url ws://127.0.0.1:8080/ws --conns 18000 --server-pid PID
//	revenprox-bench fanout  --url ws://127.0.0.1:8080/ws --subs 10000 --topics 100 --pubs 10 --rate 1000 --size 100
//	revenprox-bench connect --url ws://127.0.0.1:8080/ws --conns 20000 --tokens 2000 --concurrency 200
//	revenprox-bench cluster --url ws://127.0.0.1:8081/ws,ws://127.0.0.1:8082/ws,ws://127.0.0.1:8083/ws ...
//	revenprox-bench fanout  --target nats --url ws://127.0.0.1:4443 ...
//	revenprox-bench webhook --listen 127.0.0.1:9000
//	revenprox-bench report  --dir RESULTS --out docs/benchmarks.md
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/revenprox/revenprox/bench/loadgen"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: revenprox-bench idle|fanout|connect|cluster|webhook|report [flags]  (-h for flags)")
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) < 1 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "webhook":
		return webhookMain(args[1:], stderr)
	case "report":
		return reportMain(args[1:], stderr)
	case loadgen.ScenarioIdle, loadgen.ScenarioFanout, loadgen.ScenarioConnect, loadgen.ScenarioCluster:
		return scenarioMain(args[0], args[1:], stdout, stderr)
	}
	usage(stderr)
	return 2
}

type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

type cliFlags struct {
	o           loadgen.Options
	urls        listFlag
	pids        listFlag
	metrics     listFlag
	varz        listFlag
	workers     int
	perWorker   int
	worker      string
	jsonOut     bool
	out         string
	timeout     time.Duration
	noProgress  bool
	noMetrics   bool
	prof        loadgen.Profiler
	selfProfile string
}

func parseFlags(scenario string, args []string, stderr io.Writer) (*cliFlags, error) {
	f := &cliFlags{}
	o := &f.o
	o.Scenario = scenario
	fs := flag.NewFlagSet("revenprox-bench "+scenario, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Target, "target", loadgen.TargetRevenProx, "revenprox or nats")
	fs.Var(&f.urls, "url", "WebSocket URL(s), repeatable or comma-separated (revenprox: ws://host:port/ws)")
	fs.IntVar(&o.Conns, "conns", 1000, "idle, connect: connections")
	fs.IntVar(&o.Subscribers, "subs", 1000, "fanout, cluster: subscribers")
	fs.IntVar(&o.Topics, "topics", 10, "topics (idle: each connection subscribes to one; 0 for none)")
	fs.IntVar(&o.Publishers, "pubs", 10, "fanout, cluster: publishers")
	fs.Float64Var(&o.Rate, "rate", 100, "fanout, cluster: total publishes per second")
	fs.IntVar(&o.Size, "size", 100, "payload bytes")
	fs.IntVar(&o.Wildcard, "wildcard-every", 0, "every Nth subscriber subscribes to its group wildcard bench.gN.* (0: none)")
	fs.Int64Var(&o.Count, "count", 0, "cap on total publishes (0: rate x duration)")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "publishing (fanout), holding (idle), storm cap (connect)")
	fs.DurationVar(&o.Drain, "drain", 3*time.Second, "fanout: longest wait for in-flight deliveries")
	fs.DurationVar(&o.Settle, "settle", 0, "fanout, cluster: pause after subscribing, before publishing (cluster interest propagation)")
	fs.BoolVar(&o.Ramp, "ramp", false, "fanout, cluster: saturation search; steps of --duration from --rate, x --ramp-factor per step, stop at the first step with loss, drops or p99 > --ramp-p99")
	fs.Float64Var(&o.RampFactor, "ramp-factor", 1.5, "ramp: rate multiplier per step")
	fs.IntVar(&o.RampSteps, "ramp-steps", 8, "ramp: most steps")
	fs.DurationVar(&o.RampP99, "ramp-p99", 100*time.Millisecond, "ramp: a step passes only with p99 at most this")
	fs.StringVar(&o.PublishOn, "publish-on", "first", "cluster: publishers on the first node or on all")
	fs.IntVar(&o.Tokens, "tokens", 0, "distinct tokens bench-0..K-1 (0: --token or none)")
	fs.StringVar(&o.Token, "token", "", "static bearer token")
	fs.BoolVar(&o.Warmup, "warmup", true, "connect: one unmeasured connect per token first (warm auth cache)")
	fs.IntVar(&o.Concurrency, "concurrency", 200, "in-flight dials per process")
	fs.Float64Var(&o.ConnectRate, "connect-rate", 0, "new connections per second over the run (0: unlimited)")
	fs.IntVar(&o.SourceIPs, "source-ips", 250, "spread loopback connections over 127.0.0.2..N+1 (0: off)")
	fs.DurationVar(&o.HandshakeTimeout, "handshake-timeout", 10*time.Second, "dial + upgrade + first frame")
	fs.Var(&f.pids, "server-pid", "server PID(s) for RSS and CPU from /proc")
	fs.Var(&f.metrics, "metrics-url", "server /metrics URL(s) (default: derived from --url for revenprox)")
	fs.BoolVar(&f.noMetrics, "no-metrics", false, "do not scrape /metrics")
	fs.Var(&f.varz, "nats-varz", "NATS monitoring /varz URL(s) for slow consumers")
	fs.IntVar(&f.workers, "workers", 0, "worker processes (0: enough for --per-worker connections each)")
	fs.IntVar(&f.perWorker, "per-worker", 18000, "connections per worker process (each process is capped at 20,000 fds)")
	fs.StringVar(&f.worker, "worker", "", "internal: i/n, run as worker i of n")
	fs.BoolVar(&f.jsonOut, "json", false, "print JSON instead of the table")
	fs.StringVar(&f.out, "out", "", "also write the JSON result to this file")
	fs.DurationVar(&f.timeout, "timeout", 0, "hard overall timeout (0: duration + drain + 3m)")
	fs.BoolVar(&f.noProgress, "quiet", false, "no progress line on stderr")
	fs.StringVar(&f.prof.AdminURL, "admin-url", "", "server admin listener (http://host:port) for profiles (needs --profile)")
	fs.StringVar(&f.prof.Key, "admin-key", os.Getenv("REVENPROX_BENCH_ADMIN_KEY"), "admin.api_key for --admin-url (default $REVENPROX_BENCH_ADMIN_KEY)")
	fs.StringVar(&f.prof.Prefix, "profile", "", "write server profiles to PREFIX.w<window>.{cpu,heap}.pprof and .goroutine.txt (needs --admin-url)")
	fs.IntVar(&f.prof.CPUSeconds, "profile-seconds", 0, "CPU profile length per measured window (0: --duration, at most 30; idle: none)")
	fs.StringVar(&f.selfProfile, "self-cpuprofile", "", "write the generator's own CPU profile here (workers add .worker<i>)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	o.URLs = f.urls
	if len(o.URLs) == 0 {
		if o.Target == loadgen.TargetNATS {
			o.URLs = []string{"ws://127.0.0.1:4443"}
		} else {
			o.URLs = []string{"ws://127.0.0.1:8080/ws"}
		}
	}
	if f.timeout <= 0 {
		f.timeout = o.Duration + o.Drain + 3*time.Minute
	}
	if o.Scenario != loadgen.ScenarioConnect {
		o.Warmup = false
	}
	if o.Ramp {
		// Every step may drain; the default timeout grows with the steps.
		if f.timeout == o.Duration+o.Drain+3*time.Minute {
			f.timeout = time.Duration(max(o.RampSteps, 1))*(o.Duration+o.Drain+5*time.Second) + 3*time.Minute
		}
	}
	if (f.prof.AdminURL == "") != (f.prof.Prefix == "") {
		return nil, errors.New("--admin-url and --profile go together")
	}
	if f.prof.Prefix != "" {
		f.prof.Heap = true
		if f.prof.CPUSeconds == 0 && o.Scenario != loadgen.ScenarioIdle {
			f.prof.CPUSeconds = int(min(max(o.Duration, time.Second), 30*time.Second) / time.Second)
		}
	}
	return f, nil
}

// need is how many sockets the run holds at once.
func (f *cliFlags) need() int {
	switch f.o.Scenario {
	case loadgen.ScenarioIdle:
		return f.o.Conns
	case loadgen.ScenarioConnect:
		return f.o.Concurrency
	}
	return f.o.Subscribers + f.o.Publishers
}

func scenarioMain(scenario string, args []string, stdout, stderr io.Writer) int {
	f, err := parseFlags(scenario, args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "revenprox-bench:", err)
		return 2
	}
	if _, err := loadgen.RaiseFileLimit(); err != nil {
		fmt.Fprintln(stderr, "revenprox-bench: raising the file limit:", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	// Last resort if something refuses to stop: the run is bounded no matter what.
	watchdog := time.AfterFunc(f.timeout+20*time.Second, func() {
		fmt.Fprintln(stderr, "revenprox-bench: hard timeout exceeded, exiting")
		os.Exit(3)
	})
	defer watchdog.Stop()

	if f.selfProfile != "" {
		name := f.selfProfile
		if f.worker != "" {
			name += ".worker" + strings.ReplaceAll(f.worker, "/", "of")
		}
		if stopProf, err := startSelfProfile(name); err != nil {
			fmt.Fprintln(stderr, "revenprox-bench: self profile:", err)
		} else {
			defer stopProf()
		}
	}
	if f.worker != "" {
		return workerMain(ctx, f, stdout, stderr)
	}
	opts := f.o
	if err := opts.Validate(); err != nil {
		fmt.Fprintln(stderr, "revenprox-bench:", err)
		return 2
	}
	m := &loadgen.Measurer{VarzURLs: f.varz, GeneratorPIDs: []int{os.Getpid()}}
	if f.prof.Prefix != "" {
		m.Profiler = &f.prof
	}
	for _, p := range f.pids {
		pid, err := strconv.Atoi(p)
		if err != nil {
			fmt.Fprintln(stderr, "revenprox-bench: bad --server-pid", p)
			return 2
		}
		m.PIDs = append(m.PIDs, pid)
	}
	m.MetricsURLs = f.metrics
	if len(m.MetricsURLs) == 0 && !f.noMetrics && opts.Target == loadgen.TargetRevenProx {
		for _, u := range opts.URLs {
			m.MetricsURLs = append(m.MetricsURLs, metricsURL(u))
		}
	}
	workers := f.workers
	if workers <= 0 {
		workers = (f.need() + f.perWorker - 1) / f.perWorker
	}
	workers = max(workers, 1)
	m.Baseline()

	var res *loadgen.Result
	var stats *loadgen.ServerStats
	if workers == 1 {
		res, stats, err = runLocal(ctx, f, m, stderr)
	} else {
		res, stats, err = runWorkers(ctx, f, args, workers, m, stderr)
	}
	if res == nil {
		fmt.Fprintln(stderr, "revenprox-bench:", err)
		return 1
	}
	res.Server = stats
	if err != nil {
		res.Warnings = append(res.Warnings, "run ended early: "+err.Error())
	}
	out := struct {
		Result  *loadgen.Result `json:"result"`
		Summary loadgen.Summary `json:"summary"`
	}{res, res.Summary()}
	b, _ := json.MarshalIndent(out, "", "  ")
	if f.out != "" {
		if werr := os.WriteFile(f.out, append(b, '\n'), 0o644); werr != nil {
			fmt.Fprintln(stderr, "revenprox-bench:", werr)
		}
	}
	if f.jsonOut {
		fmt.Fprintln(stdout, string(b))
	} else {
		res.WriteTable(stdout)
	}
	if err != nil {
		return 1
	}
	return 0
}

// metricsURL turns ws://host:port/ws into http://host:port/metrics.
func metricsURL(ws string) string {
	u := strings.Replace(strings.Replace(ws, "wss://", "https://", 1), "ws://", "http://", 1)
	if i := strings.Index(u[min(len(u), 8):], "/"); i >= 0 {
		u = u[:8+i]
	}
	return u + "/metrics"
}

// localControl measures the server between the phases of an in-process run.
type localControl struct {
	m       *loadgen.Measurer
	stats   *loadgen.ServerStats
	p99     time.Duration
	stepped bool // a ramp: the last step's window is the run's
}

func (c *localControl) Ready(ctx context.Context) error { c.m.AtReady(ctx); return nil }
func (c *localControl) Done(ctx context.Context) error {
	if c.stats == nil || !c.stepped {
		c.stats = c.m.AtDone(ctx)
	}
	return nil
}

// Step closes a ramp step's window, judges the step and says whether to go on.
func (c *localControl) Step(ctx context.Context, st *loadgen.StepResult) (bool, error) {
	c.stats = c.m.AtDone(ctx)
	c.stepped = true
	st.Server = c.stats
	return st.Judge(c.p99).Pass, nil
}

func runLocal(ctx context.Context, f *cliFlags, m *loadgen.Measurer, stderr io.Writer) (*loadgen.Result, *loadgen.ServerStats, error) {
	counters := &loadgen.Counters{}
	ctl := &localControl{m: m, p99: f.o.RampP99}
	stopProgress := startProgress(f, stderr, counters.Snapshot)
	res, err := loadgen.Run(ctx, f.o, ctl, counters)
	stopProgress()
	if ctl.stats == nil {
		ctl.stats = m.AtDone(context.Background())
	}
	return res, ctl.stats, err
}

// startProgress prints one line per second until the returned func is called.
func startProgress(f *cliFlags, stderr io.Writer, sample func() loadgen.Progress) func() {
	if f.noProgress {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		start := time.Now()
		var prev loadgen.Progress
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			p := sample()
			fmt.Fprintf(stderr, "[%4.0fs] %s conns %d failed %d closed-by-server %d | published %d (+%d/s) | delivered %d (+%d/s)\n",
				time.Since(start).Seconds(), f.o.Scenario, p.Connected, p.Failed, p.Closed,
				p.Published, p.Published-prev.Published, p.Received, p.Received-prev.Received)
			prev = p
		}
	}()
	return func() { close(done); <-finished }
}

// startSelfProfile profiles this process into file until the returned func is called.
func startSelfProfile(file string) (func(), error) {
	fh, err := os.Create(file)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(fh); err != nil {
		fh.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); fh.Close() }, nil
}
