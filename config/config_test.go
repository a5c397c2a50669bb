package config

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// valid returns defaults that pass Validate: anonymous mode on, a fixed node id.
func valid() Config {
	c := Default()
	c.NodeID = "test-1"
	c.Auth.AllowAnonymous = true
	return c
}

func TestDefaultValidatesOnceAuthIsChosen(t *testing.T) {
	c := Default()
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "auth.webhook_url") || !strings.Contains(err.Error(), "allow_anonymous") {
		t.Fatalf("Default() without webhook or anonymous: got %v, want an error naming auth.webhook_url and allow_anonymous", err)
	}
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("error %v does not wrap ErrInvalid", err)
	}

	anon := Default()
	anon.Auth.AllowAnonymous = true
	if err := anon.Validate(); err != nil {
		t.Errorf("Default() + allow_anonymous: %v", err)
	}
	hook := Default()
	hook.Auth.WebhookURL = "https://auth.example.com/verify"
	if err := hook.Validate(); err != nil {
		t.Errorf("Default() + webhook_url: %v", err)
	}
	if hook.NodeID == "" || strings.Contains(hook.NodeID, ".") {
		t.Errorf("default node_id %q must be non-empty and dot-free (it becomes a NATS subject token)", hook.NodeID)
	}
}

// TestDefaultsMatchDesign pins the defaults that clients of the binary rely on (design §10).
func TestDefaultsMatchDesign(t *testing.T) {
	c := Default()
	checks := []struct {
		key       string
		got, want any
	}{
		{"listen", c.Listen, ":8080"},
		{"log.level", c.Log.Level, "info"},
		{"log.format", c.Log.Format, "text"},
		{"limits.max_connections", c.Limits.MaxConnections, 100000},
		{"limits.ip_connect_rate", c.Limits.IPConnectRate, 50.0},
		{"limits.publish_rate", c.Limits.PublishRate, 100.0},
		{"limits.max_frame_bytes", c.Limits.MaxFrameBytes, 65536},
		{"limits.max_subscriptions", c.Limits.MaxSubscriptions, 256},
		{"backpressure.queue_bytes", c.Backpressure.QueueBytes, 1048576},
		{"memory.gc_floor_bytes", c.Memory.GCFloorBytes, 33554432},
		{"backpressure.policy", c.Backpressure.Policy, "disconnect"},
		{"auth.allow_anonymous", c.Auth.AllowAnonymous, false},
		{"auth.anonymous.subscribe", c.Auth.Anonymous.Subscribe, []string{">"}},
		{"auth.anonymous.publish", c.Auth.Anonymous.Publish, []string{">"}},
		{"auth.timeout", c.Auth.Timeout.D(), time.Second},
		{"auth.cache.size", c.Auth.Cache.Size, 100000},
		{"auth.cache.max_ttl", c.Auth.Cache.MaxTTL.D(), 5 * time.Minute},
		{"auth.cache.negative_ttl", c.Auth.Cache.NegativeTTL.D(), 5 * time.Second},
		{"auth.cache.stale_grace", c.Auth.Cache.StaleGrace.D(), 10 * time.Minute},
		{"auth.breaker.failure_threshold", c.Auth.Breaker.FailureThreshold, 5},
		{"auth.breaker.open_timeout", c.Auth.Breaker.OpenTimeout.D(), 30 * time.Second},
		{"auth.breaker.half_open_probes", c.Auth.Breaker.HalfOpenProbes, 1},
		{"cluster.listen", c.Cluster.Listen, ""},
		{"cluster.nats_url", c.Cluster.NATSURL, ""},
		{"cluster.heartbeat_interval", c.Cluster.HeartbeatInterval.D(), time.Second},
		{"cluster.subject_prefix", c.Cluster.SubjectPrefix, "revenprox.t."},
		{"admin.listen", c.Admin.Listen, ""},
		{"ping_interval", c.PingInterval.D(), 25 * time.Second},
		{"drain_timeout", c.DrainTimeout.D(), 30 * time.Second},
	}
	for _, ch := range checks {
		if !reflect.DeepEqual(ch.got, ch.want) {
			t.Errorf("default %s = %v, want %v", ch.key, ch.got, ch.want)
		}
	}
	if c.Cluster.Clustered() {
		t.Error("a default node must be single: no cluster port, no external NATS")
	}
}

