package telemetry

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// unlimitedMemory: a cgroup limit at or above this is "no limit". cgroup v1 writes
// 9223372036854771712 (the max int64 rounded down to a page); nothing real is 4 EiB.
const unlimitedMemory = 1 << 62

// cpuMinWindow: scrapes closer together than this reuse the previous CPU figure, because a
// percentage over a few milliseconds is noise (and a second scraper would reset the window).
const cpuMinWindow = 500 * time.Millisecond

// RegisterSystemMetrics adds the system gauges of design §8 to m's registry:
//
//   - revenprox_memory_used_bytes: the cgroup's usage (v2 memory.current, v1
//     memory.usage_in_bytes) when the cgroup has a memory limit, so used/limit is the fraction
//     that matters for the OOM killer; otherwise the process RSS.
//   - revenprox_memory_limit_bytes: v2 memory.max or v1 memory.limit_in_bytes, 0 when unlimited.
//   - revenprox_cpu_usage_percent: process CPU time over the wall time since the previous
//     scrape (100 = one core busy).
//   - revenprox_fd_used: open file descriptors of the process.
//   - revenprox_goroutines: live goroutines.
//
// cgroupRoot is "/sys/fs/cgroup" in production. The process's own cgroup is found through
// /proc/self/cgroup, falling back to cgroupRoot itself (a container with a cgroup namespace,
// or a v1 container whose cgroup is mounted at the root). Values are read at scrape time; no
// goroutine runs in between. Calling it twice for one Metrics panics (duplicate registration).
func RegisterSystemMetrics(m *Metrics, cgroupRoot string) {
	self, _ := os.ReadFile("/proc/self/cgroup")
	m.Registry.MustRegister(newSystemCollector(findCgroup(cgroupRoot, string(self))))
}

// cgroupMemory locates the memory accounting files of one cgroup.
type cgroupMemory struct {
	usageFile, limitFile string // empty when no cgroup was found
	version              int    // 1 or 2, 0 when none
}

// findCgroup picks the memory files of this process's cgroup under root. selfCgroup is the
// content of /proc/self/cgroup ("0::/path" for v2, "N:memory:/path" or "N:...,memory,...:/path"
// for v1).
func findCgroup(root, selfCgroup string) cgroupMemory {
	var v2Path, v1Path string
	for _, line := range strings.Split(selfCgroup, "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			v2Path = parts[2]
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "memory" {
				v1Path = parts[2]
			}
		}
	}
	// v2: unified hierarchy at root (or root/unified in hybrid mode, which has no memory
	// controller, so it is not looked at).
	for _, dir := range candidates(root, v2Path) {
		if fileExists(filepath.Join(dir, "memory.current")) {
			return cgroupMemory{usageFile: filepath.Join(dir, "memory.current"), limitFile: filepath.Join(dir, "memory.max"), version: 2}
		}
	}
	for _, dir := range candidates(filepath.Join(root, "memory"), v1Path) {
		if fileExists(filepath.Join(dir, "memory.usage_in_bytes")) {
			return cgroupMemory{usageFile: filepath.Join(dir, "memory.usage_in_bytes"), limitFile: filepath.Join(dir, "memory.limit_in_bytes"), version: 1}
		}
	}
	return cgroupMemory{}
}

// candidates lists the process's own cgroup directory first, then the mount point itself.
func candidates(mount, path string) []string {
	if path == "" || path == "/" {
		return []string{mount}
	}
	return []string{filepath.Join(mount, filepath.Clean("/"+path)), mount}
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

var errCgroupValue = errors.New("telemetry: bad cgroup value")

// parseCgroupBytes parses a cgroup memory file: a decimal byte count or "max". Unlimited
// ("max", or a v1 value near 2^63) is 0.
func parseCgroupBytes(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	if s == "max" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, errCgroupValue
	}
	if n >= unlimitedMemory {
		return 0, nil
	}
	return n, nil
}

// read returns usage and limit (0 = unlimited); ok is false when there is no cgroup or its
// files cannot be read.
func (c cgroupMemory) read() (usage, limit uint64, ok bool) {
	if c.version == 0 {
		return 0, 0, false
	}
	u, err := readCgroupFile(c.usageFile)
	if err != nil {
		return 0, 0, false
	}
	l, err := readCgroupFile(c.limitFile)
	if err != nil {
		l = 0 // the root v2 cgroup has memory.current but no memory.max: unlimited
	}
	return u, l, true
}

