package loadgen

import (
	"fmt"
	"io"
	"runtime"
	"sort"
	"strings"
	"text/tabwriter"
)

// ConnectStats describe the connection phase of a run.
type ConnectStats struct {
	Attempted   int64            `json:"attempted"`
	Established int64            `json:"established"`
	Failed      int64            `json:"failed"`
	Failures    map[string]int64 `json:"failures,omitempty"` // by Reason label
	StartNanos  int64            `json:"start_unix_ns"`
	EndNanos    int64            `json:"end_unix_ns"`
	// Latency is dial start to handshake done (welcome, or NATS PONG), in µs.
	Latency *Hist `json:"latency,omitempty"`
}

// ServerStats are read by the coordinator from /proc and /metrics of the server(s).
type ServerStats struct {
	PIDs           []int   `json:"pids,omitempty"`
	RSSBaselineKiB int64   `json:"rss_baseline_kib"`
	RSSKiB         int64   `json:"rss_kib"`
	CPUSeconds     float64 `json:"cpu_seconds"`
	// SysCPUSeconds is the kernel part (stime) of CPUSeconds: socket writes on loopback carry
	// the receiving side's TCP processing too.
	SysCPUSeconds float64 `json:"sys_cpu_seconds"`
	WindowSeconds float64 `json:"window_seconds"`
	// GeneratorCPUSeconds is the load generator's own CPU over the window (all its processes).
	GeneratorCPUSeconds float64 `json:"generator_cpu_seconds"`
	// MachineBusy is the fraction of all CPUs of the machine busy over the window (everyone's).
	MachineBusy float64 `json:"machine_busy"`
	// LoadAvg is /proc/loadavg's 1, 5 and 15 minute averages at the end of the window.
	LoadAvg string `json:"loadavg,omitempty"`
	// Dropped is the increase of revenprox_messages_dropped_total over the window (-1: not scraped).
	Dropped float64 `json:"dropped"`
	// Rejected is the increase of revenprox_connections_rejected_total by reason.
	Rejected map[string]float64 `json:"rejected,omitempty"`
	// SlowConsumers is the increase of a NATS server's slow_consumers (/varz), -1 when unknown.
	SlowConsumers int64 `json:"slow_consumers"`
	// MemoryBaseline and Memory are the Go runtime and process memory figures of /metrics
	// (summed over the servers) before connecting and at the end of the window.
	MemoryBaseline map[string]float64 `json:"memory_baseline,omitempty"`
	Memory         map[string]float64 `json:"memory,omitempty"`
	// Goroutines is the count of /debug/pprof/goroutine at the end (admin listener; -1: not read).
	Goroutines int64 `json:"goroutines,omitempty"`
	// Profiles are the files the profiler wrote (CPU per window, heap and goroutines at the end).
	Profiles []string `json:"profiles,omitempty"`
	Notes    []string `json:"notes,omitempty"`
}

// Result is what one worker (or the merge of all workers) measured.
type Result struct {
	Scenario string   `json:"scenario"`
	Target   string   `json:"target"`
	URLs     []string `json:"urls"`
	Workers  int      `json:"workers"`
	Options  Options  `json:"options"`

	Connect        ConnectStats     `json:"connect"`
	Warmup         int64            `json:"warmup_connects,omitempty"`
	ClosedByServer map[string]int64 `json:"closed_by_server,omitempty"`
	ServerErrors   map[string]int64 `json:"server_errors,omitempty"`

	Published          int64   `json:"published"`
	PublishFailures    int64   `json:"publish_failures"`
	PublishedPerTopic  []int64 `json:"published_per_topic,omitempty"`
	SubscribedPerTopic []int64 `json:"subscribed_per_topic,omitempty"`
	BadPayloads        int64   `json:"bad_payloads"`

	Seq           SeqCounts `json:"seq"`
	Latency       *Hist     `json:"latency,omitempty"`
	LatencyLocal  *Hist     `json:"latency_local,omitempty"`
	LatencyRemote *Hist     `json:"latency_remote,omitempty"`

	FirstSendNanos int64 `json:"first_send_unix_ns"`
	LastSendNanos  int64 `json:"last_send_unix_ns"`
	LastRecvNanos  int64 `json:"last_recv_unix_ns"`

	// Steps are the ramp steps that ran (ramp runs only).
	Steps []*StepResult `json:"steps,omitempty"`

	Server   *ServerStats `json:"server,omitempty"`
	Warnings []string     `json:"warnings,omitempty"`
}