// TestValidateNamesKeyAndValue has one case per check in Validate, validateAuth and
// validateCluster: each error must wrap ErrInvalid and contain "key: value".
func TestValidateNamesKeyAndValue(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(c *Config)
		want   string // "key: value" as it must appear in the error
	}{
		// Validate
		{"empty node id", func(c *Config) { c.NodeID = "" }, `node_id: ""`},
		{"node id with dot", func(c *Config) { c.NodeID = "a.b" }, `node_id: "a.b"`},
		{"node id with space", func(c *Config) { c.NodeID = "a b" }, `node_id: "a b"`},
		{"listen without port", func(c *Config) { c.Listen = "8080" }, `listen: "8080"`},
		{"log level", func(c *Config) { c.Log.Level = "verbose" }, "log.level: verbose"},
		{"log format", func(c *Config) { c.Log.Format = "xml" }, "log.format: xml"},
		{"max connections", func(c *Config) { c.Limits.MaxConnections = 0 }, "limits.max_connections: 0"},
		{"ip connect rate", func(c *Config) { c.Limits.IPConnectRate = -1 }, "limits.ip_connect_rate: -1"},
		{"publish rate", func(c *Config) { c.Limits.PublishRate = -0.5 }, "limits.publish_rate: -0.5"},
		{"max frame too small", func(c *Config) { c.Limits.MaxFrameBytes = 100 }, "limits.max_frame_bytes: 100"},
		{"max frame too large", func(c *Config) { c.Limits.MaxFrameBytes = 17 << 20 }, "limits.max_frame_bytes: 17825792"},
		{"max subscriptions", func(c *Config) { c.Limits.MaxSubscriptions = 0 }, "limits.max_subscriptions: 0"},
		{"queue bytes", func(c *Config) { c.Backpressure.QueueBytes = 512 }, "backpressure.queue_bytes: 512"},
		{"gc floor below Go's minimum", func(c *Config) { c.Memory.GCFloorBytes = 1 << 20 }, "memory.gc_floor_bytes: 1048576"},
		{"policy", func(c *Config) { c.Backpressure.Policy = "block" }, "backpressure.policy: block"},
		{"admin listen", func(c *Config) { c.Admin.Listen = "admin"; c.Admin.APIKey = "k" }, `admin.listen: "admin"`},
		{"admin key missing", func(c *Config) { c.Admin.Listen = "127.0.0.1:8081" }, `admin.api_key: ""`},
		{"ping interval", func(c *Config) { c.PingInterval = Duration(50 * time.Millisecond) }, "ping_interval: 50ms"},
		{"drain timeout", func(c *Config) { c.DrainTimeout = Duration(-time.Second) }, "drain_timeout: -1s"},
		// validateAuth
		{"no webhook, no anonymous", func(c *Config) { c.Auth.AllowAnonymous = false }, `auth.webhook_url: ""`},
		{"webhook scheme", func(c *Config) { c.Auth.WebhookURL = "ftp://auth/verify" }, "auth.webhook_url: ftp://auth/verify"},
		{"webhook without host", func(c *Config) { c.Auth.WebhookURL = "http:///verify" }, "auth.webhook_url: http:///verify"},
		{"anonymous subscribe pattern", func(c *Config) { c.Auth.Anonymous.Subscribe = []string{"ok.>", "a..b"} }, "auth.anonymous.subscribe[1]: a..b"},
		{"anonymous publish pattern", func(c *Config) { c.Auth.Anonymous.Publish = []string{">.x"} }, "auth.anonymous.publish[0]: >.x"},
		{"auth timeout", func(c *Config) { c.Auth.Timeout = 0 }, "auth.timeout: 0s"},
		{"cache size", func(c *Config) { c.Auth.Cache.Size = 0 }, "auth.cache.size: 0"},
		{"cache max ttl", func(c *Config) { c.Auth.Cache.MaxTTL = 0 }, "auth.cache.max_ttl: 0s"},
		{"cache negative ttl", func(c *Config) { c.Auth.Cache.NegativeTTL = Duration(-time.Second) }, "auth.cache.negative_ttl: -1s"},
		{"cache stale grace", func(c *Config) { c.Auth.Cache.StaleGrace = Duration(-time.Minute) }, "auth.cache.stale_grace: -1m0s"},
		{"breaker threshold", func(c *Config) { c.Auth.Breaker.FailureThreshold = 0 }, "auth.breaker.failure_threshold: 0"},
		{"breaker open timeout", func(c *Config) { c.Auth.Breaker.OpenTimeout = 0 }, "auth.breaker.open_timeout: 0s"},
		{"breaker probes", func(c *Config) { c.Auth.Breaker.HalfOpenProbes = 0 }, "auth.breaker.half_open_probes: 0"},
		// validateCluster
		{"cluster listen", func(c *Config) { c.Cluster.Listen = "5555" }, `cluster.listen: "5555"`},
		{"nats url and listen", func(c *Config) { c.Cluster.Listen = ":5555"; c.Cluster.NATSURL = "nats://n:4222" }, "cluster.nats_url: nats://n:4222"},
		{"nats url malformed", func(c *Config) { c.Cluster.NATSURL = "nats://a:4222,nohost" }, "cluster.nats_url: nats://a:4222,nohost"},
		{"peers without listen", func(c *Config) { c.Cluster.Peers = []string{"nats-route://p2:5555"} }, "cluster.peers: [nats-route://p2:5555]"},
		{"peer scheme", func(c *Config) {
			c.Cluster.Listen = ":5555"
			c.Cluster.Peers = []string{"nats-route://p2:5555", "http://p3:5555"}
		}, "cluster.peers[1]: http://p3:5555"},
		{"heartbeat interval", func(c *Config) { c.Cluster.HeartbeatInterval = Duration(time.Millisecond) }, "cluster.heartbeat_interval: 1ms"},
		{"subject prefix without dot", func(c *Config) { c.Cluster.SubjectPrefix = "revenprox.t" }, "cluster.subject_prefix: revenprox.t"},
		{"subject prefix wildcard", func(c *Config) { c.Cluster.SubjectPrefix = "rp.*." }, "cluster.subject_prefix: rp.*."},
		{"cluster name", func(c *Config) { c.Cluster.Name = "my.mesh" }, "cluster.name: my.mesh"},
		{"tls cert without key", func(c *Config) { c.Cluster.TLS.CertFile = "cert.pem" }, "cluster.tls: cert.pem,"},
		{"route user without password", func(c *Config) { c.Cluster.RouteUser = "route" }, "cluster.route_user: route"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := valid()
			tc.mutate(&c)
			err := c.Validate()
			if err == nil {
				t.Fatalf("Validate accepted the configuration; want an error containing %q", tc.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not name the key and value %q", err, tc.want)
			}
		})
	}
}

