package loadgen

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Scenario names.
const (
	ScenarioIdle    = "idle"
	ScenarioFanout  = "fanout"
	ScenarioConnect = "connect"
	ScenarioCluster = "cluster"
)

// ErrOptions is returned for options that cannot describe a run.
var ErrOptions = errors.New("loadgen: bad options")

// Options describe one run. Counts are totals over all worker processes; Worker/Workers pick
// this process's share (connection and publisher i belong to worker i % Workers).
type Options struct {
	Scenario string   `json:"scenario"`
	Target   string   `json:"target"`
	URLs     []string `json:"urls"`

	Conns       int           `json:"conns,omitempty"`          // idle, connect: connections
	Subscribers int           `json:"subscribers,omitempty"`    // fanout, cluster
	Topics      int           `json:"topics,omitempty"`         // topics (idle: subscribe each connection to topic i%Topics; 0 none)
	Publishers  int           `json:"publishers,omitempty"`     // fanout, cluster
	Rate        float64       `json:"rate,omitempty"`           // total publishes per second
	Size        int           `json:"size,omitempty"`           // payload bytes
	Wildcard    int           `json:"wildcard_every,omitempty"` // every Nth subscriber uses a group wildcard
	Count       int64         `json:"count,omitempty"`          // cap on total publishes (0: Rate*Duration)
	Duration    time.Duration `json:"duration"`                 // publishing (fanout), holding (idle), cap (connect)
	Drain       time.Duration `json:"drain"`                    // fanout: max wait for in-flight deliveries
	PublishOn   string        `json:"publish_on,omitempty"`     // cluster: "first" or "all"
	// Settle is a pause after every subscription is confirmed and before the measured phase:
	// in a cluster, interest reaches the other nodes asynchronously.
	Settle time.Duration `json:"settle,omitempty"`
	// Ramp turns fanout/cluster into a saturation search: steps of Duration each, starting at
	// Rate and multiplied by RampFactor per step, at most RampSteps, stopping at the first step
	// that loses, drops, falls behind schedule or exceeds RampP99 (see ramp.go).
	Ramp       bool          `json:"ramp,omitempty"`
	RampFactor float64       `json:"ramp_factor,omitempty"`
	RampSteps  int           `json:"ramp_steps,omitempty"`
	RampP99    time.Duration `json:"ramp_p99,omitempty"`

	Tokens      int     `json:"tokens,omitempty"`       // connect: distinct tokens bench-0..K-1
	Token       string  `json:"-"`                      // static token for every connection
	Warmup      bool    `json:"warmup,omitempty"`       // connect: one unmeasured connect per token first
	Concurrency int     `json:"concurrency"`            // in-flight dials
	ConnectRate float64 `json:"connect_rate,omitempty"` // new connections per second per run (0: unlimited)

	SourceIPs        int           `json:"source_ips"`
	HandshakeTimeout time.Duration `json:"handshake_timeout"`
	Worker           int           `json:"-"`
	Workers          int           `json:"-"`
}

// Validate checks and defaults o.
func (o *Options) Validate() error {
	if o.Target == "" {
		o.Target = TargetRevenProx
	}
	if o.Target != TargetRevenProx && o.Target != TargetNATS {
		return fmt.Errorf("%w: target %q (want revenprox or nats)", ErrOptions, o.Target)
	}
	if len(o.URLs) == 0 {
		return fmt.Errorf("%w: no url", ErrOptions)
	}
	if o.Workers < 1 {
		o.Workers = 1
	}
	if o.Concurrency < 1 {
		o.Concurrency = 100
	}
	if o.Duration <= 0 {
		o.Duration = 10 * time.Second
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = 10 * time.Second
	}
	switch o.Scenario {
	case ScenarioIdle, ScenarioConnect:
		if o.Conns < 1 {
			return fmt.Errorf("%w: %s needs --conns", ErrOptions, o.Scenario)
		}
	case ScenarioFanout, ScenarioCluster:
		if o.Subscribers < 1 || o.Topics < 1 || o.Publishers < 1 || o.Rate <= 0 {
			return fmt.Errorf("%w: %s needs --subs, --topics, --pubs and --rate", ErrOptions, o.Scenario)
		}
		if o.Scenario == ScenarioCluster && len(o.URLs) < 2 {
			return fmt.Errorf("%w: cluster needs two or more urls", ErrOptions)
		}
		if o.PublishOn == "" {
			o.PublishOn = "first"
		}
		if o.Drain <= 0 {
			o.Drain = 3 * time.Second
		}
		if o.Ramp {
			if o.RampFactor == 0 {
				o.RampFactor = 1.5
			}
			if o.RampSteps == 0 {
				o.RampSteps = 8
			}
			if o.RampP99 <= 0 {
				o.RampP99 = 100 * time.Millisecond
			}
			if o.RampFactor <= 1 || o.RampSteps < 1 || o.RampSteps > 30 || o.Count > 0 {
				return fmt.Errorf("%w: --ramp needs --ramp-factor > 1, 1 <= --ramp-steps <= 30 and no --count", ErrOptions)
			}
		}
	default:
		return fmt.Errorf("%w: scenario %q", ErrOptions, o.Scenario)
	}
	return nil
}