func addMap(dst *map[string]int64, src map[string]int64) {
	for k, v := range src {
		if *dst == nil {
			*dst = make(map[string]int64)
		}
		(*dst)[k] += v
	}
}

func addSlice(a, b []int64) []int64 {
	if len(b) > len(a) {
		a, b = b, a
	}
	out := append([]int64(nil), a...)
	for i, v := range b {
		out[i] += v
	}
	return out
}

func minNonZero(a, b int64) int64 {
	if a == 0 || (b != 0 && b < a) {
		return b
	}
	return a
}

func maxInt64(a, b int64) int64 {
	if b > a {
		return b
	}
	return a
}

// Merge folds the result of another worker of the same run into r.
func (r *Result) Merge(o *Result) {
	if r.Scenario == "" {
		r.Scenario, r.Target, r.URLs, r.Options = o.Scenario, o.Target, o.URLs, o.Options
	}
	r.Workers += max(o.Workers, 1)
	c := &r.Connect
	c.Attempted += o.Connect.Attempted
	c.Established += o.Connect.Established
	c.Failed += o.Connect.Failed
	addMap(&c.Failures, o.Connect.Failures)
	c.StartNanos = minNonZero(c.StartNanos, o.Connect.StartNanos)
	c.EndNanos = maxInt64(c.EndNanos, o.Connect.EndNanos)
	c.Latency = MergeHist(c.Latency, o.Connect.Latency)
	r.Warmup += o.Warmup
	addMap(&r.ClosedByServer, o.ClosedByServer)
	addMap(&r.ServerErrors, o.ServerErrors)
	r.Published += o.Published
	r.PublishFailures += o.PublishFailures
	r.PublishedPerTopic = addSlice(r.PublishedPerTopic, o.PublishedPerTopic)
	r.SubscribedPerTopic = addSlice(r.SubscribedPerTopic, o.SubscribedPerTopic)
	r.BadPayloads += o.BadPayloads
	r.Seq.Add(o.Seq)
	r.Latency = MergeHist(r.Latency, o.Latency)
	r.LatencyLocal = MergeHist(r.LatencyLocal, o.LatencyLocal)
	r.LatencyRemote = MergeHist(r.LatencyRemote, o.LatencyRemote)
	r.FirstSendNanos = minNonZero(r.FirstSendNanos, o.FirstSendNanos)
	r.LastSendNanos = maxInt64(r.LastSendNanos, o.LastSendNanos)
	r.LastRecvNanos = maxInt64(r.LastRecvNanos, o.LastRecvNanos)
	r.Warnings = append(r.Warnings, o.Warnings...)
	for i, st := range o.Steps {
		if i >= len(r.Steps) {
			r.Steps = append(r.Steps, &StepResult{})
		}
		r.Steps[i].Merge(st)
	}
}

// Summary holds the figures derived from a Result.
type Summary struct {
	ConnectPerSec    float64     `json:"connect_per_s"`
	ConnectLatency   Percentiles `json:"connect_latency"`
	Refusals         int64       `json:"server_refusals"`
	Expected         int64       `json:"expected_deliveries"`
	Received         int64       `json:"received_deliveries"`
	Lost             int64       `json:"lost"`
	Duplicates       int64       `json:"duplicates"`
	Reordered        int64       `json:"reordered"`
	PublishPerSec    float64     `json:"publish_per_s"`
	DeliveriesPerSec float64     `json:"deliveries_per_s"`
	Latency          Percentiles `json:"latency"`
	LatencyLocal     Percentiles `json:"latency_local"`
	LatencyRemote    Percentiles `json:"latency_remote"`
	RSSPerConnKiB    float64     `json:"server_rss_per_conn_kib"`
	CPUPerDelivery   float64     `json:"server_cpu_us_per_delivery"`
	CPUPerConnect    float64     `json:"server_cpu_us_per_connect"`
	ServerDropped    float64     `json:"server_dropped"`
	Verdict          string      `json:"verdict,omitempty"`
	// Ramp is the saturation search outcome (ramp runs only).
	Ramp *RampSummary `json:"ramp,omitempty"`
}

