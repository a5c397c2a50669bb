package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/revenprox/revenprox/memtune"
	"github.com/revenprox/revenprox/topics"
)

// ErrInvalid is wrapped by every validation error; errors.Is(err, ErrInvalid) tells a bad
// configuration apart from an I/O error.
var ErrInvalid = errors.New("config: invalid")

// Config is the whole node configuration. Every field documents its default; Default returns
// exactly those values. YAML keys are the snake_case names in the `yaml` tags.
type Config struct {
	// NodeID names this node in logs, metrics, welcome frames and the cluster. Default: hostname.
	NodeID string `yaml:"node_id"`
	// Listen is the client listener (/ws, /health, /ready, /metrics, /stats, /cluster). Default ":8080".
	Listen string `yaml:"listen"`
	// Log selects level and format.
	Log LogConfig `yaml:"log"`
	// Limits protects the node from abusive clients.
	Limits LimitsConfig `yaml:"limits"`
	// Backpressure bounds each connection's outbound queue.
	Backpressure BackpressureConfig `yaml:"backpressure"`
	// Auth configures the webhook authenticator or anonymous mode.
	Auth AuthConfig `yaml:"auth"`
	// Cluster configures the NATS peer mesh. Empty: single node.
	Cluster ClusterConfig `yaml:"cluster"`
	// Admin configures the optional admin listener.
	Admin AdminConfig `yaml:"admin"`
	// Memory tunes the Go runtime's garbage collector.
	Memory MemoryConfig `yaml:"memory"`
	// PingInterval is how often the server pings each client; a peer silent for two intervals is
	// closed. Default 25s.
	PingInterval Duration `yaml:"ping_interval"`
	// DrainTimeout bounds graceful drain on SIGTERM/SIGINT. Default 30s.
	DrainTimeout Duration `yaml:"drain_timeout"`
}

// LogConfig selects log level and format.
type LogConfig struct {
	// Level is debug, info, warn or error. Default "info".
	Level string `yaml:"level"`
	// Format is text or json. Default "text".
	Format string `yaml:"format"`
}

// LimitsConfig holds per-node, per-IP and per-connection limits.
type LimitsConfig struct {
	// MaxConnections caps concurrent WebSocket connections; beyond it upgrades get HTTP 503. Default 100000.
	MaxConnections int `yaml:"max_connections"`
	// IPConnectRate is new connections per second allowed from one IP (burst equal to the rate);
	// beyond it HTTP 429. 0 disables. Default 50.
	IPConnectRate float64 `yaml:"ip_connect_rate"`
	// PublishRate is publishes per second allowed per connection (burst equal to the rate);
	// beyond it a rate_limited error, and close 4029 if it goes on. 0 disables. Default 100.
	PublishRate float64 `yaml:"publish_rate"`
	// MaxFrameBytes is the largest client frame accepted; larger closes with 1009. Default 65536.
	MaxFrameBytes int `yaml:"max_frame_bytes"`
	// MaxSubscriptions caps subscriptions per connection. Default 256.
	MaxSubscriptions int `yaml:"max_subscriptions"`
}

// Backpressure policies.
const (
	PolicyDisconnect = "disconnect"
	PolicyDropOldest = "drop_oldest"
	PolicyDropNewest = "drop_newest"
)

// MemoryConfig tunes the Go runtime's garbage collector.
type MemoryConfig struct {
	// GCFloorBytes is the heap size below which the garbage collector does not run (the heap
	// goal never drops under it while the live heap is smaller); above it Go's GOGC applies. 0
	// disables it, and so does setting the GOGC environment variable. Default 33554432 (32 MiB).
	GCFloorBytes int `yaml:"gc_floor_bytes"`
}

// BackpressureConfig bounds each connection's outbound queue.
type BackpressureConfig struct {
	// QueueBytes is the per-connection outbound queue bound in bytes. Default 1048576 (1 MiB).
	QueueBytes int `yaml:"queue_bytes"`
	// Policy applies when the queue is full: disconnect (close 4008), drop_oldest or drop_newest.
	// Default "disconnect".
	Policy string `yaml:"policy"`
}

