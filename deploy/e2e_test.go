//go:build e2e

package deploy_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestE2EPrometheusEvaluatesEverything starts two real nodes in a mesh and a real Prometheus on
// loopback scraping them every second with the shipped rules, drives WebSocket traffic through
// both nodes, then evaluates every dashboard expression and every rule expression through
// Prometheus' HTTP API. It fails on any evaluation error, on any rule Prometheus reports
// unhealthy, and on any expression naming a metric the nodes (or our recording rules) do not
// export. REVENPROX_BIN may name a prebuilt binary; otherwise ./cmd/revenprox is built.
func TestE2EPrometheusEvaluatesEverything(t *testing.T) {
	promBin := tool(t, "prometheus")
	bin := os.Getenv("REVENPROX_BIN")
	dir := t.TempDir()
	if bin == "" {
		bin = filepath.Join(dir, "revenprox")
		if out, err := run(t, 5*time.Minute, "go", "build", "-o", bin, "../cmd/revenprox"); err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
	}

	httpPorts, routePorts := []int{freePort(t), freePort(t)}, []int{freePort(t), freePort(t)}
	var targets []string
	for i := range 2 {
		cfg := fmt.Sprintf(`node_id: e2e-%d
listen: "127.0.0.1:%d"
log: {level: warn, format: json}
auth: {allow_anonymous: true}
cluster:
  listen: "127.0.0.1:%d"
  peers: ["nats-route://127.0.0.1:%d"]
drain_timeout: 2s
`, i+1, httpPorts[i], routePorts[i], routePorts[1-i])
		path := filepath.Join(dir, fmt.Sprintf("node%d.yaml", i+1))
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		startProcess(t, filepath.Join(dir, fmt.Sprintf("node%d.log", i+1)), bin, "serve", "-c", path)
		targets = append(targets, fmt.Sprintf("127.0.0.1:%d", httpPorts[i]))
	}
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	for _, tg := range targets {
		if !eventually(t, 30*time.Second, func() bool { return httpOK(client, "http://"+tg+"/ready") }) {
			t.Fatalf("node %s never became ready (logs in %s)", tg, dir)
		}
	}

	// Rule files as shipped, except group intervals: Prometheus evaluates a group first at an
	// offset within its interval, and the test cannot wait minutes for the 2m groups.
	reInterval := regexp.MustCompile(`(?m)^\s*interval:.*\n`)
	var rulePaths []string
	for _, f := range ruleFiles {
		p := filepath.Join(dir, filepath.Base(f))
		if err := os.WriteFile(p, reInterval.ReplaceAll(readFile(t, f), nil), 0o600); err != nil {
			t.Fatal(err)
		}
		rulePaths = append(rulePaths, p)
	}
	promPort := freePort(t)
	promCfg := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [%q, %q]
scrape_configs:
  - job_name: revenprox
    static_configs: [{targets: [%q, %q]}]
`, rulePaths[0], rulePaths[1], targets[0], targets[1])
	promCfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(promCfgPath, []byte(promCfg), 0o600); err != nil {
		t.Fatal(err)
	}
	promURL := fmt.Sprintf("http://127.0.0.1:%d", promPort)
	startProcess(t, filepath.Join(dir, "prometheus.log"), promBin,
		"--config.file="+promCfgPath, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		fmt.Sprintf("--web.listen-address=127.0.0.1:%d", promPort))
	if !eventually(t, 60*time.Second, func() bool { return httpOK(client, promURL+"/-/ready") }) {
		t.Fatalf("prometheus never became ready (log in %s)", dir)
	}

	driveTraffic(t, targets)

	// Wait until both nodes' deliveries have been scraped and every recording rule has run.
	recorded := recordingNames(t)
	if !eventually(t, 60*time.Second, func() bool {
		v, err := promQuery(client, promURL, `count(revenprox_messages_sent_total > 0) == 2 and count(up{job="revenprox"} == 1) == 2`)
		if err != nil || len(v) == 0 {
			return false
		}
		names, err := promNames(client, promURL)
		if err != nil {
			return false
		}
		for n := range recorded {
			if !names[n] {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("traffic or recording rules never showed up in Prometheus (logs in %s)", dir)
	}
	names, err := promNames(client, promURL)
	if err != nil {
		t.Fatal(err)
	}
	names["ALERTS"], names["ALERTS_FOR_STATE"] = true, true // Prometheus' own, present only while an alert is active

	var exprs []dashboardExpr
	exprs = append(exprs, dashboardExprs(t)...)
	for _, g := range loadRuleGroups(t) {
		for _, r := range g.Rules {
			exprs = append(exprs, dashboardExpr{fmt.Sprintf("rule group %s %s%s", g.Name, r.Alert, r.Record), r.Expr.String()})
		}
	}
	for _, e := range exprs {
		if _, err := promQuery(client, promURL, e.expr); err != nil {
			t.Errorf("%s: %v\n  expr: %s", e.where, err, e.expr)
		}
		for _, n := range metricNames(e.expr) {
			if !names[n] {
				t.Errorf("%s: names %s, which the live nodes do not export\n  expr: %s", e.where, n, e.expr)
			}
		}
	}
	// Every rule as Prometheus itself evaluates it: healthy, no evaluation error.
	var rules struct {
		Data struct {
			Groups []struct {
				Name  string `json:"name"`
				Rules []struct {
					Name      string `json:"name"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := getJSON(client, promURL+"/api/v1/rules", &rules); err != nil {
		t.Fatal(err)
	}
	var n int
	for _, g := range rules.Data.Groups {
		for _, r := range g.Rules {
			n++
			if r.Health != "ok" {
				t.Errorf("rule %s/%s health %q: %s", g.Name, r.Name, r.Health, r.LastError)
			}
		}
	}
	if n == 0 {
		t.Error("Prometheus loaded no rules")
	}
	t.Logf("evaluated %d expressions, %d rules healthy", len(exprs), n)
}