// Expected is the number of deliveries the publishes should have produced: for every topic,
// publishes times the subscriptions covering it.
func (r *Result) Expected() int64 {
	var n int64
	for t, p := range r.PublishedPerTopic {
		if t < len(r.SubscribedPerTopic) {
			n += p * r.SubscribedPerTopic[t]
		}
	}
	return n
}

// Summary derives the reported figures.
func (r *Result) Summary() Summary {
	s := Summary{
		ConnectLatency: Summarize(r.Connect.Latency.Decode()),
		Expected:       r.Expected(),
		Received:       r.Seq.Received,
		Duplicates:     r.Seq.Duplicates,
		Reordered:      r.Seq.Reordered,
		Latency:        Summarize(r.Latency.Decode()),
	}
	if r.LatencyLocal != nil {
		s.LatencyLocal = Summarize(r.LatencyLocal.Decode())
		s.LatencyRemote = Summarize(r.LatencyRemote.Decode())
	}
	if d := r.Connect.EndNanos - r.Connect.StartNanos; d > 0 {
		s.ConnectPerSec = float64(r.Connect.Established) / (float64(d) / 1e9)
	}
	for k, v := range r.Connect.Failures {
		if ServerRefusal(k) {
			s.Refusals += v
		}
	}
	for k, v := range r.ClosedByServer {
		if ServerRefusal(k) {
			s.Refusals += v
		}
	}
	if s.Expected > 0 {
		s.Lost = max(s.Expected-r.Seq.Unique, 0)
	}
	if d := r.LastSendNanos - r.FirstSendNanos; d > 0 {
		s.PublishPerSec = float64(r.Published) / (float64(d) / 1e9)
	}
	if d := r.LastRecvNanos - r.FirstSendNanos; d > 0 {
		s.DeliveriesPerSec = float64(r.Seq.Received) / (float64(d) / 1e9)
	}
	if sv := r.Server; sv != nil {
		s.ServerDropped = sv.Dropped
		if r.Connect.Established > 0 && sv.RSSKiB > 0 {
			s.RSSPerConnKiB = float64(sv.RSSKiB-sv.RSSBaselineKiB) / float64(r.Connect.Established)
		}
		if r.Seq.Received > 0 {
			s.CPUPerDelivery = sv.CPUSeconds * 1e6 / float64(r.Seq.Received)
		}
		if len(r.Steps) > 0 { // a ramp: the server was measured step by step
			var cpu float64
			var recv int64
			for _, st := range r.Steps {
				if st.Server != nil {
					cpu += st.Server.CPUSeconds
					recv += st.Received
				}
			}
			s.CPUPerDelivery = 0
			if recv > 0 {
				s.CPUPerDelivery = cpu * 1e6 / float64(recv)
			}
		}
		if r.Scenario == "connect" && r.Connect.Established > 0 {
			s.CPUPerConnect = sv.CPUSeconds * 1e6 / float64(r.Connect.Established)
		}
	}
	s.Ramp = r.Ramp()
	s.Verdict = r.verdict(s)
	return s
}

