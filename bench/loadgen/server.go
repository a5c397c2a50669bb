package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrProc is returned when /proc of the server cannot be read.
var ErrProc = errors.New("loadgen: cannot read server process")

// clockTicks is USER_HZ, the unit of utime/stime in /proc/<pid>/stat; it is 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// ProcRSSKiB reads VmRSS of pid in KiB.
func ProcRSSKiB(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrProc, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				return strconv.ParseInt(f[1], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("%w: no VmRSS for pid %d", ErrProc, pid)
}

// ProcCPUSeconds reads utime+stime of pid in seconds.
func ProcCPUSeconds(pid int) (float64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrProc, err)
	}
	return parseStatCPU(b)
}

// parseStatCPU reads fields 14 and 15 of /proc/<pid>/stat; the command name in parentheses
// may contain spaces, so fields are counted after the last ')'.
func parseStatCPU(b []byte) (float64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("%w: bad stat", ErrProc)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime is field 14 -> f[11], stime field 15 -> f[12].
	if len(f) < 13 {
		return 0, fmt.Errorf("%w: short stat", ErrProc)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("%w: bad stat times", ErrProc)
	}
	return float64(u+s) / clockTicks, nil
}

// RaiseFileLimit sets the soft RLIMIT_NOFILE to the hard limit and returns the new soft limit.
func RaiseFileLimit() (uint64, error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, err
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			return l.Cur, err
		}
	}
	return l.Cur, nil
}

// MetricSums sums the samples of each named metric family in Prometheus text exposition
// format, by the value of label (or "" for all). Only names listed in want are kept.
func MetricSums(r io.Reader, want map[string]string) map[string]map[string]float64 {
	out := map[string]map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name := line
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name = line[:i]
		}
		label, ok := want[name]
		if !ok {
			continue
		}
		// The value is the first field after the label set; a timestamp may follow it.
		rest := line[len(name):]
		if strings.HasPrefix(rest, "{") {
			j := strings.LastIndexByte(rest, '}')
			if j < 0 {
				continue
			}
			rest = rest[j+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		key := ""
		if label != "" {
			if i := strings.Index(line, label+`="`); i >= 0 {
				rest := line[i+len(label)+2:]
				if j := strings.IndexByte(rest, '"'); j >= 0 {
					key = rest[:j]
				}
			}
		}
		if out[name] == nil {
			out[name] = map[string]float64{}
		}
		out[name][key] += v
	}
	return out
}

const (
	metricDropped  = "revenprox_messages_dropped_total"
	metricRejected = "revenprox_connections_rejected_total"
)

type scrape struct {
	dropped  float64
	rejected map[string]float64
	ok       bool
}

func scrapeMetrics(ctx context.Context, url string) (scrape, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return scrape{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return scrape{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return scrape{}, fmt.Errorf("loadgen: %s: HTTP %d", url, resp.StatusCode)
	}
	m := MetricSums(resp.Body, map[string]string{metricDropped: "", metricRejected: "reason"})
	return scrape{dropped: m[metricDropped][""], rejected: m[metricRejected], ok: true}, nil
}

func natsSlowConsumers(ctx context.Context, url string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var v struct {
		SlowConsumers int64 `json:"slow_consumers"`
	}
	err = json.NewDecoder(resp.Body).Decode(&v)
	return v.SlowConsumers, err
}

// Measurer reads the server side of a run: RSS before connecting and at the end, CPU and
// counters over the measured window (Ready .. Done). Its methods are called from one goroutine.
type Measurer struct {
	PIDs        []int
	MetricsURLs []string // RevenProx /metrics
	VarzURLs    []string // NATS monitoring /varz

	stats       ServerStats
	cpu0        float64
	t0          time.Time
	scrapesBase []scrape // before connecting: rejections count from here
	scrapes0    []scrape // at Ready: drops count from here
	slow0       int64
}

// Baseline reads RSS before any connection is opened.
func (m *Measurer) Baseline() {
	m.stats.PIDs = m.PIDs
	m.stats.Dropped, m.stats.SlowConsumers = -1, -1
	for _, p := range m.PIDs {
		if v, err := ProcRSSKiB(p); err == nil {
			m.stats.RSSBaselineKiB += v
		} else {
			m.note(err.Error())
		}
	}
	for _, u := range m.MetricsURLs {
		s, _ := scrapeMetrics(context.Background(), u)
		m.scrapesBase = append(m.scrapesBase, s)
	}
}

func (m *Measurer) note(s string) { m.stats.Notes = append(m.stats.Notes, s) }

func (m *Measurer) cpu() float64 {
	var s float64
	for _, p := range m.PIDs {
		if v, err := ProcCPUSeconds(p); err == nil {
			s += v
		}
	}
	return s
}

// AtReady starts the measured window.
func (m *Measurer) AtReady(ctx context.Context) {
	m.t0 = time.Now()
	m.cpu0 = m.cpu()
	m.scrapes0 = nil
	for _, u := range m.MetricsURLs {
		s, err := scrapeMetrics(ctx, u)
		if err != nil {
			m.note("metrics: " + err.Error())
		}
		m.scrapes0 = append(m.scrapes0, s)
	}
	m.slow0 = 0
	for _, u := range m.VarzURLs {
		v, err := natsSlowConsumers(ctx, u)
		if err != nil {
			m.note("varz: " + err.Error())
		}
		m.slow0 += v
	}
}

// AtDone ends the measured window and returns the stats.
func (m *Measurer) AtDone(ctx context.Context) *ServerStats {
	m.stats.WindowSeconds = time.Since(m.t0).Seconds()
	m.stats.CPUSeconds = m.cpu() - m.cpu0
	m.stats.RSSKiB = 0
	for _, p := range m.PIDs {
		if v, err := ProcRSSKiB(p); err == nil {
			m.stats.RSSKiB += v
		}
	}
	for i, u := range m.MetricsURLs {
		s, err := scrapeMetrics(ctx, u)
		if err != nil || !s.ok || i >= len(m.scrapes0) || !m.scrapes0[i].ok {
			continue
		}
		if m.stats.Dropped < 0 {
			m.stats.Dropped = 0
		}
		m.stats.Dropped += s.dropped - m.scrapes0[i].dropped
		base := m.scrapes0[i]
		if i < len(m.scrapesBase) && m.scrapesBase[i].ok {
			base = m.scrapesBase[i]
		}
		for k, v := range s.rejected {
			if d := v - base.rejected[k]; d != 0 {
				if m.stats.Rejected == nil {
					m.stats.Rejected = map[string]float64{}
				}
				m.stats.Rejected[k] += d
			}
		}
	}
	if len(m.VarzURLs) > 0 {
		var slow int64
		for _, u := range m.VarzURLs {
			v, _ := natsSlowConsumers(ctx, u)
			slow += v
		}
		m.stats.SlowConsumers = slow - m.slow0
	}
	st := m.stats
	return &st
}
