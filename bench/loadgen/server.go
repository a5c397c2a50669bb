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
	"sync"
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
	u, s, err := ProcCPUSplit(pid)
	return u + s, err
}

// ProcCPUSplit reads utime (user) and stime (kernel) of pid in seconds.
func ProcCPUSplit(pid int) (user, sys float64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %w", ErrProc, err)
	}
	return parseStatSplit(b)
}

// parseStatCPU reads fields 14 and 15 of /proc/<pid>/stat; the command name in parentheses
// may contain spaces, so fields are counted after the last ')'.
func parseStatCPU(b []byte) (float64, error) {
	u, s, err := parseStatSplit(b)
	return u + s, err
}

func parseStatSplit(b []byte) (float64, float64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("%w: bad stat", ErrProc)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime is field 14 -> f[11], stime field 15 -> f[12].
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("%w: short stat", ErrProc)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("%w: bad stat times", ErrProc)
	}
	return float64(u) / clockTicks, float64(s) / clockTicks, nil
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

// memoryMetrics are the Go runtime's and the process's memory figures on /metrics (the Go and
// process collectors), read at the baseline and at the end of a run to break RSS down.
var memoryMetrics = []string{
	"process_resident_memory_bytes",
	"go_goroutines",
	"go_memstats_heap_alloc_bytes",
	"go_memstats_heap_inuse_bytes",
	"go_memstats_heap_idle_bytes",
	"go_memstats_heap_released_bytes",
	"go_memstats_heap_sys_bytes",
	"go_memstats_stack_inuse_bytes",
	"go_memstats_stack_sys_bytes",
	"go_memstats_mspan_inuse_bytes",
	"go_memstats_mcache_inuse_bytes",
	"go_memstats_gc_sys_bytes",
	"go_memstats_other_sys_bytes",
	"go_memstats_buck_hash_sys_bytes",
	"go_memstats_next_gc_bytes",
	"go_memstats_sys_bytes",
}

type scrape struct {
	dropped  float64
	rejected map[string]float64
	memory   map[string]float64
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
	want := map[string]string{metricDropped: "", metricRejected: "reason"}
	for _, n := range memoryMetrics {
		want[n] = ""
	}
	m := MetricSums(resp.Body, want)
	mem := map[string]float64{}
	for _, n := range memoryMetrics {
		if v, ok := m[n][""]; ok {
			mem[n] = v
		}
	}
	return scrape{dropped: m[metricDropped][""], rejected: m[metricRejected], memory: mem, ok: true}, nil
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
	// GeneratorPIDs are the load generator's own processes (the coordinator adds its workers),
	// so their CPU over the window is reported next to the server's.
	GeneratorPIDs []int
	// Profiler, when set, takes CPU profiles over the measured windows and heap and goroutine
	// profiles at the end from the server's admin listener.
	Profiler *Profiler

	stats       ServerStats
	cpu0        float64
	t0          time.Time
	scrapesBase []scrape // before connecting: rejections count from here
	scrapes0    []scrape // at Ready: drops count from here
	slow0       int64
	windows     int
	genCPU0     float64
	sys0        float64
	machine0    machineCPU
	cpuProfile  chan string // the running CPU profile's file, or "" when it failed
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
		m.stats.MemoryBaseline = addFloats(m.stats.MemoryBaseline, s.memory)
	}
}

func addFloats(dst, src map[string]float64) map[string]float64 {
	for k, v := range src {
		if dst == nil {
			dst = map[string]float64{}
		}
		dst[k] += v
	}
	return dst
}

func (m *Measurer) note(s string) { m.stats.Notes = append(m.stats.Notes, s) }

func (m *Measurer) cpu() float64 { return pidsCPU(m.PIDs) }

func (m *Measurer) sysCPU() float64 {
	var s float64
	for _, p := range m.PIDs {
		if _, v, err := ProcCPUSplit(p); err == nil {
			s += v
		}
	}
	return s
}

func pidsCPU(pids []int) float64 {
	var s float64
	for _, p := range pids {
		if v, err := ProcCPUSeconds(p); err == nil {
			s += v
		}
	}
	return s
}

// machineCPU is the first line of /proc/stat: jiffies in total and idle (idle + iowait).
type machineCPU struct{ total, idle int64 }

func readMachineCPU() machineCPU {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return machineCPU{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return machineCPU{}
	}
	var mc machineCPU
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i >= 8 { // guest time is already in user
			break
		}
		mc.total += n
		if i == 3 || i == 4 {
			mc.idle += n
		}
	}
	return mc
}

func readLoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// AtReady starts the measured window.
func (m *Measurer) AtReady(ctx context.Context) {
	m.windows++
	m.stats.Dropped, m.stats.Rejected = -1, nil // every window counts from its own start
	if m.Profiler != nil && m.Profiler.CPUSeconds > 0 {
		m.cpuProfile = make(chan string, 1)
		go func(w int) { m.cpuProfile <- m.Profiler.cpu(ctx, w) }(m.windows)
	}
	m.t0 = time.Now()
	m.cpu0 = m.cpu()
	m.sys0 = m.sysCPU()
	m.genCPU0 = pidsCPU(m.GeneratorPIDs)
	m.machine0 = readMachineCPU()
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
	m.stats.SysCPUSeconds = m.sysCPU() - m.sys0
	m.stats.GeneratorCPUSeconds = pidsCPU(m.GeneratorPIDs) - m.genCPU0
	if mc := readMachineCPU(); mc.total > m.machine0.total {
		m.stats.MachineBusy = 1 - float64(mc.idle-m.machine0.idle)/float64(mc.total-m.machine0.total)
	}
	m.stats.LoadAvg = readLoadAvg()
	m.stats.Memory = nil
	m.stats.RSSKiB = 0
	for _, p := range m.PIDs {
		if v, err := ProcRSSKiB(p); err == nil {
			m.stats.RSSKiB += v
		}
	}
	for i, u := range m.MetricsURLs {
		s, err := scrapeMetrics(ctx, u)
		m.stats.Memory = addFloats(m.stats.Memory, s.memory)
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
	if m.Profiler != nil {
		if m.cpuProfile != nil {
			select {
			case f := <-m.cpuProfile:
				if f != "" {
					m.stats.Profiles = append(m.stats.Profiles, f)
				}
			case <-ctx.Done():
			}
			m.cpuProfile = nil
		}
		if m.Profiler.Heap {
			files, goroutines := m.Profiler.end(ctx, m.windows)
			m.stats.Profiles = append(m.stats.Profiles, files...)
			m.stats.Goroutines = goroutines
		}
		m.stats.Notes = append(m.stats.Notes, m.Profiler.takeNotes()...)
	}
	st := m.stats
	st.Profiles = append([]string(nil), m.stats.Profiles...)
	st.Notes = append([]string(nil), m.stats.Notes...)
	return &st
}

// Profiler fetches profiles from a RevenProx admin listener (net/http/pprof behind Bearer
// admin.api_key) and writes them next to Prefix: Prefix.w<N>.cpu.pprof for measured window N,
// Prefix.heap.pprof and Prefix.goroutine.txt at the end. Read them with `go tool pprof`.
type Profiler struct {
	AdminURL   string // e.g. http://127.0.0.1:19099
	Key        string // admin.api_key
	Prefix     string
	CPUSeconds int  // length of each window's CPU profile (0: none)
	Heap       bool // heap and goroutine profiles at the end of each window

	mu    sync.Mutex
	notes []string
}

func (p *Profiler) note(s string) {
	p.mu.Lock()
	p.notes = append(p.notes, "profiler: "+s)
	p.mu.Unlock()
}

func (p *Profiler) takeNotes() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.notes
	p.notes = nil
	return n
}

// fetch GETs path from the admin listener into file; it returns the body's first line.
func (p *Profiler) fetch(ctx context.Context, path, file string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(p.AdminURL, "/")+path, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+p.Key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: HTTP %d", path, resp.StatusCode)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(file, b, 0o644); err != nil {
		return "", err
	}
	first, _, _ := strings.Cut(string(b), "\n")
	return first, nil
}

func (p *Profiler) cpu(ctx context.Context, window int) string {
	file := fmt.Sprintf("%s.w%d.cpu.pprof", p.Prefix, window)
	path := "/debug/pprof/profile?seconds=" + strconv.Itoa(p.CPUSeconds)
	if _, err := p.fetch(ctx, path, file, time.Duration(p.CPUSeconds)*time.Second+30*time.Second); err != nil {
		p.note("cpu profile: " + err.Error())
		return ""
	}
	return file
}

// end writes the heap profile (after a GC, so it shows live objects) and the goroutine
// profile, and returns the files and the goroutine count.
func (p *Profiler) end(ctx context.Context, window int) ([]string, int64) {
	var files []string
	heap := fmt.Sprintf("%s.w%d.heap.pprof", p.Prefix, window)
	if _, err := p.fetch(ctx, "/debug/pprof/heap?gc=1", heap, 30*time.Second); err != nil {
		p.note("heap profile: " + err.Error())
	} else {
		files = append(files, heap)
	}
	gr := fmt.Sprintf("%s.w%d.goroutine.txt", p.Prefix, window)
	first, err := p.fetch(ctx, "/debug/pprof/goroutine?debug=1", gr, 30*time.Second)
	if err != nil {
		p.note("goroutine profile: " + err.Error())
		return files, -1
	}
	files = append(files, gr)
	// "goroutine profile: total N"
	var n int64 = -1
	if i := strings.LastIndexByte(first, ' '); i >= 0 {
		if v, err := strconv.ParseInt(strings.TrimSpace(first[i+1:]), 10, 64); err == nil {
			n = v
		}
	}
	return files, n
}