func TestValidateAcceptsGoodVariants(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(c *Config)
	}{
		{"webhook only", func(c *Config) { c.Auth.AllowAnonymous = false; c.Auth.WebhookURL = "http://auth:9000/verify" }},
		{"embedded mesh", func(c *Config) {
			c.Cluster.Listen = ":5555"
			c.Cluster.Peers = []string{"nats-route://proxy2:5555", "nats://proxy3:5555", "tls://proxy4:5555"}
		}},
		{"external nats list", func(c *Config) { c.Cluster.NATSURL = "nats://n1:4222, nats://n2:4222" }},
		{"route credentials and tls", func(c *Config) {
			c.Cluster.Listen = ":5555"
			c.Cluster.RouteUser, c.Cluster.RoutePassword = "route", "secret"
			c.Cluster.TLS = TLSConfig{CertFile: "c.pem", KeyFile: "k.pem"}
		}},
		{"admin", func(c *Config) { c.Admin = AdminConfig{Listen: "127.0.0.1:8081", APIKey: "k"} }},
		{"limits off", func(c *Config) { c.Limits.IPConnectRate, c.Limits.PublishRate = 0, 0 }},
		{"policies", func(c *Config) { c.Backpressure.Policy = PolicyDropOldest }},
		{"drop newest", func(c *Config) { c.Backpressure.Policy = PolicyDropNewest }},
		{"no drain", func(c *Config) { c.DrainTimeout = 0 }},
		{"json debug", func(c *Config) { c.Log = LogConfig{Level: "debug", Format: "json"} }},
		{"ipv6 listen", func(c *Config) { c.Listen = "[::1]:8080" }},
		{"empty anonymous lists", func(c *Config) { c.Auth.Anonymous = ACLConfig{} }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := valid()
			tc.mutate(&c)
			if err := c.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
}

// TestSetEveryKey assigns every key of Keys() from its string form and reads it back, so no
// field type can be left unsupported by env variables and -set.
func TestSetEveryKey(t *testing.T) {
	c := valid()
	walk(reflect.ValueOf(&c).Elem(), "", func(key string, f reflect.Value) {
		var in string
		var want any
		switch f.Interface().(type) {
		case Duration:
			in, want = "1m30s", Duration(90*time.Second)
		case string:
			in, want = "value-of-"+key, "value-of-"+key
		case bool:
			in, want = "true", true
		case int:
			in, want = "4242", 4242
		case float64:
			in, want = "12.5", 12.5
		case []string:
			in, want = " a.b , c.> ,, ", []string{"a.b", "c.>"}
		default:
			t.Errorf("key %s has type %s, which Set does not support", key, f.Type())
			return
		}
		if err := c.Set(key, in); err != nil {
			t.Errorf("Set(%q, %q): %v", key, in, err)
			return
		}
		if got := f.Interface(); !reflect.DeepEqual(got, want) {
			t.Errorf("after Set(%q, %q): got %#v, want %#v", key, in, got, want)
		}
	})
}

func TestSetRejectsBadValues(t *testing.T) {
	cases := []struct{ key, value, want string }{
		{"drain_timeout", "30", `drain_timeout: "30": not a duration`},
		{"auth.cache.max_ttl", "five minutes", `auth.cache.max_ttl: "five minutes": not a duration`},
		{"auth.allow_anonymous", "yes please", `auth.allow_anonymous: "yes please": not a boolean`},
		{"limits.max_connections", "lots", `limits.max_connections: "lots": not an integer`},
		{"limits.max_connections", "1.5", `limits.max_connections: "1.5": not an integer`},
		{"limits.publish_rate", "fast", `limits.publish_rate: "fast": not a number`},
		{"limits.nope", "1", "limits.nope: unknown key"},
		{"limits", "1", "limits: unknown key"}, // a section is not a key
		{"", "1", ": unknown key"},
	}
	for _, tc := range cases {
		c := valid()
		before := c
		err := c.Set(tc.key, tc.value)
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Set(%q, %q) = %v, want an ErrInvalid containing %q", tc.key, tc.value, err, tc.want)
		}
		if !reflect.DeepEqual(c, before) {
			t.Errorf("Set(%q, %q) failed but changed the configuration", tc.key, tc.value)
		}
	}
}

