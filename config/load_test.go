package config

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// writeFile writes a YAML file into the test's temporary directory.
func writeFile(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "revenprox.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadYAMLFile(t *testing.T) {
	path := writeFile(t, `
node_id: proxy-7
listen: "127.0.0.1:9000"
log: {level: debug, format: json}
limits: {max_connections: 5000, ip_connect_rate: 2.5, max_subscriptions: 8}
backpressure: {queue_bytes: 65536, policy: drop_oldest}
auth:
  webhook_url: http://auth:9000/verify
  webhook_secret: s3cret
  timeout: 250ms
  headers: [Origin, X-Tenant]
  anonymous: {subscribe: ["public.>"], publish: []}
  cache: {size: 10, max_ttl: 1m, negative_ttl: 0s, stale_grace: 1h}
  breaker: {failure_threshold: 3, open_timeout: 10s, half_open_probes: 2}
cluster:
  listen: ":5555"
  peers: ["nats-route://proxy2:5555", "nats-route://proxy3:5555"]
  name: mesh-a
  heartbeat_interval: 500ms
  tls: {cert_file: /tls/tls.crt, key_file: /tls/tls.key, ca_file: /tls/ca.crt}
admin: {listen: "127.0.0.1:8081", api_key: k}
ping_interval: 10s
drain_timeout: 3s
`)
	c, err := Load(path, nil)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	want := Default()
	want.NodeID = "proxy-7"
	want.Listen = "127.0.0.1:9000"
	want.Log = LogConfig{Level: "debug", Format: "json"}
	want.Limits.MaxConnections, want.Limits.IPConnectRate, want.Limits.MaxSubscriptions = 5000, 2.5, 8
	want.Backpressure = BackpressureConfig{QueueBytes: 65536, Policy: PolicyDropOldest}
	want.Auth.WebhookURL, want.Auth.WebhookSecret = "http://auth:9000/verify", "s3cret"
	want.Auth.Timeout = Duration(250 * time.Millisecond)
	want.Auth.Headers = []string{"Origin", "X-Tenant"}
	want.Auth.Anonymous = ACLConfig{Subscribe: []string{"public.>"}, Publish: []string{}}
	want.Auth.Cache = AuthCacheConfig{Size: 10, MaxTTL: Duration(time.Minute), NegativeTTL: 0, StaleGrace: Duration(time.Hour)}
	want.Auth.Breaker = BreakerConfig{FailureThreshold: 3, OpenTimeout: Duration(10 * time.Second), HalfOpenProbes: 2}
	want.Cluster.Listen = ":5555"
	want.Cluster.Peers = []string{"nats-route://proxy2:5555", "nats-route://proxy3:5555"}
	want.Cluster.Name = "mesh-a"
	want.Cluster.HeartbeatInterval = Duration(500 * time.Millisecond)
	want.Cluster.TLS = TLSConfig{CertFile: "/tls/tls.crt", KeyFile: "/tls/tls.key", CAFile: "/tls/ca.crt"}
	want.Admin = AdminConfig{Listen: "127.0.0.1:8081", APIKey: "k"}
	want.PingInterval = Duration(10 * time.Second)
	want.DrainTimeout = Duration(3 * time.Second)
	if d := diffConfig(c, want); len(d) > 0 {
		t.Errorf("loaded configuration differs from the file:\n%s", strings.Join(d, "\n"))
	}
}

// diffConfig lists the keys whose values differ.
func diffConfig(a, b Config) []string {
	values := func(c *Config) map[string]string {
		m := map[string]string{}
		walk(reflect.ValueOf(c).Elem(), "", func(key string, f reflect.Value) { m[key] = fmt.Sprintf("%#v", f.Interface()) })
		return m
	}
	va, vb := values(&a), values(&b)
	var diff []string
	for _, k := range Keys() {
		if va[k] != vb[k] {
			diff = append(diff, k+": "+va[k]+" != "+vb[k])
		}
	}
	return diff
}

func TestLoadEmptyFileKeepsDefaults(t *testing.T) {
	for _, body := range []string{"", "# only a comment\n", "---\n"} {
		c, err := Load(writeFile(t, body), nil)
		if err != nil {
			t.Fatalf("Load(%q): %v", body, err)
		}
		if d := diffConfig(c, Default()); len(d) > 0 {
			t.Errorf("Load(%q) changed defaults: %q", body, d)
		}
	}
}