// AuthConfig configures connection authentication.
type AuthConfig struct {
	// AllowAnonymous lets clients without a webhook decision connect with the Anonymous patterns.
	// Default false; the bundled development config sets it (and the node logs a WARN).
	AllowAnonymous bool `yaml:"allow_anonymous"`
	// Anonymous holds the topic patterns of anonymous clients. Default subscribe [">"], publish [">"].
	Anonymous ACLConfig `yaml:"anonymous"`
	// WebhookURL is the customer's auth endpoint (http or https). Default "" (none).
	WebhookURL string `yaml:"webhook_url"`
	// WebhookSecret signs each webhook body with HMAC-SHA256 when set. Default "".
	WebhookSecret string `yaml:"webhook_secret"`
	// Timeout bounds each webhook call. Default 1s.
	Timeout Duration `yaml:"timeout"`
	// Headers lists request headers forwarded to the webhook. Default ["Origin", "User-Agent"].
	Headers []string `yaml:"headers"`
	// Cache configures the decision cache.
	Cache AuthCacheConfig `yaml:"cache"`
	// Breaker configures the circuit breaker around the webhook.
	Breaker BreakerConfig `yaml:"breaker"`
}

// ACLConfig lists topic patterns.
type ACLConfig struct {
	// Subscribe lists patterns the client may subscribe to.
	Subscribe []string `yaml:"subscribe"`
	// Publish lists patterns the client may publish to.
	Publish []string `yaml:"publish"`
}

// AuthCacheConfig configures the webhook decision cache.
type AuthCacheConfig struct {
	// Size is the number of cached decisions. Default 100000.
	Size int `yaml:"size"`
	// MaxTTL caps the TTL of an allow decision. Default 5m.
	MaxTTL Duration `yaml:"max_ttl"`
	// NegativeTTL is how long a deny is cached. Default 5s.
	NegativeTTL Duration `yaml:"negative_ttl"`
	// StaleGrace is how long past expiry a decision may still be served while the webhook is
	// unavailable. Default 10m.
	StaleGrace Duration `yaml:"stale_grace"`
}

// BreakerConfig configures the webhook circuit breaker.
type BreakerConfig struct {
	// FailureThreshold is consecutive failures that open the breaker. Default 5.
	FailureThreshold int `yaml:"failure_threshold"`
	// OpenTimeout is how long the breaker stays open before half-open. Default 30s.
	OpenTimeout Duration `yaml:"open_timeout"`
	// HalfOpenProbes is calls let through while half-open. Default 1.
	HalfOpenProbes int `yaml:"half_open_probes"`
}

// ClusterConfig configures the NATS peer mesh.
type ClusterConfig struct {
	// Listen is the embedded NATS route listener. Default "" (single node, no cluster port);
	// ":5555" is the conventional value when clustering.
	Listen string `yaml:"listen"`
	// Peers lists route URLs of other nodes (nats-route://host:5555); DNS names allowed. Default none.
	Peers []string `yaml:"peers"`
	// Name is the NATS cluster name; all nodes of one mesh share it. Default "revenprox".
	Name string `yaml:"name"`
	// NATSURL points at an external NATS cluster; nothing is embedded. Default "".
	NATSURL string `yaml:"nats_url"`
	// HeartbeatInterval is how often this node announces itself. Default 1s.
	HeartbeatInterval Duration `yaml:"heartbeat_interval"`
	// SubjectPrefix prefixes topic subjects. Default "revenprox.t.".
	SubjectPrefix string `yaml:"subject_prefix"`
	// ClientListen is the embedded server's client port when clustered (a server without one
	// never forms routes); the node connects to its own server through it. Default "127.0.0.1:0".
	ClientListen string `yaml:"client_listen"`
	// RouteUser and RoutePassword protect routes when set. Default "".
	RouteUser     string `yaml:"route_user"`
	RoutePassword string `yaml:"route_password"`
	// TLS secures routes when CertFile and KeyFile are set.
	TLS TLSConfig `yaml:"tls"`
}

// TLSConfig names PEM files.
type TLSConfig struct {
	// CertFile is the certificate chain. Default "".
	CertFile string `yaml:"cert_file"`
	// KeyFile is the private key. Default "".
	KeyFile string `yaml:"key_file"`
	// CAFile verifies peers. Default "" (system roots).
	CAFile string `yaml:"ca_file"`
}

// AdminConfig configures the optional admin listener.
type AdminConfig struct {
	// Listen is the admin listener (POST /v1/publish, /debug/pprof/). Default "" (off).
	Listen string `yaml:"listen"`
	// APIKey is the Bearer key for the admin API; required when Listen is set. Default "".
	APIKey string `yaml:"api_key"`
}

// Clustered reports whether the node joins a mesh (embedded routes or external NATS).
func (c ClusterConfig) Clustered() bool { return c.Listen != "" || c.NATSURL != "" }

