package loadgen

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"
)

// Ramp (saturation search): the fanout and cluster scenarios can publish in steps of rising
// rate over the same connections instead of at one fixed rate. Each step publishes at its rate
// for Duration, waits for its deliveries, and is judged: it passes when nothing was lost, the
// server dropped and closed nothing, the publishers kept to their schedule and the step's p99 is
// within RampP99. The ramp stops at the first step that fails (or after RampSteps steps); the
// last passing step is the rate the system sustains.

// StepResult is what one ramp step measured in one process (or merged over all workers).
type StepResult struct {
	Step int `json:"step"`
	// Rate is the step's target total publishes per second.
	Rate               float64 `json:"rate"`
	Published          int64   `json:"published"`
	PublishFailures    int64   `json:"publish_failures"`
	PublishedPerTopic  []int64 `json:"published_per_topic,omitempty"`
	SubscribedPerTopic []int64 `json:"subscribed_per_topic,omitempty"`
	// Received counts deliveries that arrived between the step's start and the end of its drain.
	Received int64 `json:"received"`
	// ClosedByServer counts connections the server closed during the step.
	ClosedByServer int64 `json:"closed_by_server"`
	Latency        *Hist `json:"latency,omitempty"`
	FirstSendNanos int64 `json:"first_send_unix_ns"`
	LastSendNanos  int64 `json:"last_send_unix_ns"`
	LastRecvNanos  int64 `json:"last_recv_unix_ns"`
	// Server is measured by the coordinator over the step's window (start to drained).
	Server *ServerStats `json:"server,omitempty"`
}

// Merge folds the same step of another worker into s.
func (s *StepResult) Merge(o *StepResult) {
	if s.Rate == 0 {
		s.Step, s.Rate = o.Step, o.Rate
	}
	s.Published += o.Published
	s.PublishFailures += o.PublishFailures
	s.PublishedPerTopic = addSlice(s.PublishedPerTopic, o.PublishedPerTopic)
	s.SubscribedPerTopic = addSlice(s.SubscribedPerTopic, o.SubscribedPerTopic)
	s.Received += o.Received
	s.ClosedByServer += o.ClosedByServer
	s.Latency = MergeHist(s.Latency, o.Latency)
	s.FirstSendNanos = minNonZero(s.FirstSendNanos, o.FirstSendNanos)
	s.LastSendNanos = maxInt64(s.LastSendNanos, o.LastSendNanos)
	s.LastRecvNanos = maxInt64(s.LastRecvNanos, o.LastRecvNanos)
}

// StepSummary is the judged figures of one step.
type StepSummary struct {
	Step             int         `json:"step"`
	Rate             float64     `json:"target_publish_per_s"`
	PublishPerSec    float64     `json:"publish_per_s"`
	DeliveriesPerSec float64     `json:"deliveries_per_s"`
	Expected         int64       `json:"expected_deliveries"`
	Received         int64       `json:"received_deliveries"`
	Lost             int64       `json:"lost"`
	Latency          Percentiles `json:"latency"`
	CPUPerDelivery   float64     `json:"server_cpu_us_per_delivery"`
	ServerCPUCores   float64     `json:"server_cpu_cores"`
	// KernelShare is the kernel (stime) part of the server's CPU in the step.
	KernelShare   float64 `json:"server_kernel_share"`
	ServerDropped float64 `json:"server_dropped"`
	Pass          bool    `json:"pass"`
	// Why lists the reasons a step failed ("" when it passed).
	Why string `json:"why,omitempty"`
}

// scheduleSlack is how far below its target rate a step's publishers may fall and still pass.
const scheduleSlack = 0.9