func TestSetEmptyListClears(t *testing.T) {
	c := valid()
	if err := c.Set("auth.anonymous.publish", ""); err != nil {
		t.Fatal(err)
	}
	if len(c.Auth.Anonymous.Publish) != 0 {
		t.Errorf("publish = %q, want empty (anonymous clients may not publish)", c.Auth.Anonymous.Publish)
	}
}

// flatten turns a decoded YAML mapping into dotted leaf keys.
func flatten(prefix string, m map[string]any, out *[]string) {
	for k, v := range m {
		if sub, ok := v.(map[string]any); ok {
			flatten(prefix+k+".", sub, out)
			continue
		}
		*out = append(*out, prefix+k)
	}
}

// TestKeysCoverEveryYAMLField compares Keys() with the leaves of the YAML that Default()
// marshals to, an independent walk of the same struct.
func TestKeysCoverEveryYAMLField(t *testing.T) {
	c := valid()
	c.Cluster.Peers = []string{"nats-route://p:5555"} // non-nil lists marshal as sequences
	raw, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	var fromYAML []string
	flatten("", m, &fromYAML)
	sort.Strings(fromYAML)

	keys := Keys()
	sorted := slices.Clone(keys)
	sort.Strings(sorted)
	if !slices.Equal(sorted, fromYAML) {
		t.Errorf("Keys() and the marshalled YAML differ\nKeys(): %q\nYAML:   %q", sorted, fromYAML)
	}
	if len(slices.Compact(sorted)) != len(keys) {
		t.Errorf("Keys() has duplicates: %q", keys)
	}
	env := envKeys()
	if len(env) != len(keys) {
		t.Errorf("%d keys map to %d environment variables: two keys share a name", len(keys), len(env))
	}
	for _, must := range []string{"cluster.name", "cluster.subject_prefix", "cluster.client_listen", "cluster.route_user",
		"cluster.route_password", "cluster.tls.cert_file", "cluster.tls.key_file", "cluster.tls.ca_file",
		"auth.headers", "ping_interval", "auth.anonymous.subscribe"} {
		if !slices.Contains(keys, must) {
			t.Errorf("Keys() lacks %s", must)
		}
	}
}