// Default returns the documented defaults.
func Default() Config {
	return Config{
		NodeID: defaultNodeID(),
		Listen: ":8080",
		Log:    LogConfig{Level: "info", Format: "text"},
		Limits: LimitsConfig{
			MaxConnections:   100000,
			IPConnectRate:    50,
			PublishRate:      100,
			MaxFrameBytes:    65536,
			MaxSubscriptions: 256,
		},
		Backpressure: BackpressureConfig{QueueBytes: 1 << 20, Policy: PolicyDisconnect},
		Memory:       MemoryConfig{GCFloorBytes: 32 << 20},
		Auth: AuthConfig{
			Anonymous: ACLConfig{Subscribe: []string{">"}, Publish: []string{">"}},
			Timeout:   Duration(time.Second),
			Headers:   []string{"Origin", "User-Agent"},
			Cache: AuthCacheConfig{
				Size:        100000,
				MaxTTL:      Duration(5 * time.Minute),
				NegativeTTL: Duration(5 * time.Second),
				StaleGrace:  Duration(10 * time.Minute),
			},
			Breaker: BreakerConfig{
				FailureThreshold: 5,
				OpenTimeout:      Duration(30 * time.Second),
				HalfOpenProbes:   1,
			},
		},
		Cluster: ClusterConfig{
			Name:              "revenprox",
			HeartbeatInterval: Duration(time.Second),
			SubjectPrefix:     "revenprox.t.",
			ClientListen:      "127.0.0.1:0",
		},
		PingInterval: Duration(25 * time.Second),
		DrainTimeout: Duration(30 * time.Second),
	}
}

func invalid(key string, value any, why string) error {
	return fmt.Errorf("%w: %s: %v: %s", ErrInvalid, key, value, why)
}

// Validate checks every key and returns the first error, naming the key and the bad value.
func (c *Config) Validate() error {
	if c.NodeID == "" || strings.ContainsAny(c.NodeID, " .*>\t\n") {
		return invalid("node_id", fmt.Sprintf("%q", c.NodeID), "must be non-empty without spaces, dots or wildcards")
	}
	if err := validateAddr("listen", c.Listen, false); err != nil {
		return err
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return invalid("log.level", c.Log.Level, "must be debug, info, warn or error")
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return invalid("log.format", c.Log.Format, "must be text or json")
	}
	l := c.Limits
	switch {
	case l.MaxConnections < 1:
		return invalid("limits.max_connections", l.MaxConnections, "must be at least 1")
	case l.IPConnectRate < 0:
		return invalid("limits.ip_connect_rate", l.IPConnectRate, "must be 0 (off) or positive")
	case l.PublishRate < 0:
		return invalid("limits.publish_rate", l.PublishRate, "must be 0 (off) or positive")
	case l.MaxFrameBytes < 256 || l.MaxFrameBytes > 16<<20:
		return invalid("limits.max_frame_bytes", l.MaxFrameBytes, "must be between 256 and 16777216")
	case l.MaxSubscriptions < 1:
		return invalid("limits.max_subscriptions", l.MaxSubscriptions, "must be at least 1")
	}
	if f := c.Memory.GCFloorBytes; f != 0 && f < memtune.GoHeapMinimum {
		return invalid("memory.gc_floor_bytes", f, "must be 0 (off) or at least 4194304 (4 MiB)")
	}
	if c.Backpressure.QueueBytes < 1024 {
		return invalid("backpressure.queue_bytes", c.Backpressure.QueueBytes, "must be at least 1024")
	}
	switch c.Backpressure.Policy {
	case PolicyDisconnect, PolicyDropOldest, PolicyDropNewest:
	default:
		return invalid("backpressure.policy", c.Backpressure.Policy, "must be disconnect, drop_oldest or drop_newest")
	}
	if err := c.validateAuth(); err != nil {
		return err
	}
	if err := c.validateCluster(); err != nil {
		return err
	}
	if c.Admin.Listen != "" {
		if err := validateAddr("admin.listen", c.Admin.Listen, false); err != nil {
			return err
		}
		if c.Admin.APIKey == "" {
			return invalid("admin.api_key", `""`, "required when admin.listen is set")
		}
	}
	if c.PingInterval.D() < 100*time.Millisecond {
		return invalid("ping_interval", c.PingInterval, "must be at least 100ms")
	}
	if c.DrainTimeout.D() < 0 {
		return invalid("drain_timeout", c.DrainTimeout, "must not be negative")
	}
	return nil
}