// Judge derives the step's figures and decides whether the step passed; p99Limit is the
// latency bound (0: 100 ms).
func (s *StepResult) Judge(p99Limit time.Duration) StepSummary {
	if p99Limit <= 0 {
		p99Limit = 100 * time.Millisecond
	}
	out := StepSummary{Step: s.Step, Rate: s.Rate, Received: s.Received, Latency: Summarize(s.Latency.Decode())}
	for t, p := range s.PublishedPerTopic {
		if t < len(s.SubscribedPerTopic) {
			out.Expected += p * s.SubscribedPerTopic[t]
		}
	}
	out.Lost = max(out.Expected-s.Received, 0)
	if d := s.LastSendNanos - s.FirstSendNanos; d > 0 && s.Published > 1 {
		// n sends span n-1 intervals.
		out.PublishPerSec = float64(s.Published-1) / (float64(d) / 1e9)
	}
	if d := s.LastRecvNanos - s.FirstSendNanos; d > 0 {
		out.DeliveriesPerSec = float64(s.Received) / (float64(d) / 1e9)
	}
	out.ServerDropped = -1
	if sv := s.Server; sv != nil {
		out.ServerDropped = sv.Dropped
		if s.Received > 0 {
			out.CPUPerDelivery = sv.CPUSeconds * 1e6 / float64(s.Received)
		}
		if sv.WindowSeconds > 0 {
			out.ServerCPUCores = sv.CPUSeconds / sv.WindowSeconds
		}
		if sv.CPUSeconds > 0 {
			out.KernelShare = sv.SysCPUSeconds / sv.CPUSeconds
		}
	}
	var why []string
	if out.Lost > 0 {
		why = append(why, fmt.Sprintf("%d of %d deliveries missing", out.Lost, out.Expected))
	}
	if out.Expected == 0 {
		why = append(why, "nothing published")
	}
	if p99 := time.Duration(out.Latency.P99) * time.Microsecond; p99 > p99Limit {
		why = append(why, fmt.Sprintf("p99 %v > %v", p99.Round(time.Millisecond), p99Limit))
	}
	if out.ServerDropped > 0 {
		why = append(why, fmt.Sprintf("server dropped %.0f", out.ServerDropped))
	}
	if s.ClosedByServer > 0 {
		why = append(why, fmt.Sprintf("server closed %d connections", s.ClosedByServer))
	}
	if s.PublishFailures > 0 {
		why = append(why, fmt.Sprintf("%d publish failures", s.PublishFailures))
	}
	if out.PublishPerSec < scheduleSlack*s.Rate {
		why = append(why, fmt.Sprintf("publishers behind schedule (%.0f/s of %.0f/s)", out.PublishPerSec, s.Rate))
	}
	out.Pass = len(why) == 0
	out.Why = strings.Join(why, "; ")
	return out
}

// RampSummary is the outcome of a ramp: every step judged, and the last passing one.
type RampSummary struct {
	Steps []StepSummary `json:"steps"`
	// Sustained is the last passing step before the first failing one (nil: none passed).
	Sustained *StepSummary `json:"sustained,omitempty"`
	// Stop says why the ramp ended.
	Stop string `json:"stop"`
}

// Ramp judges the steps of r (nil when r is not a ramp run).
func (r *Result) Ramp() *RampSummary {
	if len(r.Steps) == 0 {
		return nil
	}
	rs := &RampSummary{}
	for _, st := range r.Steps {
		ss := st.Judge(r.Options.RampP99)
		rs.Steps = append(rs.Steps, ss)
		if !ss.Pass {
			rs.Stop = fmt.Sprintf("step %d at %.0f publishes/s failed: %s", ss.Step, ss.Rate, ss.Why)
			break
		}
		last := ss
		rs.Sustained = &last
	}
	if rs.Stop == "" {
		rs.Stop = fmt.Sprintf("every step passed (last %.0f publishes/s); raise --ramp-steps to go further", rs.Steps[len(rs.Steps)-1].Rate)
	}
	return rs
}

// RampRate is the target rate of step k (0-based): Rate × RampFactor^k.
func (o *Options) RampRate(k int) float64 {
	return o.Rate * math.Pow(o.RampFactor, float64(k))
}

// StepControl is a Control that judges ramp steps. After each step's deliveries have drained
// the run calls Step with what this process measured; it returns whether to run the next
// step. A Control without it gets a local judgement (right for a single process only).
type StepControl interface {
	Control
	Step(ctx context.Context, s *StepResult) (next bool, err error)
}