// driveTraffic subscribes on both nodes and publishes on each until every subscriber has
// received from both (cross-node interest propagates asynchronously), bounded in time.
func driveTraffic(t *testing.T, targets []string) {
	t.Helper()
	dial := func(target string) *websocket.Conn {
		c, _, err := websocket.DefaultDialer.Dial("ws://"+target+"/ws", nil)
		if err != nil {
			t.Fatalf("dial %s: %v", target, err)
		}
		var welcome map[string]any
		if err := c.ReadJSON(&welcome); err != nil || welcome["op"] != "welcome" {
			t.Fatalf("welcome from %s: %v %v", target, welcome, err)
		}
		return c
	}
	var subs, pubs []*websocket.Conn
	for _, tg := range targets {
		s := dial(tg)
		defer s.Close()
		if err := s.WriteJSON(map[string]any{"op": "subscribe", "topic": "e2e.>", "id": 1}); err != nil {
			t.Fatal(err)
		}
		subs = append(subs, s)
		p := dial(tg)
		defer p.Close()
		pubs = append(pubs, p)
	}
	// Readers note which origin node each subscriber has heard from.
	type heard struct{ sub, from int }
	got := make(chan heard, 1024)
	for i, s := range subs {
		go func() {
			for {
				_, raw, err := s.ReadMessage()
				if err != nil {
					return
				}
				var m struct {
					Op    string `json:"op"`
					Topic string `json:"topic"`
				}
				if json.Unmarshal(raw, &m) == nil && m.Op == "message" {
					var from int
					fmt.Sscanf(m.Topic, "e2e.from%d", &from)
					got <- heard{i, from}
				}
			}
		}()
	}
	// Drain the publishers' acks so their sockets never back up.
	for _, p := range pubs {
		go func() {
			for {
				if _, _, err := p.ReadMessage(); err != nil {
					return
				}
			}
		}()
	}
	want := map[heard]bool{}
	deadline := time.Now().Add(30 * time.Second)
	for id := 1; len(want) < 4 && time.Now().Before(deadline) && id < 2000; id++ {
		for i, p := range pubs {
			msg := map[string]any{"op": "publish", "topic": fmt.Sprintf("e2e.from%d", i), "data": map[string]int{"n": id}, "id": id}
			if err := p.WriteJSON(msg); err != nil {
				t.Fatal(err)
			}
		}
		timeout := time.After(100 * time.Millisecond)
	drain:
		for {
			select {
			case h := <-got:
				want[h] = true
			case <-timeout:
				break drain
			}
		}
	}
	if len(want) < 4 {
		t.Fatalf("subscribers heard %v; want each from both nodes", want)
	}
}

func startProcess(t *testing.T, logPath, name string, args ...string) {
	t.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("--- %s (last 2000 bytes)\n%s", filepath.Base(logPath), tail(b, 2000))
			}
		}
	})
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func httpOK(c *http.Client, u string) bool {
	resp, err := c.Get(u)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode == http.StatusOK
}

func getJSON(c *http.Client, u string, into any) error {
	resp, err := c.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", u, resp.Status, strings.TrimSpace(string(b)))
	}
	return json.Unmarshal(b, into)
}

// promQuery evaluates an instant query and returns the result vector (empty for a scalar).
func promQuery(c *http.Client, base, expr string) ([]json.RawMessage, error) {
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := getJSON(c, base+"/api/v1/query?query="+url.QueryEscape(expr), &r); err != nil {
		return nil, err
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("query failed: %s", r.Error)
	}
	var v []json.RawMessage
	if r.Data.ResultType == "vector" {
		if err := json.Unmarshal(r.Data.Result, &v); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// promNames lists every metric name Prometheus holds.
func promNames(c *http.Client, base string) (map[string]bool, error) {
	var r struct {
		Data []string `json:"data"`
	}
	if err := getJSON(c, base+"/api/v1/label/__name__/values", &r); err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for _, n := range r.Data {
		names[n] = true
	}
	return names, nil
}

// eventually polls cond every 50ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, cond func() bool) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}