func (c *Config) validateAuth() error {
	a := c.Auth
	if a.WebhookURL == "" && !a.AllowAnonymous {
		return invalid("auth.webhook_url", `""`, "no webhook configured and auth.allow_anonymous is false: every connection would be refused; set auth.webhook_url or auth.allow_anonymous: true")
	}
	if a.WebhookURL != "" {
		u, err := url.Parse(a.WebhookURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return invalid("auth.webhook_url", a.WebhookURL, "must be an http or https URL")
		}
	}
	for i, p := range a.Anonymous.Subscribe {
		if err := topics.ValidatePattern(p); err != nil {
			return invalid(fmt.Sprintf("auth.anonymous.subscribe[%d]", i), p, err.Error())
		}
	}
	for i, p := range a.Anonymous.Publish {
		if err := topics.ValidatePattern(p); err != nil {
			return invalid(fmt.Sprintf("auth.anonymous.publish[%d]", i), p, err.Error())
		}
	}
	switch {
	case a.Timeout.D() <= 0:
		return invalid("auth.timeout", a.Timeout, "must be positive")
	case a.Cache.Size < 1:
		return invalid("auth.cache.size", a.Cache.Size, "must be at least 1")
	case a.Cache.MaxTTL.D() <= 0:
		return invalid("auth.cache.max_ttl", a.Cache.MaxTTL, "must be positive")
	case a.Cache.NegativeTTL.D() < 0:
		return invalid("auth.cache.negative_ttl", a.Cache.NegativeTTL, "must not be negative")
	case a.Cache.StaleGrace.D() < 0:
		return invalid("auth.cache.stale_grace", a.Cache.StaleGrace, "must not be negative")
	case a.Breaker.FailureThreshold < 1:
		return invalid("auth.breaker.failure_threshold", a.Breaker.FailureThreshold, "must be at least 1")
	case a.Breaker.OpenTimeout.D() <= 0:
		return invalid("auth.breaker.open_timeout", a.Breaker.OpenTimeout, "must be positive")
	case a.Breaker.HalfOpenProbes < 1:
		return invalid("auth.breaker.half_open_probes", a.Breaker.HalfOpenProbes, "must be at least 1")
	}
	return nil
}

func (c *Config) validateCluster() error {
	cl := c.Cluster
	if cl.Listen != "" {
		if err := validateAddr("cluster.listen", cl.Listen, false); err != nil {
			return err
		}
	}
	if cl.NATSURL != "" {
		if cl.Listen != "" {
			return invalid("cluster.nats_url", cl.NATSURL, "set either cluster.nats_url (external NATS) or cluster.listen (embedded mesh), not both")
		}
		for _, one := range strings.Split(cl.NATSURL, ",") {
			u, err := url.Parse(strings.TrimSpace(one))
			if err != nil || u.Host == "" {
				return invalid("cluster.nats_url", cl.NATSURL, "must be nats://host:port[,nats://host:port…]")
			}
		}
	}
	if len(cl.Peers) > 0 && cl.Listen == "" {
		return invalid("cluster.peers", cl.Peers, "needs cluster.listen")
	}
	for i, p := range cl.Peers {
		u, err := url.Parse(p)
		if err != nil || u.Host == "" || (u.Scheme != "nats-route" && u.Scheme != "nats" && u.Scheme != "tls") {
			return invalid(fmt.Sprintf("cluster.peers[%d]", i), p, "must be nats-route://host:port")
		}
	}
	if cl.HeartbeatInterval.D() < 10*time.Millisecond {
		return invalid("cluster.heartbeat_interval", cl.HeartbeatInterval, "must be at least 10ms")
	}
	if cl.SubjectPrefix == "" || !strings.HasSuffix(cl.SubjectPrefix, ".") || strings.ContainsAny(cl.SubjectPrefix, " *>") {
		return invalid("cluster.subject_prefix", cl.SubjectPrefix, "must end with '.' and contain no spaces or wildcards")
	}
	if cl.Name == "" || strings.ContainsAny(cl.Name, " .*>") {
		return invalid("cluster.name", cl.Name, "must be non-empty without spaces, dots or wildcards")
	}
	if (cl.TLS.CertFile == "") != (cl.TLS.KeyFile == "") {
		return invalid("cluster.tls", cl.TLS.CertFile+","+cl.TLS.KeyFile, "cert_file and key_file go together")
	}
	if (cl.RouteUser == "") != (cl.RoutePassword == "") {
		return invalid("cluster.route_user", cl.RouteUser, "route_user and route_password go together")
	}
	return nil
}

func validateAddr(key, addr string, allowEmpty bool) error {
	if addr == "" && allowEmpty {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return invalid(key, fmt.Sprintf("%q", addr), "must be host:port or :port")
	}
	return nil
}