func TestLoadYAMLErrorsNameKeyAndLine(t *testing.T) {
	cases := []struct {
		name string
		body string
		want []string
	}{
		{"unknown top-level key", "listen: \":8080\"\nlisten_addr: \":9090\"\n", []string{"line 2", "listen_addr"}},
		{"unknown nested key", "limits:\n  max_connections: 5\n  max_conns: 5\n", []string{"line 3", "max_conns"}},
		{"misspelt section", "clsuter:\n  listen: \":5555\"\n", []string{"line 1", "clsuter"}},
		{"bad duration", "auth:\n  timeout: 1 second\n", []string{"line 2", `"1 second"`, "duration"}},
		{"number as duration", "drain_timeout: 30\n", []string{"line 1", `"30"`, "duration"}},
		{"string as integer", "limits:\n  max_connections: lots\n", []string{"line 2", "lots"}},
		{"scalar as list", "cluster:\n  peers: nats-route://p:5555\n", []string{"line 2"}},
		{"not yaml", "listen: [\n", []string{"yaml"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, tc.body)
			_, err := Load(path, nil)
			if err == nil {
				t.Fatalf("Load accepted %q", tc.body)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			for _, w := range append(tc.want, path) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "absent.yaml"), nil)
	if err == nil || !errors.Is(err, os.ErrNotExist) || errors.Is(err, ErrInvalid) {
		t.Fatalf("Load(missing) = %v, want an I/O error (not ErrInvalid) wrapping os.ErrNotExist", err)
	}
	if !strings.Contains(err.Error(), "absent.yaml") {
		t.Errorf("error %q does not name the file", err)
	}
}

func TestLoadEnvironment(t *testing.T) {
	c, err := Load("", []string{
		"PATH=/usr/bin",                      // not ours: ignored
		"REVENPROX_LIMITS_MAX_CONNECTIONS=5", // int
		"REVENPROX_AUTH_WEBHOOK_URL=http://auth:9000/verify",
		"REVENPROX_CLUSTER_LISTEN=:5555",
		"REVENPROX_CLUSTER_PEERS=nats-route://proxy2:5555, nats-route://proxy3:5555",
		"REVENPROX_AUTH_ALLOW_ANONYMOUS=true",
		"REVENPROX_LIMITS_PUBLISH_RATE=2.5",
		"REVENPROX_DRAIN_TIMEOUT=3s",
		"REVENPROX_CLUSTER_TLS_CA_FILE=/tls/ca.crt",
		"REVENPROX_NODE_ID=proxy-9",
		"NOT_AN_ASSIGNMENT",
	})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.Limits.MaxConnections != 5 || c.Auth.WebhookURL != "http://auth:9000/verify" || !c.Auth.AllowAnonymous ||
		c.Limits.PublishRate != 2.5 || c.DrainTimeout.D() != 3*time.Second || c.Cluster.TLS.CAFile != "/tls/ca.crt" ||
		c.NodeID != "proxy-9" || c.Cluster.Listen != ":5555" {
		t.Errorf("environment not applied: %+v", c)
	}
	if want := []string{"nats-route://proxy2:5555", "nats-route://proxy3:5555"}; !slices.Equal(c.Cluster.Peers, want) {
		t.Errorf("cluster.peers = %q, want %q", c.Cluster.Peers, want)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

func TestLoadEnvironmentErrors(t *testing.T) {
	cases := []struct {
		env  string
		want []string
	}{
		{"REVENPROX_FOO=1", []string{"REVENPROX_FOO", "unknown"}},
		{"REVENPROX_LIMITS=1", []string{"REVENPROX_LIMITS", "unknown"}},
		{"REVENPROX_LIMITS_MAX_CONNECTIONS=lots", []string{"REVENPROX_LIMITS_MAX_CONNECTIONS", "limits.max_connections", `"lots"`}},
		{"REVENPROX_DRAIN_TIMEOUT=30", []string{"REVENPROX_DRAIN_TIMEOUT", "drain_timeout", `"30"`}},
		{"REVENPROX_AUTH_ALLOW_ANONYMOUS=maybe", []string{"REVENPROX_AUTH_ALLOW_ANONYMOUS", "auth.allow_anonymous", `"maybe"`}},
	}
	for _, tc := range cases {
		_, err := Load("", []string{tc.env})
		if err == nil || !errors.Is(err, ErrInvalid) {
			t.Errorf("Load(env %s) = %v, want an ErrInvalid", tc.env, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("env %s: error %q does not contain %q", tc.env, err, w)
			}
		}
	}
}

// TestPrecedence checks defaults < file < environment < flags (flags are Set calls).
func TestPrecedence(t *testing.T) {
	path := writeFile(t, "limits: {max_connections: 10, max_subscriptions: 11}\nlisten: \":1111\"\n")
	env := []string{"REVENPROX_LIMITS_MAX_CONNECTIONS=20", "REVENPROX_LISTEN=:2222"}

	fileOnly, err := Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fileOnly.Limits.MaxConnections != 10 || fileOnly.Listen != ":1111" || fileOnly.Limits.MaxFrameBytes != 65536 {
		t.Errorf("file over defaults: %+v", fileOnly.Limits)
	}
	c, err := Load(path, env)
	if err != nil {
		t.Fatal(err)
	}
	if c.Limits.MaxConnections != 20 || c.Listen != ":2222" {
		t.Errorf("environment must override the file: max_connections=%d listen=%s", c.Limits.MaxConnections, c.Listen)
	}
	if c.Limits.MaxSubscriptions != 11 {
		t.Errorf("a key the environment does not set keeps the file's value; got %d", c.Limits.MaxSubscriptions)
	}
	if err := c.Set("listen", ":3333"); err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":3333" || c.Limits.MaxConnections != 20 {
		t.Errorf("flag must override the environment: listen=%s", c.Listen)
	}
}

// TestBundledDevConfig loads configs/dev.yaml, the file the README and compose files use.
func TestBundledDevConfig(t *testing.T) {
	c, err := Load(filepath.Join("..", "configs", "dev.yaml"), nil)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if !c.Auth.AllowAnonymous || c.Auth.WebhookURL != "" {
		t.Errorf("the dev config is anonymous without a webhook: %+v", c.Auth)
	}
	if c.NodeID != "dev-1" || c.Listen != ":8080" {
		t.Errorf("dev node: id %q listen %q", c.NodeID, c.Listen)
	}
}

// FuzzLoadYAML: decoding never panics, and Validate never panics on whatever decodes.
func FuzzLoadYAML(f *testing.F) {
	if dev, err := os.ReadFile(filepath.Join("..", "configs", "dev.yaml")); err == nil {
		f.Add(dev)
	}
	for _, seed := range []string{
		"",
		"listen: \":8080\"\n",
		"limits: {max_connections: -1, max_frame_bytes: 99999999999}\n",
		"auth: {timeout: 1s, cache: {max_ttl: -5m}}\n",
		"drain_timeout: 1 second\n",
		"cluster: {listen: \":5555\", peers: [\"nats-route://a:5555\", \"::\"]}\n",
		"cluster: {nats_url: \"nats://a:1,,\"}\n",
		"auth: {anonymous: {subscribe: [\">\", \"a.*.>\", \"\"]}}\n",
		"node_id: !!binary aGVsbG8=\n",
		"ping_interval: {a: 1}\n",
		"&a [*a]\n",
		"log: [1, 2]\n",
		"? [a]\n: b\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		c := Default()
		if err := decodeYAML(raw, &c); err != nil {
			return
		}
		_ = c.Validate()
		_ = c.Redacted()
	})
}

// docKeyRow matches a reference table row of docs/configuration.md: | `key` | … | `REVENPROX_…` |
var docKeyRow = regexp.MustCompile("^\\|\\s*`([a-z_.]+)`\\s*\\|(.*)$")

// TestDocsListEveryKey keeps docs/configuration.md in step with Config: every key has a table
// row with its environment variable, and every row names a real key.
func TestDocsListEveryKey(t *testing.T) {
	f, err := os.Open(filepath.Join("..", "docs", "configuration.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := docKeyRow.FindStringSubmatch(sc.Text()); m != nil {
			rows[m[1]] = m[2]
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for name, key := range envKeys() {
		env[key] = name
	}
	for _, key := range Keys() {
		row, ok := rows[key]
		if !ok {
			t.Errorf("docs/configuration.md has no table row for key %s", key)
			continue
		}
		if !strings.Contains(row, "`"+env[key]+"`") {
			t.Errorf("docs/configuration.md row for %s does not give its environment variable %s", key, env[key])
		}
	}
	for key := range rows {
		if !slices.Contains(Keys(), key) {
			t.Errorf("docs/configuration.md documents %s, which is not a key", key)
		}
	}
}

// TestDocsExamplesValidate loads every YAML example of docs/configuration.md (except the
// docker-compose excerpt) and validates it, supplying the secrets the examples take from the
// environment.
func TestDocsExamplesValidate(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "docs", "configuration.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(raw), -1)
	checked := 0
	for i, b := range blocks {
		if strings.Contains(b[1], "services:") {
			continue
		}
		c := Default()
		c.NodeID = "doc-node"
		if err := decodeYAML([]byte(b[1]), &c); err != nil {
			t.Errorf("example %d does not load: %v\n%s", i, err, b[1])
			continue
		}
		if c.Admin.Listen != "" && c.Admin.APIKey == "" {
			c.Admin.APIKey = "from-env"
		}
		if c.Cluster.RouteUser != "" && c.Cluster.RoutePassword == "" {
			c.Cluster.RoutePassword = "from-env"
		}
		if err := c.Validate(); err != nil {
			t.Errorf("example %d does not validate: %v\n%s", i, err, b[1])
		}
		checked++
	}
	if checked < 3 {
		t.Errorf("checked %d examples, want the dev, single-node and cluster examples", checked)
	}
}
