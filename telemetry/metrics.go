package telemetry

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Namespace prefixes every RevenProx metric.
const Namespace = "revenprox"

// Label values of connections_rejected_total{reason}.
const (
	RejectMaxConnections  = "max_connections"
	RejectRateLimit       = "rate_limit"
	RejectUnauthorized    = "unauthorized"
	RejectAuthUnavailable = "auth_unavailable"
	RejectDraining        = "draining"
)

// Label values of messages_received_total{source}.
const (
	SourceClient  = "client"
	SourceAPI     = "api"
	SourceCluster = "cluster"
)

// Label values of messages_dropped_total{reason}.
const (
	DropQueueFull    = "queue_full"    // drop_oldest / drop_newest evicted a frame
	DropSlowConsumer = "slow_consumer" // frames discarded when a slow consumer was disconnected
	DropClosed       = "closed"        // frames still queued when a connection closed abruptly
	DropNATS         = "nats"          // cross-node messages lost to a NATS slow consumer
)

// Label values of auth_requests_total{result}.
const (
	AuthAllow = "allow"
	AuthDeny  = "deny"
	AuthError = "error"
)

// LatencyBuckets resolve 0.1 ms to 10 s (design §8, message_latency_seconds).
var LatencyBuckets = []float64{
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// Metrics is the one registry of every RevenProx metric (design §8). Each node has its own, so
// several nodes can run in one test process. Fields are safe for concurrent use.
type Metrics struct {
	Registry *prometheus.Registry

	ConnectionsActive   prometheus.Gauge
	ConnectionsLimit    prometheus.Gauge // limits.max_connections, so alerts follow the configuration
	ConnectionsTotal    prometheus.Counter
	ConnectionsRejected *prometheus.CounterVec // reason
	ConnectionDuration  prometheus.Histogram

	MessagesReceived *prometheus.CounterVec // source
	MessagesSent     prometheus.Counter
	MessagesDropped  *prometheus.CounterVec // reason
	BytesSent        prometheus.Counter
	BytesReceived    prometheus.Counter
	MessageLatency   prometheus.Histogram

	AuthRequests        *prometheus.CounterVec // result
	AuthCacheHits       prometheus.Counter
	AuthCacheMisses     prometheus.Counter
	AuthFailures        prometheus.Counter
	AuthWebhookDuration prometheus.Histogram
	CircuitBreakerState prometheus.Gauge

	PeersConnected      prometheus.Gauge
	SyncMessagesSent    prometheus.Counter
	SyncLag             prometheus.Gauge
	TopicsActive        prometheus.Gauge
	ClusterMessagesSent prometheus.Counter // revenprox_cluster_messages_published_total
}

// NewMetrics creates and registers every metric, plus the go_* and process_* collectors.
func NewMetrics() *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{Registry: reg}
	f := factory{reg}

	m.ConnectionsActive = f.gauge("connections_active", "WebSocket connections currently open.")
	m.ConnectionsLimit = f.gauge("connections_limit", "Configured limits.max_connections: connections beyond it are refused with HTTP 503.")
	m.ConnectionsTotal = f.counter("connections_total", "WebSocket connections accepted since start.")
	m.ConnectionsRejected = f.counterVec("connections_rejected_total", "Connection attempts refused, by reason.", "reason",
		RejectMaxConnections, RejectRateLimit, RejectUnauthorized, RejectAuthUnavailable, RejectDraining)
	m.ConnectionDuration = f.histogram("connection_duration_seconds", "Lifetime of closed connections.",
		[]float64{1, 10, 60, 300, 900, 3600, 4 * 3600, 24 * 3600})

	m.MessagesReceived = f.counterVec("messages_received_total", "Publications entering this node, by source.", "source",
		SourceClient, SourceAPI, SourceCluster)
	m.MessagesSent = f.counter("messages_sent_total", "Message frames written to subscriber sockets.")
	m.MessagesDropped = f.counterVec("messages_dropped_total", "Message frames not delivered, by reason.", "reason",
		DropQueueFull, DropSlowConsumer, DropClosed, DropNATS)
	m.BytesSent = f.counter("bytes_sent_total", "Bytes of WebSocket frames written to client sockets.")
	m.BytesReceived = f.counter("bytes_received_total", "Bytes of WebSocket messages read from clients.")
	m.MessageLatency = f.histogram("message_latency_seconds",
		"Time from ingress (on the node where the message entered) to the frame written to the subscriber's socket.",
		LatencyBuckets)

	m.AuthRequests = f.counterVec("auth_requests_total", "Authentication decisions, by result.", "result",
		AuthAllow, AuthDeny, AuthError)
	m.AuthCacheHits = f.counter("auth_cache_hits_total", "Authentications answered from the decision cache.")
	m.AuthCacheMisses = f.counter("auth_cache_misses_total", "Authentications that needed the webhook.")
	m.AuthFailures = f.counter("auth_failures_total", "Webhook calls that failed (timeout, connection error, 5xx, 429, bad body) or were refused by the open breaker.")
	m.AuthWebhookDuration = f.histogram("auth_webhook_duration_seconds", "Duration of webhook calls.",
		[]float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10})
	m.CircuitBreakerState = f.gauge("circuit_breaker_state", "Webhook circuit breaker: 0 closed, 1 open, 2 half-open.")

	m.PeersConnected = f.gauge("peers_connected", "Peers whose last heartbeat is younger than 3 intervals.")
	m.SyncMessagesSent = f.counter("sync_messages_sent_total", "Cluster state messages (heartbeats) sent.")
	m.SyncLag = f.gauge("sync_lag_seconds", "Age of the oldest last-heartbeat among known peers.")
	m.TopicsActive = f.gauge("topics_active", "Subscription patterns with at least one local subscriber.")
	m.ClusterMessagesSent = f.counter("cluster_messages_published_total", "Publications forwarded to the NATS mesh.")

	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

type factory struct{ reg prometheus.Registerer }

func (f factory) gauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: name, Help: help})
	f.reg.MustRegister(g)
	return g
}

func (f factory) counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: name, Help: help})
	f.reg.MustRegister(c)
	return c
}

// counterVec registers a counter with one label and creates each known value, so every series
// is exported (at 0) from the first scrape and rate() works from the start.
func (f factory) counterVec(name, help, label string, values ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: name, Help: help}, []string{label})
	for _, v := range values {
		c.WithLabelValues(v)
	}
	f.reg.MustRegister(c)
	return c
}

func (f factory) histogram(name, help string, buckets []float64) prometheus.Histogram {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Name: name, Help: help, Buckets: buckets})
	f.reg.MustRegister(h)
	return h
}
