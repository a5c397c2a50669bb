package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"

	"github.com/revenprox/revenprox/config"
)

// The binary under test is built once, on first use, into binDir.
var (
	buildOnce sync.Once
	binDir    string
	binPath   string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	if code == 0 {
		// Process tests wait for their children, and HTTP clients here keep no idle
		// connections, so nothing may be left running.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// ---- run(): subcommands and flags, in process ----

// runCmd calls run and returns its exit code, stdout and stderr.
func runCmd(t *testing.T, environ []string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, environ, &out, &errb)
	return code, out.String(), errb.String()
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "revenprox.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// checkedConfig parses check-config output: "configuration OK\n---\n<yaml>".
func checkedConfig(t *testing.T, stdout string) config.Config {
	t.Helper()
	head, body, ok := strings.Cut(stdout, "---\n")
	if !ok || head != "configuration OK\n" {
		t.Fatalf("check-config output does not start with \"configuration OK\\n---\\n\":\n%s", stdout)
	}
	var c config.Config
	dec := yaml.NewDecoder(strings.NewReader(body))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("check-config printed YAML that does not load back: %v\n%s", err, body)
	}
	return c
}

func TestVersion(t *testing.T) {
	code, out, errOut := runCmd(t, nil, "version")
	if code != 0 || out != "revenprox "+version+"\n" || errOut != "" {
		t.Errorf("version: code %d stdout %q stderr %q", code, out, errOut)
	}
}

func TestCheckConfigOKRedactsSecrets(t *testing.T) {
	path := writeConfig(t, `
node_id: proxy-1
auth:
  webhook_url: https://auth.example.com/verify
  webhook_secret: hook-secret-xyz
admin: {listen: "127.0.0.1:8081", api_key: admin-secret-xyz}
cluster:
  listen: ":5555"
  peers: ["nats-route://proxy2:5555"]
  route_user: route
  route_password: route-secret-xyz
`)
	code, out, errOut := runCmd(t, nil, "check-config", "-c", path)
	if code != 0 {
		t.Fatalf("check-config: code %d, stderr %s", code, errOut)
	}
	for _, secret := range []string{"hook-secret-xyz", "admin-secret-xyz", "route-secret-xyz"} {
		if strings.Contains(out+errOut, secret) {
			t.Errorf("check-config printed the secret %q", secret)
		}
	}
	c := checkedConfig(t, out)
	if c.Auth.WebhookSecret != "REDACTED" || c.Admin.APIKey != "REDACTED" || c.Cluster.RoutePassword != "REDACTED" {
		t.Errorf("secrets not shown as REDACTED: %+v %+v %+v", c.Auth, c.Admin, c.Cluster)
	}
	if c.NodeID != "proxy-1" || c.Auth.WebhookURL != "https://auth.example.com/verify" || c.Cluster.Peers[0] != "nats-route://proxy2:5555" {
		t.Errorf("check-config printed the wrong configuration: %+v", c)
	}
	if c.Limits.MaxConnections != 100000 || c.DrainTimeout.D() != 30*time.Second {
		t.Errorf("check-config output lacks defaults: %+v", c)
	}
}

func TestCheckConfigErrors(t *testing.T) {
	good := "auth: {allow_anonymous: true}\n"
	cases := []struct {
		name string
		body string   // config file ("" means no -c)
		env  []string // environment
		args []string // extra arguments after check-config
		want []string // in stderr
	}{
		{"bad value", good + "limits: {max_connections: 0}\n", nil, nil, []string{"limits.max_connections: 0", "at least 1"}},
		{"bad policy", good + "backpressure: {policy: block}\n", nil, nil, []string{"backpressure.policy: block"}},
		{"unknown key", good + "limits:\n  max_conns: 5\n", nil, nil, []string{"line 3", "max_conns"}},
		{"bad duration", good + "drain_timeout: 30\n", nil, nil, []string{"line 2", `"30"`, "duration"}},
		{"no auth", "node_id: n1\n", nil, nil, []string{"auth.webhook_url", "allow_anonymous"}},
		{"bad env value", good, []string{"REVENPROX_LIMITS_MAX_CONNECTIONS=many"}, nil, []string{"REVENPROX_LIMITS_MAX_CONNECTIONS", `"many"`}},
		{"unknown env", good, []string{"REVENPROX_FOO=1"}, nil, []string{"REVENPROX_FOO"}},
		{"bad -set value", good, nil, []string{"-set", "limits.max_frame_bytes=10"}, []string{"limits.max_frame_bytes: 10"}},
		{"-set without =", good, nil, []string{"-set", "listen"}, []string{`"listen"`, "key=value"}},
		{"-set unknown key", good, nil, []string{"-set", "limits.nope=1"}, []string{"limits.nope", "unknown key"}},
		{"bad -listen", good, nil, []string{"-listen", "8080"}, []string{`listen: "8080"`}},
		{"bad -log-format", good, nil, []string{"-log-format", "xml"}, []string{"log.format: xml"}},
		{"unknown flag", good, nil, []string{"-frobnicate"}, []string{"frobnicate"}},
		{"extra argument", good, nil, []string{"extra"}, []string{`"extra"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"check-config"}
			if tc.body != "" {
				args = append(args, "-c", writeConfig(t, tc.body))
			}
			code, out, errOut := runCmd(t, tc.env, append(args, tc.args...)...)
			if code != 2 {
				t.Errorf("exit code %d, want 2 (stderr %q)", code, errOut)
			}
			if strings.Contains(out, "configuration OK") {
				t.Errorf("stdout claims OK: %q", out)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr %q does not contain %q", errOut, w)
				}
			}
		})
	}
}

func TestCheckConfigMissingFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.yaml")
	code, _, errOut := runCmd(t, nil, "check-config", "-c", missing)
	if code != 2 || !strings.Contains(errOut, missing) {
		t.Errorf("missing file: code %d, stderr %q (want 2 and the path)", code, errOut)
	}
}

func TestUnknownCommand(t *testing.T) {
	code, out, errOut := runCmd(t, nil, "frobnicate", "-c", "x.yaml")
	if code != 2 || out != "" || !strings.Contains(errOut, `"frobnicate"`) || !strings.Contains(errOut, "check-config") {
		t.Errorf("unknown command: code %d stdout %q stderr %q", code, out, errOut)
	}
}

func TestHelpExitsZero(t *testing.T) {
	code, _, errOut := runCmd(t, nil, "check-config", "-h")
	if code != 0 || !strings.Contains(errOut, "-set") || !strings.Contains(errOut, "-listen") {
		t.Errorf("-h: code %d stderr %q", code, errOut)
	}
}

// TestFlagsOverride checks file < environment < flags, and every named flag.
func TestFlagsOverride(t *testing.T) {
	path := writeConfig(t, `
node_id: from-file
listen: ":1111"
log: {level: warn, format: text}
auth: {allow_anonymous: true}
limits: {max_connections: 10, max_subscriptions: 11, publish_rate: 12}
`)
	env := []string{"REVENPROX_LIMITS_MAX_CONNECTIONS=20", "REVENPROX_LIMITS_MAX_SUBSCRIPTIONS=21", "REVENPROX_LISTEN=:2222"}
	code, out, errOut := runCmd(t, env, "check-config", "-c", path,
		"-set", "limits.max_connections=5",
		"-set", "auth.headers=Origin, X-Tenant",
		"-set", "drain_timeout=3s",
		"-listen", "127.0.0.1:3333",
		"-node-id", "from-flag",
		"-log-level", "debug",
		"-log-format", "json")
	if code != 0 {
		t.Fatalf("code %d stderr %s", code, errOut)
	}
	c := checkedConfig(t, out)
	checks := []struct {
		key       string
		got, want any
	}{
		{"limits.max_connections (flag over env over file)", c.Limits.MaxConnections, 5},
		{"limits.max_subscriptions (env over file)", c.Limits.MaxSubscriptions, 21},
		{"limits.publish_rate (file)", c.Limits.PublishRate, 12.0},
		{"listen (-listen over env)", c.Listen, "127.0.0.1:3333"},
		{"node_id (-node-id)", c.NodeID, "from-flag"},
		{"log.level (-log-level)", c.Log.Level, "debug"},
		{"log.format (-log-format)", c.Log.Format, "json"},
		{"auth.headers (list)", strings.Join(c.Auth.Headers, "|"), "Origin|X-Tenant"},
		{"drain_timeout", c.DrainTimeout.D(), 3 * time.Second},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.key, ch.got, ch.want)
		}
	}
	// -listen is applied after -set, so the named flag wins over a -set of the same key.
	code, out, errOut = runCmd(t, nil, "check-config", "-c", path, "-listen", ":4444", "-set", "listen=:5555")
	if code != 0 {
		t.Fatalf("code %d stderr %s", code, errOut)
	}
	if c := checkedConfig(t, out); c.Listen != ":4444" {
		t.Errorf("listen = %s, want the -listen flag's :4444", c.Listen)
	}
}

// ---- the real process ----

// eventually polls cond until it holds or timeout passes.
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
		time.Sleep(10 * time.Millisecond) // polling interval, not a wait for an event
	}
}

// binary builds cmd/revenprox once per test run.
func binary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "revenprox-bin-")
		if buildErr != nil {
			return
		}
		goTool, err := exec.LookPath("go")
		if err != nil {
			goTool = "/usr/local/go/bin/go"
		}
		binPath = filepath.Join(binDir, "revenprox")
		out, err := exec.Command(goTool, "build", "-ldflags", "-X main.version=test-build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// freePort returns a loopback address that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// syncBuffer collects a child's stderr.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// process is a running revenprox binary.
type process struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan struct{} // closed when the process has exited
	code   int           // exit code, valid after done
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitExit waits for the process to end and returns its exit code.
func (p *process) waitExit(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(timeout):
		t.Fatalf("process still running after %s; stderr:\n%s", timeout, p.stderr.String())
		return -1
	}
}

// start runs the binary with a config file and a clean environment (no REVENPROX_* or OTEL_*
// from the caller). The process is killed when the test ends if it is still running.
func start(t *testing.T, configYAML string, args ...string) *process {
	t.Helper()
	bin := binary(t)
	path := writeConfig(t, configYAML)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "REVENPROX_") && !strings.HasPrefix(kv, "OTEL_") {
			env = append(env, kv)
		}
	}
	p := &process{stderr: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, append([]string{"-c", path}, args...)...)
	p.cmd.Env = env
	p.cmd.Stdout = p.stderr
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := p.cmd.Wait()
		p.code = 0
		if err != nil {
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				p.code = exit.ExitCode()
			} else {
				p.code = -1
			}
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.exited() {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("revenprox stderr:\n%s", p.stderr.String())
		}
	})
	return p
}

// httpClient keeps no idle connections, so no goroutine outlives a request.
var httpClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// status returns the HTTP status of GET url, or 0 when the request fails.
func status(url string) int {
	resp, err := httpClient.Get(url)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

// nodeConfig is an anonymous node with an admin listener on the given loopback addresses.
func nodeConfig(listen, admin string) string {
	return fmt.Sprintf(`
node_id: proc-1
listen: %q
log: {level: debug, format: text}
limits: {ip_connect_rate: 0}
auth: {allow_anonymous: true}
admin: {listen: %q, api_key: test-admin-key}
ping_interval: 5s
drain_timeout: 3s
`, listen, admin)
}

// wsClient is a protocol v1 test client.
type wsClient struct {
	t  *testing.T
	ws *websocket.Conn
}

func dial(t *testing.T, url string) *wsClient {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{"revenprox.v1"}, HandshakeTimeout: 10 * time.Second}
	ws, resp, err := d.Dial(url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != "revenprox.v1" {
		t.Errorf("subprotocol %q, want revenprox.v1", got)
	}
	t.Cleanup(func() { _ = ws.Close() })
	return &wsClient{t: t, ws: ws}
}

// frame is any server frame.
type frame struct {
	Op             string          `json:"op"`
	ID             json.RawMessage `json:"id"`
	Code           string          `json:"code"`
	Topic          string          `json:"topic"`
	Sub            string          `json:"sub"`
	Data           json.RawMessage `json:"data"`
	TS             int64           `json:"ts"`
	ConnID         string          `json:"conn_id"`
	Node           string          `json:"node"`
	PingIntervalMs int64           `json:"ping_interval_ms"`
}

// read returns the next frame, or the close error.
func (c *wsClient) read() (frame, error) {
	_ = c.ws.SetReadDeadline(time.Now().Add(15 * time.Second))
	_, msg, err := c.ws.ReadMessage()
	if err != nil {
		return frame{}, err
	}
	var f frame
	if err := json.Unmarshal(msg, &f); err != nil {
		c.t.Fatalf("server sent a frame that is not JSON: %q", msg)
	}
	return f, nil
}

func (c *wsClient) mustRead() frame {
	c.t.Helper()
	f, err := c.read()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return f
}

func (c *wsClient) subscribe(pattern, id string) {
	c.t.Helper()
	if err := c.ws.WriteMessage(websocket.TextMessage, []byte(`{"op":"subscribe","topic":"`+pattern+`","id":`+id+`}`)); err != nil {
		c.t.Fatal(err)
	}
	if f := c.mustRead(); f.Op != "ack" || string(f.ID) != id {
		c.t.Fatalf("subscribe %s: got %+v, want ack with id %s", pattern, f, id)
	}
}

// adminPublish posts one message to the admin API and returns the HTTP status.
func adminPublish(t *testing.T, admin, key, body string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+admin+"/v1/publish", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("admin publish: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

func TestProcessDrainsOnSIGTERM(t *testing.T) { testDrain(t, syscall.SIGTERM) }

func TestProcessDrainsOnSIGINT(t *testing.T) { testDrain(t, syscall.SIGINT) }

// testDrain runs a node, queues messages for two subscribers, signals the process and checks
// the drain contract: /ready turns 503 and new upgrades are refused while connections drain,
// each client gets every queued message and then close 1001, and the process exits 0 within
// drain_timeout.
func testDrain(t *testing.T, sig syscall.Signal) {
	listen, admin := freePort(t), freePort(t)
	p := start(t, nodeConfig(listen, admin))
	base := "http://" + listen
	if !eventually(t, 60*time.Second, func() bool { return p.exited() || status(base+"/ready") == http.StatusOK }) || p.exited() {
		t.Fatalf("node never became ready (exited: %v, code %d)", p.exited(), p.code)
	}

	// silent does not answer close frames: the server must not wait for it forever.
	silent := dial(t, "ws://"+listen+"/ws")
	closeSeen := make(chan int, 1)
	silent.ws.SetCloseHandler(func(code int, _ string) error { closeSeen <- code; return nil })
	polite := dial(t, "ws://"+listen+"/ws?token=ignored-in-anonymous-mode")
	for _, c := range []*wsClient{silent, polite} {
		w := c.mustRead()
		if w.Op != "welcome" || w.Node != "proc-1" || w.ConnID == "" || w.PingIntervalMs != 5000 {
			t.Fatalf("first frame %+v, want welcome from proc-1 with ping_interval_ms 5000", w)
		}
	}
	silent.subscribe("news.>", "1")
	polite.subscribe("news.*", `"s-1"`)

	if code := adminPublish(t, admin, "wrong-key", `{"topic":"news.a","data":1}`); code != http.StatusUnauthorized {
		t.Errorf("admin publish with a wrong key: %d, want 401", code)
	}
	const n = 5
	var sent []string
	before := time.Now().UnixMilli()
	for i := range n {
		data := fmt.Sprintf(`{"seq": %d, "text":"caf\u00e9"}`, i) // spacing and escapes kept byte for byte
		sent = append(sent, data)
		if code := adminPublish(t, admin, "test-admin-key", fmt.Sprintf(`{"topic":"news.n%d","data":%s}`, i, data)); code != http.StatusAccepted {
			t.Fatalf("admin publish %d: status %d, want 202", i, code)
		}
	}
	after := time.Now().UnixMilli()

	// The clients have read nothing since their acks: all n messages are queued or in flight.
	signalled := time.Now()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	sawDraining := eventually(t, 30*time.Second, func() bool {
		return p.exited() || status(base+"/ready") == http.StatusServiceUnavailable
	}) && !p.exited()
	if !sawDraining {
		t.Errorf("never saw /ready 503 while the node drained (exited: %v)", p.exited())
	} else {
		d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
		ws, resp, err := d.Dial("ws://"+listen+"/ws", nil)
		switch {
		case err == nil:
			_ = ws.Close()
			t.Error("a new connection was upgraded while draining")
		case resp != nil && resp.StatusCode != http.StatusServiceUnavailable:
			t.Errorf("upgrade while draining: HTTP %d, want 503", resp.StatusCode)
		}
		if resp != nil {
			_ = resp.Body.Close()
		}
	}

	for _, c := range []struct {
		name    string
		client  *wsClient
		pattern string
	}{{"silent", silent, "news.>"}, {"polite", polite, "news.*"}} {
		for i := range n {
			f, err := c.client.read()
			if err != nil {
				t.Fatalf("%s client: message %d not delivered before the close: %v", c.name, i, err)
			}
			topic := fmt.Sprintf("news.n%d", i)
			if f.Op != "message" || f.Topic != topic || f.Sub != c.pattern || string(f.Data) != sent[i] {
				t.Errorf("%s client: message %d = %+v (data %s), want topic %s sub %s data %s", c.name, i, f, f.Data, topic, c.pattern, sent[i])
			}
			if f.TS < before || f.TS > after {
				t.Errorf("%s client: ts %d outside the publish window [%d, %d]", c.name, f.TS, before, after)
			}
		}
		_, err := c.client.read()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
			t.Errorf("%s client: after the messages got %v, want close 1001", c.name, err)
		}
	}
	select {
	case code := <-closeSeen:
		if code != websocket.CloseGoingAway {
			t.Errorf("silent client saw close %d, want 1001", code)
		}
	default:
		t.Error("silent client's close handler never ran")
	}

	drain := 3 * time.Second
	if code := p.waitExit(t, drain+15*time.Second); code != 0 {
		t.Errorf("exit code %d after %v, want 0", code, sig)
	}
	took := time.Since(signalled)
	t.Logf("%v → exit in %v (drain_timeout %v)", sig, took.Round(time.Millisecond), drain)
	if took > drain+5*time.Second { // generous: the machine is shared
		t.Errorf("exit took %v, want within drain_timeout %v (+ margin)", took, drain)
	}
	logs := p.stderr.String()
	for _, w := range []string{"Signal received, draining", "Stopped"} {
		if !strings.Contains(logs, w) {
			t.Errorf("log lacks %q:\n%s", w, logs)
		}
	}
	if status(base+"/ready") != 0 {
		t.Error("client listener still answers after exit")
	}
}

func TestProcessRefusesConfigWithoutAuth(t *testing.T) {
	p := start(t, fmt.Sprintf("node_id: proc-2\nlisten: %q\n", freePort(t)))
	code := p.waitExit(t, 60*time.Second)
	logs := p.stderr.String()
	if code == 0 {
		t.Fatalf("exit code 0 for a node that would refuse every connection; stderr:\n%s", logs)
	}
	for _, w := range []string{"auth.webhook_url", "auth.allow_anonymous"} {
		if !strings.Contains(logs, w) {
			t.Errorf("stderr does not say why (%q missing):\n%s", w, logs)
		}
	}
}

func TestProcessFailsWhenPortTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := start(t, fmt.Sprintf("node_id: proc-3\nlisten: %q\nauth: {allow_anonymous: true}\n", ln.Addr().String()))
	code := p.waitExit(t, 60*time.Second)
	if logs := p.stderr.String(); code == 0 || !strings.Contains(logs, ln.Addr().String()) {
		t.Errorf("port in use: exit %d, want non-zero naming %s; stderr:\n%s", code, ln.Addr(), logs)
	}
}

func TestProcessVersion(t *testing.T) {
	out, err := exec.Command(binary(t), "version").Output()
	if err != nil || string(out) != "revenprox test-build\n" {
		t.Errorf("version: %q, %v; want the -ldflags version", out, err)
	}
}

// TestProtocolDocMatchesCodes keeps docs/protocol.md's error-code and close-code tables equal to
// the constants of proxy/codes.go (parsed, so a new constant cannot be forgotten).
func TestProtocolDocMatchesCodes(t *testing.T) {
	file, err := parser.ParseFile(token.NewFileSet(), filepath.Join("..", "..", "proxy", "codes.go"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var errorCodes, closeCodes []string
	for _, decl := range file.Decls {
		gen, ok := decl.(*ast.GenDecl)
		if !ok || gen.Tok != token.CONST {
			continue
		}
		for _, spec := range gen.Specs {
			vs := spec.(*ast.ValueSpec)
			for i, name := range vs.Names {
				if !name.IsExported() || i >= len(vs.Values) {
					continue
				}
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok {
					continue
				}
				switch {
				case strings.HasPrefix(name.Name, "Code") && lit.Kind == token.STRING:
					v, _ := strconv.Unquote(lit.Value)
					errorCodes = append(errorCodes, v)
				case strings.HasPrefix(name.Name, "Close") && lit.Kind == token.INT:
					closeCodes = append(closeCodes, lit.Value)
				}
			}
		}
	}
	if len(errorCodes) < 8 || len(closeCodes) < 9 {
		t.Fatalf("parsed %d error codes and %d close codes from proxy/codes.go; the parser missed some", len(errorCodes), len(closeCodes))
	}
	raw, err := os.ReadFile(filepath.Join("..", "..", "docs", "protocol.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	section := func(title string) string {
		_, rest, ok := strings.Cut(doc, "\n## "+title)
		if !ok {
			t.Fatalf("docs/protocol.md has no section %q", title)
		}
		body, _, _ := strings.Cut(rest, "\n## ")
		return body
	}
	rows := func(body string, re *regexp.Regexp) []string {
		var out []string
		for _, m := range re.FindAllStringSubmatch(body, -1) {
			out = append(out, m[1])
		}
		return out
	}
	compare := func(what string, code, documented []string) {
		sort.Strings(code)
		sort.Strings(documented)
		if !slices.Equal(code, documented) {
			t.Errorf("%s: proxy/codes.go has %q, docs/protocol.md documents %q", what, code, documented)
		}
	}
	compare("error codes", errorCodes, rows(section("9. Error codes"), regexp.MustCompile("(?m)^\\| `([a-z_]+)` \\|")))
	compare("close codes", closeCodes, rows(section("10. Close codes"), regexp.MustCompile("(?m)^\\| `([0-9]{4})` \\|")))
}

func TestSetMemoryLimitFromCgroup(t *testing.T) {
	defer debug.SetMemoryLimit(math.MaxInt64)
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	sampleLimit := float64(268435456) // telemetry/testdata/cgroupv2-limited/memory.max
	cases := []struct {
		root, env string
		want      int64
	}{
		{"../../telemetry/testdata/cgroupv2-limited", "", int64(sampleLimit * memoryLimitShare)},
		{"../../telemetry/testdata/cgroupv2-unlimited", "", math.MaxInt64},
		{"../../telemetry/testdata/none", "", math.MaxInt64},
		{"../../telemetry/testdata/cgroupv2-limited", "100MiB", math.MaxInt64}, // GOMEMLIMIT wins (the runtime applies it)
	}
	for _, tc := range cases {
		debug.SetMemoryLimit(math.MaxInt64)
		setMemoryLimit(log, tc.root, tc.env)
		if got := debug.SetMemoryLimit(-1); got != tc.want {
			t.Errorf("%s (GOMEMLIMIT=%q): soft limit %d, want %d", tc.root, tc.env, got, tc.want)
		}
	}
	if !strings.Contains(logs.String(), "Memory limit from the cgroup") {
		t.Errorf("no log line for the cgroup limit:\n%s", logs.String())
	}
}

func TestStartGCFloor(t *testing.T) {
	prev := debug.SetGCPercent(100)
	defer debug.SetGCPercent(prev)
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	cases := []struct {
		name    string
		floor   int
		env     string
		raised  bool
		wantLog string
	}{
		{"default floor raises GOGC on a small heap", 32 << 20, "", true, "GC heap floor"},
		{"0 turns it off", 0, "", false, ""},
		{"GOGC in the environment wins", 64 << 20, "200", false, "memory.gc_floor_bytes not applied"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			logs.Reset()
			runtime.GC()
			floor := startGCFloor(log, tc.floor, tc.env)
			got := debug.SetGCPercent(-1)
			debug.SetGCPercent(got)
			if raised := got > 100; raised != tc.raised {
				t.Errorf("GOGC %d after start, want raised=%v", got, tc.raised)
			}
			floor.Stop()
			floor.Stop()
			if after := debug.SetGCPercent(100); after != 100 {
				t.Errorf("GOGC %d after Stop, want 100", after)
			}
			if tc.wantLog != "" && !strings.Contains(logs.String(), tc.wantLog) {
				t.Errorf("log lacks %q:\n%s", tc.wantLog, logs.String())
			}
		})
	}
}