// Control lets the caller measure the server between phases. Ready is called when every
// connection of this process is set up; the run starts its measured phase when Ready returns.
// Done is called when the measured phase is over, with every connection still open; the run
// closes its connections when Done returns.
type Control interface {
	Ready(ctx context.Context) error
	Done(ctx context.Context) error
}

// NopControl starts and ends phases immediately.
type NopControl struct{}

// Ready returns nil.
func (NopControl) Ready(context.Context) error { return nil }

// Done returns nil.
func (NopControl) Done(context.Context) error { return nil }

// Counters are live totals for the progress line; read them with Snapshot.
type Counters struct {
	Connected atomic.Int64
	Failed    atomic.Int64
	Closed    atomic.Int64
	Published atomic.Int64
	Received  atomic.Int64
}

// Progress is one sample of Counters.
type Progress struct {
	Connected int64 `json:"connected"`
	Failed    int64 `json:"failed"`
	Closed    int64 `json:"closed"`
	Published int64 `json:"published"`
	Received  int64 `json:"received"`
}

// Snapshot reads the counters.
func (c *Counters) Snapshot() Progress {
	return Progress{c.Connected.Load(), c.Failed.Load(), c.Closed.Load(), c.Published.Load(), c.Received.Load()}
}

// Add sums o into p.
func (p *Progress) Add(o Progress) {
	p.Connected += o.Connected
	p.Failed += o.Failed
	p.Closed += o.Closed
	p.Published += o.Published
	p.Received += o.Received
}

// TopicName is the name of topic t; topics come in groups of ten so that a wildcard
// `bench.g<g>.*` covers ten of them.
func TopicName(t int) string { return "bench.g" + strconv.Itoa(t/10) + ".t" + strconv.Itoa(t) }

// subscription returns the pattern subscriber i uses and the topic indexes it covers.
func (o *Options) subscription(i int) (string, []int) {
	t := i % o.Topics
	if o.Wildcard > 0 && i%o.Wildcard == 0 {
		g := t / 10
		var cover []int
		for x := g * 10; x < g*10+10 && x < o.Topics; x++ {
			cover = append(cover, x)
		}
		return "bench.g" + strconv.Itoa(g) + ".*", cover
	}
	return TopicName(t), []int{t}
}

func (o *Options) token(i int) string {
	if o.Tokens > 0 {
		return "bench-" + strconv.Itoa(i%o.Tokens)
	}
	return o.Token
}

func (o *Options) mine(n int) []int {
	var out []int
	for i := o.Worker; i < n; i += o.Workers {
		out = append(out, i)
	}
	return out
}

// run is the state of one Run.
type run struct {
	o        *Options
	ctl      Control
	c        *Counters
	dial     DialConfig
	mu       sync.Mutex // guards res maps and conns
	res      *Result
	conns    []*Conn
	readers  sync.WaitGroup
	connHist *ShardedHist
	closing  atomic.Bool
}

// Run executes the scenario described by o. It returns after every connection is closed and
// every goroutine it started has exited. counters may be nil.
func Run(ctx context.Context, o Options, ctl Control, counters *Counters) (*Result, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if ctl == nil {
		ctl = NopControl{}
	}
	if counters == nil {
		counters = &Counters{}
	}
	r := &run{
		o: &o, ctl: ctl, c: counters,
		dial:     DialConfig{Target: o.Target, SourceIPs: o.SourceIPs, HandshakeTimeout: o.HandshakeTimeout},
		res:      &Result{Scenario: o.Scenario, Target: o.Target, URLs: o.URLs, Workers: 1, Options: o},
		connHist: NewShardedHist(8),
	}
	var err error
	switch o.Scenario {
	case ScenarioIdle:
		err = r.idle(ctx)
	case ScenarioConnect:
		err = r.connectStorm(ctx)
	default:
		err = r.fanout(ctx)
	}
	r.closeAll()
	r.res.Connect.Latency = EncodeHist(r.connHist.Merged())
	return r.res, err
}

