package telemetry

import (
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

func TestParseCgroupBytes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		err  bool
	}{
		{"52428800\n", 52428800, false},
		{"max\n", 0, false},
		{"9223372036854771712\n", 0, false}, // cgroup v1 "unlimited"
		{"9223372036854775807", 0, false},
		{"0", 0, false},
		{"", 0, true},
		{"-1", 0, true},
		{"12k", 0, true},
	} {
		got, err := parseCgroupBytes(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("parseCgroupBytes(%q) = %d, %v; want %d, err=%v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func FuzzParseCgroupBytes(f *testing.F) {
	for _, s := range []string{"max", "max\n", "123\n", "9223372036854771712", "", " 1 ", "18446744073709551616"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseCgroupBytes(s)
		if err != nil && n != 0 {
			t.Fatalf("error with value %d", n)
		}
		if n >= unlimitedMemory {
			t.Fatalf("absurd limit %d not mapped to 0", n)
		}
	})
}

func TestCgroupFilesOnSamples(t *testing.T) {
	const (
		v2Self     = "0::/\n"
		v2PodSelf  = "0::/kubepods/pod1\n"
		v1Self     = "12:pids:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n"
		hybridSelf = "4:cpu,memory:/\n0::/\n"
	)
	for _, tc := range []struct {
		dir, self    string
		version      int
		usage, limit uint64
	}{
		{"cgroupv2-limited", v2Self, 2, 52428800, 268435456},
		{"cgroupv2-unlimited", v2Self, 2, 73400320, 0},         // memory.max "max"
		{"cgroupv2-nested", v2PodSelf, 2, 20971520, 134217728}, // own cgroup found via /proc/self/cgroup
		{"cgroupv2-nested", "0::/gone\n", 2, 1048576, 0},       // own cgroup not mounted: the mount point
		{"cgroupv1-limited", v1Self, 1, 41943040, 536870912},   // /docker/abc not mounted: container's root
		{"cgroupv1-unlimited", hybridSelf, 1, 890310656, 0},    // 9223372036854771712
		{"none", v2Self, 0, 0, 0},
	} {
		cg := findCgroup(filepath.Join("testdata", tc.dir), tc.self)
		if cg.version != tc.version {
			t.Errorf("%s: version %d, want %d (%+v)", tc.dir, cg.version, tc.version, cg)
			continue
		}
		usage, limit, ok := cg.read()
		if ok != (tc.version != 0) || usage != tc.usage || limit != tc.limit {
			t.Errorf("%s (%q): usage %d limit %d ok %v; want %d %d", tc.dir, tc.self, usage, limit, ok, tc.usage, tc.limit)
		}
	}
}

// gather scrapes the registry the way /metrics does and returns each gauge's value.
func gather(t *testing.T, m *Metrics) map[string]float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetType() != dto.MetricType_GAUGE || len(mf.GetMetric()) != 1 {
			continue
		}
		out[mf.GetName()] = mf.GetMetric()[0].GetGauge().GetValue()
	}
	return out
}

func TestSystemMetricsScrape(t *testing.T) {
	// Hold a few extra descriptors so fd_used has something to count beyond stdio.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	for _, dir := range []string{"cgroupv2-limited", "cgroupv1-unlimited", "none"} {
		t.Run(dir, func(t *testing.T) {
			m := NewMetrics()
			RegisterSystemMetrics(m, filepath.Join("testdata", dir))
			for range 3 { // scraping repeatedly must work (CPU window)
				g := gather(t, m)
				for _, name := range []string{"memory_used_bytes", "memory_limit_bytes", "cpu_usage_percent", "fd_used", "goroutines"} {
					v, ok := g["revenprox_"+name]
					if !ok || math.IsNaN(v) || v < 0 {
						t.Fatalf("revenprox_%s = %v (present %v)", name, v, ok)
					}
				}
				if g["revenprox_fd_used"] < 4 || g["revenprox_goroutines"] < 1 || g["revenprox_memory_used_bytes"] <= 0 {
					t.Fatalf("implausible: %v", g)
				}
				if pf, ok := g["process_open_fds"]; ok && math.Abs(pf-g["revenprox_fd_used"]) > 2 {
					t.Errorf("fd_used %v disagrees with process_open_fds %v", g["revenprox_fd_used"], pf)
				}
				switch dir {
				case "cgroupv2-limited": // a limit: used is the cgroup's usage
					if g["revenprox_memory_used_bytes"] != 52428800 || g["revenprox_memory_limit_bytes"] != 268435456 {
						t.Errorf("v2 limited: %v", g)
					}
				default: // no limit: used is the process RSS, close to process_resident_memory_bytes
					if g["revenprox_memory_limit_bytes"] != 0 {
						t.Errorf("limit %v, want 0", g["revenprox_memory_limit_bytes"])
					}
					if rss, ok := g["process_resident_memory_bytes"]; ok && math.Abs(rss-g["revenprox_memory_used_bytes"]) > rss/2 {
						t.Errorf("used %v far from RSS %v", g["revenprox_memory_used_bytes"], rss)
					}
				}
			}
		})
	}
}

// On this machine (or any Linux), the real cgroup root is read without error.
func TestSystemMetricsRealCgroup(t *testing.T) {
	if _, err := os.Stat("/proc/self/cgroup"); err != nil {
		t.Skip("no /proc/self/cgroup")
	}
	self, _ := os.ReadFile("/proc/self/cgroup")
	cg := findCgroup("/sys/fs/cgroup", string(self))
	t.Logf("cgroup: %+v (self %q)", cg, strings.TrimSpace(string(self)))
	if cg.version != 0 {
		if usage, _, ok := cg.read(); !ok || usage == 0 {
			t.Errorf("found %+v but reading failed: usage=%d ok=%v", cg, usage, ok)
		}
	}
}

func BenchmarkSystemMetricsScrape(b *testing.B) {
	m := NewMetrics()
	RegisterSystemMetrics(m, "/sys/fs/cgroup")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Registry.Gather(); err != nil {
			b.Fatal(err)
		}
	}
}