func readCgroupFile(p string) (uint64, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, err
	}
	return parseCgroupBytes(string(b))
}

// processRSS reads the resident set size from /proc/self/statm (second field, in pages).
func processRSS() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err == nil {
		if f := bytes.Fields(b); len(f) >= 2 {
			if pages, err := strconv.ParseUint(string(f[1]), 10, 64); err == nil {
				return pages * uint64(os.Getpagesize())
			}
		}
	}
	var ms runtime.MemStats // not Linux: the Go runtime's view is the best we have
	runtime.ReadMemStats(&ms)
	return ms.Sys
}

// countOpenFDs counts entries of /proc/self/fd, minus the one used to read it.
func countOpenFDs() int {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return 0
	}
	defer d.Close()
	n := 0
	for {
		names, err := d.Readdirnames(1024)
		n += len(names)
		if err == io.EOF || (err != nil && len(names) == 0) {
			break
		}
	}
	if n > 0 {
		n-- // the directory handle itself
	}
	return n
}

// processCPU returns user+system CPU time consumed by the process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// systemCollector computes every system gauge when scraped.
type systemCollector struct {
	cgroup                                            cgroupMemory
	memUsed, memLimit, cpuPercent, fdUsed, goroutines *prometheus.Desc

	mu       sync.Mutex // guards the CPU window: scrapes may run concurrently
	lastWall time.Time
	lastCPU  time.Duration
	lastPct  float64
	havePct  bool
}

func newSystemCollector(cg cgroupMemory) *systemCollector {
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, nil, nil)
	}
	return &systemCollector{
		cgroup:     cg,
		memUsed:    desc("memory_used_bytes", "Memory used: the cgroup's usage when it has a memory limit, else the process RSS."),
		memLimit:   desc("memory_limit_bytes", "Memory limit of the cgroup (v2 memory.max, v1 memory.limit_in_bytes); 0 when unlimited or not in a cgroup."),
		cpuPercent: desc("cpu_usage_percent", "Process CPU use since the previous scrape; 100 = one core."),
		fdUsed:     desc("fd_used", "Open file descriptors of the process."),
		goroutines: desc("goroutines", "Live goroutines."),
		lastWall:   time.Now(),
		lastCPU:    processCPU(),
	}
}

func (c *systemCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.memUsed
	ch <- c.memLimit
	ch <- c.cpuPercent
	ch <- c.fdUsed
	ch <- c.goroutines
}

func (c *systemCollector) Collect(ch chan<- prometheus.Metric) {
	usage, limit, inCgroup := c.cgroup.read()
	if !inCgroup || limit == 0 {
		usage = processRSS()
	}
	ch <- prometheus.MustNewConstMetric(c.memUsed, prometheus.GaugeValue, float64(usage))
	ch <- prometheus.MustNewConstMetric(c.memLimit, prometheus.GaugeValue, float64(limit))
	ch <- prometheus.MustNewConstMetric(c.cpuPercent, prometheus.GaugeValue, c.cpuSinceLastScrape())
	ch <- prometheus.MustNewConstMetric(c.fdUsed, prometheus.GaugeValue, float64(countOpenFDs()))
	ch <- prometheus.MustNewConstMetric(c.goroutines, prometheus.GaugeValue, float64(runtime.NumGoroutine()))
}

func (c *systemCollector) cpuSinceLastScrape() float64 {
	now, cpu := time.Now(), processCPU()
	c.mu.Lock()
	defer c.mu.Unlock()
	wall := now.Sub(c.lastWall)
	if c.havePct && wall < cpuMinWindow {
		return c.lastPct
	}
	if wall > 0 {
		c.lastPct = 100 * float64(cpu-c.lastCPU) / float64(wall)
		if c.lastPct < 0 {
			c.lastPct = 0
		}
	}
	c.lastWall, c.lastCPU, c.havePct = now, cpu, true
	return c.lastPct
}

// CgroupMemoryLimit returns the memory limit of this process's cgroup under cgroupRoot, or 0
// when there is none (not in a cgroup, or unlimited).
func CgroupMemoryLimit(cgroupRoot string) uint64 {
	self, _ := os.ReadFile("/proc/self/cgroup")
	_, limit, ok := findCgroup(cgroupRoot, string(self)).read()
	if !ok {
		return 0
	}
	return limit
}