// verdict says plainly when the server side refused, shed or dropped.
func (r *Result) verdict(s Summary) string {
	var parts []string
	if s.Refusals > 0 {
		parts = append(parts, fmt.Sprintf("SERVER REFUSED/SHED %d connections (%s)", s.Refusals, refusalList(r)))
	}
	if r.Server != nil {
		for k, v := range r.Server.Rejected {
			if v > 0 {
				parts = append(parts, fmt.Sprintf("server counted %.0f rejections (%s)", v, k))
			}
		}
		if r.Server.Dropped > 0 {
			parts = append(parts, fmt.Sprintf("server dropped %.0f messages", r.Server.Dropped))
		}
		if r.Server.SlowConsumers > 0 {
			parts = append(parts, fmt.Sprintf("server flagged %d slow consumers", r.Server.SlowConsumers))
		}
	}
	if rs := s.Ramp; rs != nil {
		// In a ramp the failing step is the expected end; its losses and drops are its verdict.
		if rs.Sustained != nil {
			parts = append(parts, fmt.Sprintf("ramp sustained %.0f publishes/s = %.0f deliveries/s (p99 %s)",
				rs.Sustained.PublishPerSec, rs.Sustained.DeliveriesPerSec, us(rs.Sustained.Latency.P99)))
		} else {
			parts = append(parts, "ramp: no step passed")
		}
		parts = append(parts, "stop: "+rs.Stop)
		return strings.Join(parts, "; ")
	}
	if s.Lost > 0 {
		parts = append(parts, fmt.Sprintf("%d deliveries lost", s.Lost))
	}
	if len(parts) == 0 {
		return "ok"
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

func refusalList(r *Result) string {
	m := map[string]int64{}
	for k, v := range r.Connect.Failures {
		if ServerRefusal(k) {
			m[k] += v
		}
	}
	for k, v := range r.ClosedByServer {
		if ServerRefusal(k) {
			m[k] += v
		}
	}
	return mapString(m)
}

func mapString(m map[string]int64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s=%d", k, m[k])
	}
	return b.String()
}

func us(v int64) string {
	switch {
	case v >= 10_000_000:
		return fmt.Sprintf("%.1fs", float64(v)/1e6)
	case v >= 10_000:
		return fmt.Sprintf("%.1fms", float64(v)/1e3)
	}
	return fmt.Sprintf("%dµs", v)
}

func pctRow(p Percentiles) string {
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (n=%d)", us(p.P50), us(p.P90), us(p.P99), us(p.P999), us(p.Max), p.Count)
}

// WriteTable prints the human summary.
func (r *Result) WriteTable(w io.Writer) {
	s := r.Summary()
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "scenario\t%s (target %s, %d worker process(es))\n", r.Scenario, r.Target, max(r.Workers, 1))
	fmt.Fprintf(tw, "urls\t%s\n", strings.Join(r.URLs, " "))
	fmt.Fprintf(tw, "connections\t%d established / %d attempted, %d failed\n", r.Connect.Established, r.Connect.Attempted, r.Connect.Failed)
	if len(r.Connect.Failures) > 0 {
		fmt.Fprintf(tw, "connect failures\t%s\n", mapString(r.Connect.Failures))
	}
	if len(r.ClosedByServer) > 0 {
		fmt.Fprintf(tw, "closed by server\t%s\n", mapString(r.ClosedByServer))
	}
	fmt.Fprintf(tw, "connect rate\t%.0f/s\n", s.ConnectPerSec)
	fmt.Fprintf(tw, "connect latency\t%s\n", pctRow(s.ConnectLatency))
	if r.Warmup > 0 {
		fmt.Fprintf(tw, "warm-up connects\t%d (not measured)\n", r.Warmup)
	}
	if r.Scenario == "fanout" || r.Scenario == "cluster" {
		fmt.Fprintf(tw, "published\t%d (%.0f/s), %d publish failures\n", r.Published, s.PublishPerSec, r.PublishFailures)
		fmt.Fprintf(tw, "deliveries\t%d received / %d expected, %d lost, %d duplicates, %d reordered, %d holes\n",
			s.Received, s.Expected, s.Lost, s.Duplicates, s.Reordered, r.Seq.Holes)
		fmt.Fprintf(tw, "deliveries/s\t%.0f\n", s.DeliveriesPerSec)
		fmt.Fprintf(tw, "latency\t%s\n", pctRow(s.Latency))
		if r.LatencyLocal != nil {
			fmt.Fprintf(tw, "latency same node\t%s\n", pctRow(s.LatencyLocal))
			fmt.Fprintf(tw, "latency cross node\t%s\n", pctRow(s.LatencyRemote))
		}
	}
	if rs := s.Ramp; rs != nil {
		for _, st := range rs.Steps {
			mark := "pass"
			if !st.Pass {
				mark = "FAIL: " + st.Why
			}
			fmt.Fprintf(tw, "ramp step %d\t%.0f pub/s target, %.0f pub/s sent, %.0f deliveries/s, p99 %s, %.2f µs CPU per delivery (%.0f%% kernel), %.2f server cores, lost %d: %s\n",
				st.Step, st.Rate, st.PublishPerSec, st.DeliveriesPerSec, us(st.Latency.P99), st.CPUPerDelivery, 100*st.KernelShare, st.ServerCPUCores, st.Lost, mark)
		}
		if sus := rs.Sustained; sus != nil {
			fmt.Fprintf(tw, "sustained\t%.0f publishes/s = %.0f deliveries/s, p99 %s, %.2f µs server CPU per delivery (step %d)\n",
				sus.PublishPerSec, sus.DeliveriesPerSec, us(sus.Latency.P99), sus.CPUPerDelivery, sus.Step)
		}
		fmt.Fprintf(tw, "ramp stop\t%s\n", rs.Stop)
	}
	if len(r.ServerErrors) > 0 {
		fmt.Fprintf(tw, "server error frames\t%s\n", mapString(r.ServerErrors))
	}
	if r.BadPayloads > 0 {
		fmt.Fprintf(tw, "bad payloads\t%d\n", r.BadPayloads)
	}
	if sv := r.Server; sv != nil {
		fmt.Fprintf(tw, "server pids\t%v\n", sv.PIDs)
		if sv.RSSKiB > 0 {
			fmt.Fprintf(tw, "server RSS\t%d KiB (baseline %d KiB) = %.2f KiB per connection\n", sv.RSSKiB, sv.RSSBaselineKiB, s.RSSPerConnKiB)
		}
		fmt.Fprintf(tw, "server CPU\t%.2f s over %.1f s", sv.CPUSeconds, sv.WindowSeconds)
		if s.CPUPerDelivery > 0 {
			fmt.Fprintf(tw, " = %.2f µs per delivery", s.CPUPerDelivery)
		}
		if s.CPUPerConnect > 0 {
			fmt.Fprintf(tw, " = %.1f µs per connect", s.CPUPerConnect)
		}
		fmt.Fprintf(tw, " (kernel %.0f%%)", 100*sv.SysCPUSeconds/max(sv.CPUSeconds, 1e-9))
		fmt.Fprintln(tw)
		if sv.WindowSeconds > 0 {
			fmt.Fprintf(tw, "CPU split\tserver %.2f cores, generator %.2f cores, machine %.0f%% busy (all processes, %d CPUs); load average %s\n",
				sv.CPUSeconds/sv.WindowSeconds, sv.GeneratorCPUSeconds/sv.WindowSeconds, 100*sv.MachineBusy, runtime.NumCPU(), sv.LoadAvg)
		}
		if sv.Dropped >= 0 {
			fmt.Fprintf(tw, "server drops\t%.0f (revenprox_messages_dropped_total)\n", sv.Dropped)
		}
		if sv.SlowConsumers >= 0 {
			fmt.Fprintf(tw, "server slow consumers\t%d\n", sv.SlowConsumers)
		}
		if mem, base := sv.Memory, sv.MemoryBaseline; len(mem) > 0 && r.Connect.Established > 0 {
			per := func(k string) float64 { return (mem[k] - base[k]) / 1024 / float64(r.Connect.Established) }
			fmt.Fprintf(tw, "server memory per connection\tRSS %.2f KiB = heap in use %.2f (live %.2f) + stacks %.2f + spans %.2f KiB; heap idle %.2f KiB, released %.2f KiB (go_memstats deltas)\n",
				per("process_resident_memory_bytes"), per("go_memstats_heap_inuse_bytes"), per("go_memstats_heap_alloc_bytes"),
				per("go_memstats_stack_inuse_bytes"), per("go_memstats_mspan_inuse_bytes"), per("go_memstats_heap_idle_bytes"), per("go_memstats_heap_released_bytes"))
			fmt.Fprintf(tw, "server goroutines\t%.0f (baseline %.0f)\n", mem["go_goroutines"], base["go_goroutines"])
		}
		for _, p := range sv.Profiles {
			fmt.Fprintf(tw, "profile\t%s\n", p)
		}
		for _, n := range sv.Notes {
			fmt.Fprintf(tw, "note\t%s\n", n)
		}
	}
	for _, wmsg := range r.Warnings {
		fmt.Fprintf(tw, "warning\t%s\n", wmsg)
	}
	fmt.Fprintf(tw, "verdict\t%s\n", s.Verdict)
	tw.Flush()
}
