//go:build long

package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestProcessesSurviveSIGKILLAndRejoin runs three real revenprox processes meshed over embedded
// NATS routes, SIGKILLs one, checks the other two drop it and keep carrying messages, restarts
// it and checks it rejoins by itself. Run with `go test -tags long -run Processes ./cluster/`.
func TestProcessesSurviveSIGKILLAndRejoin(t *testing.T) {
	dir := t.TempDir()
	bin := buildRevenprox(t, dir)

	const count = 3
	procs := make([]*proc, count)
	httpPorts, routePorts := freePorts(t, count), freePorts(t, count)
	for i := range count {
		var peers []string
		for j := range count {
			if j != i {
				peers = append(peers, fmt.Sprintf("nats-route://127.0.0.1:%d", routePorts[j]))
			}
		}
		cfg := fmt.Sprintf(`node_id: p%d
listen: "127.0.0.1:%d"
log: {level: info, format: text}
auth:
  allow_anonymous: true
cluster:
  listen: "127.0.0.1:%d"
  peers: [%s]
  heartbeat_interval: 100ms
drain_timeout: 2s
`, i+1, httpPorts[i], routePorts[i], strings.Join(peers, ", "))
		path := filepath.Join(dir, fmt.Sprintf("p%d.yaml", i+1))
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		procs[i] = &proc{name: fmt.Sprintf("p%d", i+1), bin: bin, config: path, httpPort: httpPorts[i], logDir: dir}
	}
	for _, p := range procs {
		p.start(t)
	}
	t.Cleanup(func() {
		for _, p := range procs {
			p.stop(t)
		}
		if t.Failed() {
			for _, p := range procs {
				p.dumpLog(t)
			}
		}
	})

	for _, p := range procs {
		waitClusterNodes(t, p, count)
	}
	a, b, c := procs[0], procs[1], procs[2]
	checkCrossNodeMessage(t, a, b, "t.x")

	c.kill(t)
	waitClusterNodes(t, a, 2)
	waitClusterNodes(t, b, 2)
	checkCrossNodeMessage(t, a, b, "t.after.kill")

	c.start(t)
	for _, p := range procs {
		waitClusterNodes(t, p, count)
	}
	checkCrossNodeMessage(t, a, c, "t.after.rejoin")
	checkCrossNodeMessage(t, c, b, "t.from.rejoined")
}

// buildRevenprox compiles cmd/revenprox into dir.
func buildRevenprox(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "revenprox")
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = "/usr/local/go/bin/go"
	}
	cmd := exec.Command(goTool, "build", "-o", bin, "github.com/revenprox/revenprox/cmd/revenprox")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build cmd/revenprox: %v\n%s", err, out)
	}
	return bin
}

// freePorts reserves n loopback ports by listening and closing (the kernel does not hand them
// out again at once).
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

type proc struct {
	name, bin, config, logDir string
	httpPort                  int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	runs int
}

func (p *proc) start(t *testing.T) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.runs++
	logFile, err := os.Create(filepath.Join(p.logDir, fmt.Sprintf("%s.run%d.log", p.name, p.runs)))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(p.bin, "-c", p.config)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
}

func (p *proc) kill(t *testing.T) {
	t.Helper()
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-done
}

// stop asks for a graceful drain (SIGTERM) and falls back to SIGKILL.
func (p *proc) stop(t *testing.T) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Errorf("%s did not exit on SIGTERM", p.name)
		_ = cmd.Process.Kill()
		<-done
	}
}

func (p *proc) dumpLog(t *testing.T) {
	for run := 1; run <= p.runs; run++ {
		b, _ := os.ReadFile(filepath.Join(p.logDir, fmt.Sprintf("%s.run%d.log", p.name, run)))
		if len(b) > 8000 {
			b = b[len(b)-8000:]
		}
		t.Logf("--- %s run %d log (tail) ---\n%s", p.name, run, b)
	}
}

func (p *proc) url(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", p.httpPort, path)
}

// waitClusterNodes polls GET /cluster until the node lists exactly want nodes.
func waitClusterNodes(t *testing.T, p *proc, want int) {
	t.Helper()
	client := &http.Client{Timeout: time.Second}
	var last string
	deadline := time.Now().Add(30 * time.Second)
	for {
		if n, body := clusterNodes(client, p); n == want {
			return
		} else {
			last = body
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: GET /cluster never listed %d nodes; last answer: %s", p.name, want, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// clusterNodes returns how many nodes GET /cluster lists (-1 on error) and the raw answer.
func clusterNodes(client *http.Client, p *proc) (int, string) {
	resp, err := client.Get(p.url("/cluster"))
	if err != nil {
		return -1, err.Error()
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	var v View
	if resp.StatusCode != http.StatusOK || json.Unmarshal(buf.Bytes(), &v) != nil || v.Totals.Nodes != len(v.Nodes) {
		return -1, buf.String()
	}
	return len(v.Nodes), buf.String()
}

// checkCrossNodeMessage subscribes on sub's node and publishes on pub's node until the message
// arrives: interest propagation is asynchronous, so the first publications may find no route
// interest yet (at-most-once delivery, design §4).
func checkCrossNodeMessage(t *testing.T, pub, sub *proc, topic string) {
	t.Helper()
	subConn := dialWS(t, sub)
	defer subConn.Close()
	pubConn := dialWS(t, pub)
	defer pubConn.Close()

	writeJSON(t, subConn, map[string]any{"op": "subscribe", "topic": topic, "id": 1})
	expectOp(t, subConn, "ack")

	got := make(chan map[string]any, 1)
	go func() {
		for {
			var m map[string]any
			if err := subConn.ReadJSON(&m); err != nil {
				close(got)
				return
			}
			if m["op"] == "message" {
				got <- m
				return
			}
		}
	}()
	deadline := time.After(20 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for id := 2; ; id++ {
		writeJSON(t, pubConn, map[string]any{"op": "publish", "topic": topic, "data": id, "id": id})
		select {
		case m, ok := <-got:
			if !ok {
				t.Fatalf("%s: subscriber connection closed before a message on %s", sub.name, topic)
			}
			if m["topic"] != topic || m["sub"] != topic || m["data"] == nil {
				t.Fatalf("%s got %v", sub.name, m)
			}
			return
		case <-deadline:
			t.Fatalf("no message on %s from %s to %s", topic, pub.name, sub.name)
		case <-tick.C:
		}
	}
}

func dialWS(t *testing.T, p *proc) *websocket.Conn {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second, Subprotocols: []string{"revenprox.v1"}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, resp, err := d.DialContext(ctx, fmt.Sprintf("ws://127.0.0.1:%d/ws", p.httpPort), nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (HTTP %d)", p.name, err, status)
	}
	expectOp(t, conn, "welcome")
	return conn
}

func writeJSON(t *testing.T, c *websocket.Conn, v any) {
	t.Helper()
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := c.WriteJSON(v); err != nil {
		t.Fatal(err)
	}
}

func expectOp(t *testing.T, c *websocket.Conn, op string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	for {
		var m map[string]any
		if err := c.ReadJSON(&m); err != nil {
			t.Fatalf("waiting for %q: %v", op, err)
		}
		if m["op"] == op {
			return
		}
		if m["op"] == "error" {
			t.Fatalf("waiting for %q: got %v", op, m)
		}
	}
}