func TestRedactedHidesSecrets(t *testing.T) {
	c := valid()
	c.Auth.WebhookURL = "https://auth.example.com/verify"
	c.Auth.WebhookSecret = "hook-secret-1"
	c.Admin = AdminConfig{Listen: "127.0.0.1:8081", APIKey: "admin-secret-2"}
	c.Cluster.Listen = ":5555"
	c.Cluster.RouteUser, c.Cluster.RoutePassword = "route", "route-secret-3"
	r := c.Redacted()
	raw, err := yaml.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"hook-secret-1", "admin-secret-2", "route-secret-3"} {
		if strings.Contains(string(raw)+fmt.Sprintf("%+v", r), secret) {
			t.Errorf("redacted configuration still shows %q", secret)
		}
	}
	if r.Auth.WebhookSecret != "REDACTED" || r.Admin.APIKey != "REDACTED" || r.Cluster.RoutePassword != "REDACTED" {
		t.Errorf("secrets not replaced: %+v", r)
	}
	if c.Auth.WebhookSecret != "hook-secret-1" || c.Admin.APIKey != "admin-secret-2" || c.Cluster.RoutePassword != "route-secret-3" {
		t.Error("Redacted changed the original")
	}
	if r.Auth.WebhookURL != c.Auth.WebhookURL || r.Cluster.RouteUser != "route" {
		t.Error("Redacted hid a value that is not a secret")
	}
	empty := valid().Redacted()
	if empty.Auth.WebhookSecret != "" || empty.Admin.APIKey != "" || empty.Cluster.RoutePassword != "" {
		t.Error("an unset secret must stay empty, so the output shows it is not set")
	}
}

func TestClustered(t *testing.T) {
	for _, tc := range []struct {
		cl   ClusterConfig
		want bool
	}{
		{ClusterConfig{}, false},
		{ClusterConfig{Listen: ":5555"}, true},
		{ClusterConfig{NATSURL: "nats://n:4222"}, true},
		{ClusterConfig{Peers: []string{"nats-route://p:5555"}}, false},
	} {
		if got := tc.cl.Clustered(); got != tc.want {
			t.Errorf("%+v.Clustered() = %v, want %v", tc.cl, got, tc.want)
		}
	}
}