func (r *run) fail(reason string) {
	r.c.Failed.Add(1)
	r.mu.Lock()
	r.res.Connect.Failed++
	if r.res.Connect.Failures == nil {
		r.res.Connect.Failures = map[string]int64{}
	}
	r.res.Connect.Failures[reason]++
	r.mu.Unlock()
}

// dialMany dials the connections with the given global indexes, at most Concurrency at a
// time and at most ConnectRate per second (shared by all workers), and calls setup on each
// established connection. It stops early when ctx ends.
func (r *run) dialMany(ctx context.Context, indexes []int, url func(i int) string, setup func(i int, c *Conn) error, measured bool) {
	sem := make(chan struct{}, r.o.Concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	if measured && r.res.Connect.StartNanos == 0 {
		r.res.Connect.StartNanos = start.UnixNano()
	}
	perProc := r.o.ConnectRate / float64(r.o.Workers)
	for k, i := range indexes {
		if ctx.Err() != nil {
			break
		}
		if perProc > 0 {
			due := start.Add(time.Duration(float64(k) / perProc * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				select {
				case <-time.After(d):
				case <-ctx.Done():
				}
			}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			t0 := time.Now()
			if measured {
				r.mu.Lock()
				r.res.Connect.Attempted++
				r.mu.Unlock()
			}
			c, err := Dial(ctx, r.dial, url(i), i, r.o.token(i))
			if err == nil && setup != nil {
				if err = setup(i, c); err != nil {
					c.Close()
				}
			}
			if err != nil {
				if measured {
					r.fail(Reason(err))
				}
				return
			}
			if measured {
				r.connHist.Record(i, time.Since(t0).Microseconds())
				r.c.Connected.Add(1)
				r.mu.Lock()
				r.res.Connect.Established++
				r.mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	if measured {
		r.res.Connect.EndNanos = time.Now().UnixNano()
	}
}

// keep registers c and starts its reader; closes by the server are counted by reason.
func (r *run) keep(c *Conn, h Handler) {
	r.mu.Lock()
	r.conns = append(r.conns, c)
	r.mu.Unlock()
	r.readers.Add(1)
	go func() {
		defer r.readers.Done()
		err := c.ReadLoop(h)
		if r.closing.Load() {
			return
		}
		r.c.Closed.Add(1)
		r.mu.Lock()
		if r.res.ClosedByServer == nil {
			r.res.ClosedByServer = map[string]int64{}
		}
		r.res.ClosedByServer[Reason(err)]++
		r.mu.Unlock()
	}()
}

func (r *run) serverError(code string) {
	r.mu.Lock()
	if r.res.ServerErrors == nil {
		r.res.ServerErrors = map[string]int64{}
	}
	r.res.ServerErrors[code]++
	r.mu.Unlock()
}

// closeAll closes every kept connection and waits for their readers.
func (r *run) closeAll() {
	r.closing.Store(true)
	r.mu.Lock()
	conns := r.conns
	r.conns = nil
	r.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	r.readers.Wait()
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

func (r *run) idle(ctx context.Context) error {
	o := r.o
	r.dialMany(ctx, o.mine(o.Conns), func(i int) string { return o.URLs[i%len(o.URLs)] }, func(i int, c *Conn) error {
		if o.Topics > 0 {
			if err := c.Subscribe(ctx, TopicName(i%o.Topics), o.HandshakeTimeout); err != nil {
				return err
			}
		}
		r.keep(c, Handler{ServerError: r.serverError})
		return nil
	}, true)
	if err := r.ctl.Ready(ctx); err != nil {
		return err
	}
	sleepCtx(ctx, o.Duration)
	return r.ctl.Done(ctx)
}

func (r *run) connectStorm(ctx context.Context) error {
	o := r.o
	url := func(i int) string { return o.URLs[i%len(o.URLs)] }
	if o.Warmup && o.Tokens > 0 {
		r.dialMany(ctx, o.mine(o.Tokens), url, func(i int, c *Conn) error {
			r.mu.Lock()
			r.res.Warmup++
			r.mu.Unlock()
			c.Close()
			return nil
		}, false)
	}
	if err := r.ctl.Ready(ctx); err != nil {
		return err
	}
	stormCtx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	r.dialMany(stormCtx, o.mine(o.Conns), url, func(i int, c *Conn) error {
		c.Close()
		return nil
	}, true)
	return r.ctl.Done(ctx)
}
