package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/revenprox/revenprox/config"
)

const composeDir = "compose"

type composeService struct {
	Image           string            `yaml:"image"`
	Build           map[string]string `yaml:"build"`
	Hostname        string            `yaml:"hostname"`
	Environment     map[string]string `yaml:"environment"`
	Volumes         []string          `yaml:"volumes"`
	Ports           []string          `yaml:"ports"`
	StopGracePeriod string            `yaml:"stop_grace_period"`
}

func loadCompose(t *testing.T) map[string]composeService {
	t.Helper()
	var c struct {
		Services map[string]composeService `yaml:"services"`
	}
	if err := yaml.Unmarshal(readFile(t, filepath.Join(composeDir, "docker-compose.yaml")), &c); err != nil {
		t.Fatalf("docker-compose.yaml: %v", err)
	}
	return c.Services
}

// mounts maps container paths to host paths (relative to the compose directory).
func mounts(s composeService) map[string]string {
	m := map[string]string{}
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 {
			m[parts[1]] = parts[0]
		}
	}
	return m
}

// TestComposeCluster: three nodes whose configs (loaded and validated by the config package with
// the service's environment) form a mesh of each other, authenticate against the auth service
// with its secret, and are all scraped by Prometheus, whose config promtool accepts with the
// shipped rules; Grafana mounts the shipped dashboards where its provisioning looks.
func TestComposeCluster(t *testing.T) {
	svcs := loadCompose(t)
	var proxies []string
	for name := range svcs {
		if strings.HasPrefix(name, "proxy") {
			proxies = append(proxies, name)
		}
	}
	slices.Sort(proxies)
	if len(proxies) != 3 {
		t.Fatalf("want 3 RevenProx nodes, have %v", proxies)
	}
	auth, ok := svcs["auth"]
	if !ok {
		t.Fatal("no auth service")
	}
	for _, name := range proxies {
		s := svcs[name]
		if s.Build["dockerfile"] != "deploy/Dockerfile" || s.Build["context"] != "../.." {
			t.Errorf("%s: build %v, want context ../.. and deploy/Dockerfile", name, s.Build)
		}
		host, ok := mounts(s)["/etc/revenprox/config.yaml"]
		if !ok {
			t.Fatalf("%s mounts no /etc/revenprox/config.yaml", name)
		}
		var environ []string
		for k, v := range s.Environment {
			environ = append(environ, k+"="+v)
		}
		cfg, err := config.Load(filepath.Join(composeDir, host), environ)
		if err == nil {
			err = cfg.Validate()
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if cfg.NodeID != name || cfg.Cluster.Listen != ":5555" || cfg.Listen != ":8080" {
			t.Errorf("%s: node_id %q listen %q cluster.listen %q", name, cfg.NodeID, cfg.Listen, cfg.Cluster.Listen)
		}
		var want []string
		for _, other := range proxies {
			if other != name {
				want = append(want, "nats-route://"+other+":5555")
			}
		}
		if !slices.Equal(cfg.Cluster.Peers, want) {
			t.Errorf("%s: cluster.peers %v, want %v", name, cfg.Cluster.Peers, want)
		}
		if cfg.Auth.WebhookURL != "http://auth:9000/verify" || cfg.Auth.WebhookSecret != auth.Environment["WEBHOOK_SECRET"] || cfg.Auth.WebhookSecret == "" {
			t.Errorf("%s: webhook %s with a secret that must equal the auth service's WEBHOOK_SECRET", name, cfg.Auth.WebhookURL)
		}
		if d, err := time.ParseDuration(s.StopGracePeriod); err != nil || d <= cfg.DrainTimeout.D() {
			t.Errorf("%s: stop_grace_period %q must exceed drain_timeout %v", name, s.StopGracePeriod, cfg.DrainTimeout.D())
		}
	}

	prom := svcs["prometheus"]
	pm := mounts(prom)
	var pcfg struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	promYAML := readFile(t, filepath.Join(composeDir, pm["/etc/prometheus/prometheus.yml"]))
	if err := yaml.Unmarshal(promYAML, &pcfg); err != nil {
		t.Fatal(err)
	}
	var localRules []string
	for _, rf := range pcfg.RuleFiles {
		host, ok := pm[rf]
		if !ok {
			t.Errorf("prometheus.yml loads %s, which the prometheus service does not mount", rf)
			continue
		}
		localRules = append(localRules, filepath.ToSlash(filepath.Clean(filepath.Join(composeDir, host))))
	}
	if !slices.Equal(localRules, ruleFiles) {
		t.Errorf("compose Prometheus loads %v, want the shipped rule files %v in that order", localRules, ruleFiles)
	}
	var targets []string
	for _, sc := range pcfg.ScrapeConfigs {
		if sc.JobName == "revenprox" {
			for _, st := range sc.StaticConfigs {
				targets = append(targets, st.Targets...)
			}
		}
	}
	slices.Sort(targets)
	if want := []string{"proxy1:8080", "proxy2:8080", "proxy3:8080"}; !slices.Equal(targets, want) {
		t.Errorf("job revenprox scrapes %v, want %v", targets, want)
	}

	graf := mounts(svcs["grafana"])
	var prov struct {
		Providers []struct {
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	if err := yaml.Unmarshal(readFile(t, filepath.Join(composeDir, "grafana/provisioning/dashboards/revenprox.yaml")), &prov); err != nil || len(prov.Providers) != 1 {
		t.Fatalf("dashboard provisioning: %v", err)
	}
	if host := graf[prov.Providers[0].Options.Path]; filepath.Clean(filepath.Join(composeDir, host)) != filepath.Join("grafana", "dashboards") {
		t.Errorf("Grafana provisions %s, mounted from %q, want ../grafana/dashboards", prov.Providers[0].Options.Path, host)
	}
	if graf["/etc/grafana/provisioning"] != "./grafana/provisioning" {
		t.Errorf("Grafana must mount ./grafana/provisioning at /etc/grafana/provisioning")
	}

	// promtool checks the scrape config and, through rule_files rewritten to the repository
	// paths, the rules it would load.
	bin := promtool(t)
	rewritten := string(promYAML)
	for i, rf := range pcfg.RuleFiles {
		abs, _ := filepath.Abs(localRules[i])
		rewritten = strings.ReplaceAll(rewritten, rf, abs)
	}
	path := filepath.Join(t.TempDir(), "prometheus.yml")
	if err := os.WriteFile(path, []byte(rewritten), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, time.Minute, bin, "check", "config", path); err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
}

// TestComposeAuthWebhook runs the example webhook on loopback and checks it keeps the contract
// of design §5: signed requests only, allow with topic lists, deny, 5xx as failure.
func TestComposeAuthWebhook(t *testing.T) {
	py := tool(t, "python3")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, filepath.Join(composeDir, "auth-webhook.py"))
	cmd.Env = append(os.Environ(), "LISTEN=127.0.0.1:0", "WEBHOOK_SECRET=s3cret")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("webhook did not start: %v", err)
	}
	addr := strings.TrimSpace(strings.TrimPrefix(line, "listening on "))
	if _, _, err := net.SplitHostPort(addr); err != nil {
		t.Fatalf("unexpected start line %q", line)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	call := func(token string, sign bool) (int, map[string]any) {
		body, _ := json.Marshal(map[string]any{"token": token, "remote_addr": "127.0.0.1:5000",
			"headers": map[string]string{"Origin": "http://x"}, "node": "proxy1"})
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/verify", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if sign {
			mac := hmac.New(sha256.New, []byte("s3cret"))
			mac.Write(body)
			req.Header.Set("X-Revenprox-Signature", "sha256="+hex.EncodeToString(mac.Sum(nil)))
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	if code, out := call("demo-alice", true); code != 200 || out["allow"] != true || out["user"] != "u-alice" ||
		fmt.Sprint(out["subscribe"]) != "[chat.> public.>]" || fmt.Sprint(out["publish"]) != "[chat.>]" || out["ttl"] == nil {
		t.Errorf("demo token: %d %v", code, out)
	}
	if code, out := call("nobody", true); code != 200 || out["allow"] != false {
		t.Errorf("unknown token must be denied with 200 allow:false: %d %v", code, out)
	}
	if code, _ := call("demo-alice", false); code != 401 {
		t.Errorf("unsigned request: %d, want 401", code)
	}
	if code, _ := call("fail", true); code < 500 {
		t.Errorf("fail token: %d, want a 5xx (a failure for the breaker)", code)
	}
}

// TestDockerfile checks by reading what cannot be built here (no container engine): a static,
// trimmed build of ./cmd/revenprox with the version stamped, a non-root final stage with the
// ports and the default config, which the config package loads.
func TestDockerfile(t *testing.T) {
	df := string(readFile(t, "Dockerfile"))
	for _, want := range []string{
		`(?m)^FROM golang:1\.26\S* AS build$`,
		`CGO_ENABLED=0`, `-trimpath`, `-ldflags="-s -w -X main\.version=\$\{VERSION\}"`, `\./cmd/revenprox\b`,
		`(?m)^FROM gcr\.io/distroless/static-debian12:nonroot$`, `(?m)^USER 65532:65532$`,
		`(?m)^EXPOSE 8080 5555$`, `(?m)^COPY deploy/config\.yaml /etc/revenprox/config\.yaml$`,
		`(?m)^ENTRYPOINT \["/usr/local/bin/revenprox"\]$`, `(?m)^CMD \["serve", "-c", "/etc/revenprox/config\.yaml"\]$`,
	} {
		if !regexp.MustCompile(want).MatchString(df) {
			t.Errorf("Dockerfile lacks %s", want)
		}
	}
	if _, err := os.Stat("../cmd/revenprox"); err != nil {
		t.Errorf("the build target ./cmd/revenprox: %v", err)
	}
	ignore := string(readFile(t, "Dockerfile.dockerignore"))
	for _, needed := range []string{"go.mod", "go.sum", "deploy/config.yaml", "cmd", "deploy/Dockerfile"} {
		for _, l := range strings.Split(ignore, "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") && (l == needed || strings.HasPrefix(needed, l+"/")) {
				t.Errorf("Dockerfile.dockerignore excludes %s, which the build needs", needed)
			}
		}
	}
	if _, err := config.Load("config.yaml", nil); err != nil {
		t.Fatal(err)
	}
	cfg, _ := config.Load("config.yaml", nil)
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "auth.webhook_url") {
		t.Errorf("the image's default config must refuse to start without a webhook, naming auth.webhook_url: %v", err)
	}
	cfg, err := config.Load("config.yaml", []string{"REVENPROX_AUTH_ALLOW_ANONYMOUS=true"})
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		t.Errorf("the image's default config with REVENPROX_AUTH_ALLOW_ANONYMOUS=true: %v", err)
	}
}
