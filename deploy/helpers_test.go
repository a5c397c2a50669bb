package deploy_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
	sigsyaml "sigs.k8s.io/yaml"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"

	"github.com/revenprox/revenprox/telemetry"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// ruleFiles are the shipped rule files, in the order Prometheus should load them (recording
// rules first, so alerts see this evaluation's SLIs).
var ruleFiles = []string{"prometheus/recording.yaml", "prometheus/alerts.yaml"}

// ruleFile is a Prometheus rule file decoded with the Prometheus Operator's types, which are the
// same fields as Prometheus' own rule format.
type ruleFile struct {
	Groups []monitoringv1.RuleGroup `json:"groups"`
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// loadRuleGroups decodes every shipped rule file strictly (unknown fields are errors).
func loadRuleGroups(t *testing.T) []monitoringv1.RuleGroup {
	t.Helper()
	var groups []monitoringv1.RuleGroup
	for _, f := range ruleFiles {
		var rf ruleFile
		if err := sigsyaml.UnmarshalStrict(readFile(t, f), &rf); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		groups = append(groups, rf.Groups...)
	}
	return groups
}

// recordingNames lists the series the shipped recording rules create.
func recordingNames(t *testing.T) map[string]bool {
	names := map[string]bool{}
	for _, g := range loadRuleGroups(t) {
		for _, r := range g.Rules {
			if r.Record != "" {
				names[r.Record] = true
			}
		}
	}
	return names
}

// exportedNames is every series name a RevenProx node exports: the product's one metric registry
// (so it cannot drift from the code) with histogram and summary suffixes, the system gauges, and
// the series Prometheus adds itself (up). The e2e test checks the same against live nodes.
func exportedNames(t *testing.T) map[string]bool {
	t.Helper()
	mfs, err := telemetry.NewMetrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{"up": true}
	for _, n := range designSystemGauges {
		names[n] = true
	}
	for _, mf := range mfs {
		n := mf.GetName()
		names[n] = true
		switch mf.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			names[n+"_bucket"], names[n+"_sum"], names[n+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[n+"_sum"], names[n+"_count"] = true, true
		}
	}
	return names
}

// designSystemGauges are the system gauges of design §8, registered by the node at start (from
// the process and its cgroup) rather than by telemetry.NewMetrics.
var designSystemGauges = []string{
	"revenprox_memory_used_bytes", "revenprox_memory_limit_bytes", "revenprox_cpu_usage_percent",
	"revenprox_fd_used", "revenprox_goroutines",
}

var (
	reString    = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	reMatchers  = regexp.MustCompile(`\{[^}]*\}`)
	reLabelList = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	reRange     = regexp.MustCompile(`\[[^\]]*\]`)
	reNumber    = regexp.MustCompile(`\b\d[\d.]*(?:[eE][-+]?\d+)?(?:ms|[smhdwy])?\b`)
	reIdent     = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	promqlWords = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "inf": true, "nan": true}
)

// metricNames returns the metric names a PromQL expression selects. It is a lexical scan, not a
// parser (promtool parses every expression separately): strings, label matchers, grouping label
// lists, ranges and numbers are blanked, and what remains that is not a keyword and not followed
// by "(" (a function or aggregation) is a metric name.
func metricNames(expr string) []string {
	s := reString.ReplaceAllString(expr, `""`)
	s = reMatchers.ReplaceAllString(s, " ")
	s = reLabelList.ReplaceAllString(s, " ")
	s = reRange.ReplaceAllString(s, " ")
	s = reNumber.ReplaceAllString(s, " ")
	seen := map[string]bool{}
	for _, loc := range reIdent.FindAllStringIndex(s, -1) {
		word := s[loc[0]:loc[1]]
		rest := strings.TrimLeft(s[loc[1]:], " \t\n")
		if strings.HasPrefix(rest, "(") || promqlWords[strings.ToLower(word)] {
			continue
		}
		seen[word] = true
	}
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func TestMetricNamesScanner(t *testing.T) {
	cases := map[string][]string{
		`sum by (namespace, job) (rate(revenprox_connections_total{reason=~"a|b"}[5m])) / clamp_min(x_total, 1e-9)`: {"revenprox_connections_total", "x_total"},
		`histogram_quantile(0.99, sum by (le) (rate(revenprox_message_latency_seconds_bucket[5m])))`:                {"revenprox_message_latency_seconds_bucket"},
		`a > 0.9 and b > 0 or on (job) vector(1) unless c offset 5m`:                                                {"a", "b", "c"},
		`revenprox:slo_latency_errors:ratio_rate5m > (14.4 * 0.001)`:                                                {"revenprox:slo_latency_errors:ratio_rate5m"},
		`count by (namespace, job) (up{job="revenprox"} == 1) - 1`:                                                  {"up"},
		`sum(rate(m_total[5m])) by (instance)`:                                                                      {"m_total"},
	}
	for expr, want := range cases {
		if got := metricNames(expr); strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("metricNames(%q) = %v, want %v", expr, got, want)
		}
	}
}

// promtool returns the path of promtool. Outside CI a machine without it skips the test; in CI
// (CI set) its absence is a failure: scripts/install-prometheus.sh must have installed it.
func promtool(t *testing.T) string {
	t.Helper()
	return tool(t, "promtool")
}

func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "" {
		t.Skipf("%s not installed (run scripts/install-prometheus.sh); skipped outside CI", name)
	}
	t.Fatalf("%s not installed in CI: scripts/install-prometheus.sh must run first", name)
	return ""
}

// run runs a command with a deadline and returns its combined output.
func run(t *testing.T, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func globFiles(t *testing.T, pattern string) []string {
	t.Helper()
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) == 0 {
		t.Fatalf("no files match %s (%v)", pattern, err)
	}
	return files
}
