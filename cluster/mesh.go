package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/revenprox/revenprox/config"
	"github.com/revenprox/revenprox/telemetry"
	"github.com/revenprox/revenprox/topics"
)

// Sentinel errors.
var (
	ErrOptions = errors.New("cluster: invalid options")
	ErrStarted = errors.New("cluster: already started")
	ErrClosed  = errors.New("cluster: shut down")
	ErrServer  = errors.New("cluster: embedded NATS server failed")
	ErrConnect = errors.New("cluster: NATS connection failed")
)

// Mode names how the node reaches NATS.
const (
	ModeSingle   = "single"   // embedded server, no listener, in-process connection
	ModeEmbedded = "embedded" // embedded server with routes to peers
	ModeExternal = "external" // cluster.nats_url, nothing embedded
)

const (
	// deliverQueueLen bounds the messages received from NATS and not yet handed to Deliver.
	// All pattern subscriptions share it (one dispatcher goroutine); when it is full nats.go
	// drops the message and flags a slow consumer, which is counted and logged.
	deliverQueueLen = 16384
	// heartbeatQueueLen bounds heartbeats not yet processed by the heartbeat loop.
	heartbeatQueueLen = 1024
	// TopTopics is how many patterns a heartbeat carries (the most subscribed ones).
	TopTopics = 10
	// peerTimeoutBeats: a peer is connected while its last heartbeat is younger than this many
	// heartbeat intervals (design §6).
	peerTimeoutBeats = 3
	// startTimeout bounds the wait for the embedded server when ctx has no deadline.
	startTimeout = 10 * time.Second
)

// Header names on every publication (design §6). NATS headers are case-sensitive.
const (
	HeaderNode = "Rp-Node"
	HeaderTs   = "Rp-Ts"
)

// Message is one publication received from NATS.
type Message struct {
	Pattern string          // the local subscription pattern whose NATS subscription received it
	Topic   string          // literal topic (subject minus prefix)
	Data    []byte          // payload as published (JSON from RevenProx nodes; any bytes from other NATS clients)
	Ingress time.Time       // from header Rp-Ts (unix nanos); receive time when absent
	Origin  string          // header Rp-Node; "" for plain NATS clients
	Ctx     context.Context // remote trace context extracted from traceparent/tracestate, based on context.Background()
}

// NodeStats is what a heartbeat carries about this node.
type NodeStats struct {
	Connections int
	Topics      []topics.PatternCount // the most subscribed patterns; the heartbeat keeps TopTopics of them
	TopicCount  int                   // patterns with at least one local subscriber
}

// Options configure a Mesh.
type Options struct {
	Config  config.ClusterConfig
	NodeID  string
	Version string
	Metrics *telemetry.Metrics
	Log     *slog.Logger
	Deliver func(m *Message) // called for every message from NATS, from one goroutine, in arrival order
	// DeliverDone, when set, is called on the same goroutine after Deliver has been called for
	// every message that was waiting: the receiver can batch its socket writes per burst.
	DeliverDone func()
	Stats       func() NodeStats // called once per heartbeat, from the heartbeat goroutine
}

type lifecycle int32

const (
	stateNew lifecycle = iota
	stateStarting
	stateStarted
	stateClosed
)

// Mesh is one node's membership in the peer mesh. Create with New, then Start.
type Mesh struct {
	opts     Options
	log      *slog.Logger
	metrics  *telemetry.Metrics
	mode     string
	prefix   string // topic subjects: prefix + topic
	hbPrefix string // heartbeat subjects: hbPrefix + node id
	interval time.Duration

	mu    sync.Mutex // guards state, srv, subs, hbSub and the closing sequence
	state lifecycle
	srv   *server.Server
	subs  map[string]*patternSub // pattern → its one NATS subscription
	hbSub *nats.Subscription
	// hbDropped is the slow-consumer drops of hbSub already counted in metrics.
	hbDropped int
	nc        atomic.Pointer[nats.Conn] // set once connected; read lock-free on the hot path
	closing   atomic.Bool               // Shutdown began: publish failures are expected, not logged

	deliverCh chan *nats.Msg // shared by every pattern subscription
	hbCh      chan *nats.Msg // heartbeats of peers
	// Shutdown closes stopBeats first (no heartbeat may follow the goodbye), then, once the
	// connection is drained, stopDispatch.
	stopBeats    chan struct{}
	stopDispatch chan struct{}
	beatsDone    chan struct{}
	dispatchDone chan struct{}
	ncClosed     chan struct{} // closed by nats.go's ClosedHandler

	peers peerTable

	pubPool sync.Pool // *outMsg

	warn *rateLimiter // rate-limits repeated warnings
}

// patternSub is the one NATS subscription of a pattern; sub is nil until the connection exists.
type patternSub struct {
	sub     *nats.Subscription
	dropped int // slow-consumer drops of sub already counted in metrics
}

// New checks the options and prepares a Mesh. It starts nothing.
func New(opts Options) (*Mesh, error) {
	cfg := opts.Config
	switch {
	case opts.NodeID == "" || strings.ContainsAny(opts.NodeID, " .*>\t\r\n"):
		return nil, fmt.Errorf("%w: node id %q must be non-empty without spaces, dots or wildcards", ErrOptions, opts.NodeID)
	case opts.Metrics == nil:
		return nil, fmt.Errorf("%w: Metrics is nil", ErrOptions)
	case opts.Deliver == nil:
		return nil, fmt.Errorf("%w: Deliver is nil", ErrOptions)
	case cfg.HeartbeatInterval.D() <= 0:
		return nil, fmt.Errorf("%w: heartbeat_interval %v must be positive", ErrOptions, cfg.HeartbeatInterval.D())
	case cfg.SubjectPrefix == "" || !strings.HasSuffix(cfg.SubjectPrefix, ".") || strings.ContainsAny(cfg.SubjectPrefix, " *>"):
		return nil, fmt.Errorf("%w: subject_prefix %q must end with '.' and hold no spaces or wildcards", ErrOptions, cfg.SubjectPrefix)
	case cfg.Listen != "" && cfg.NATSURL != "":
		return nil, fmt.Errorf("%w: set cluster.listen or cluster.nats_url, not both", ErrOptions)
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "cluster")
	if opts.Stats == nil {
		opts.Stats = func() NodeStats { return NodeStats{} }
	}
	mode := ModeSingle
	switch {
	case cfg.NATSURL != "":
		mode = ModeExternal
	case cfg.Listen != "":
		mode = ModeEmbedded
	}
	m := &Mesh{
		opts:         opts,
		log:          log,
		metrics:      opts.Metrics,
		mode:         mode,
		prefix:       cfg.SubjectPrefix,
		hbPrefix:     sysPrefix(cfg.SubjectPrefix) + "hb.",
		interval:     cfg.HeartbeatInterval.D(),
		subs:         make(map[string]*patternSub),
		deliverCh:    make(chan *nats.Msg, deliverQueueLen),
		hbCh:         make(chan *nats.Msg, heartbeatQueueLen),
		stopBeats:    make(chan struct{}),
		stopDispatch: make(chan struct{}),
		beatsDone:    make(chan struct{}),
		dispatchDone: make(chan struct{}),
		ncClosed:     make(chan struct{}),
		warn:         newRateLimiter(10 * time.Second),
	}
	m.peers.init(opts.NodeID, opts.Version)
	m.pubPool.New = func() any { return newOutMsg(opts.NodeID) }
	return m, nil
}

// sysPrefix derives the system subject prefix from the topic prefix's first token
// ("revenprox.t." → "revenprox.sys."). When that would overlap the topic subjects (a one-token
// prefix such as "app.", or "x.sys."), it uses "<prefix>_sys." instead, so no topic can ever
// be confused with a heartbeat.
func sysPrefix(topicPrefix string) string {
	first, _, _ := strings.Cut(topicPrefix, ".")
	sys := first + ".sys."
	if strings.HasPrefix(sys, topicPrefix) || strings.HasPrefix(topicPrefix, sys) {
		sys = strings.TrimSuffix(topicPrefix, ".") + "_sys."
	}
	return sys
}

// Mode reports ModeSingle, ModeEmbedded or ModeExternal.
func (m *Mesh) Mode() string { return m.mode }

// Start runs the embedded server (unless external), connects, subscribes to heartbeats and to
// every pattern registered so far, and starts the dispatcher and heartbeat goroutines. With an
// external NATS that is not reachable yet, Start succeeds and the connection keeps retrying
// (Connected reports false meanwhile). ctx bounds the wait for the embedded server.
func (m *Mesh) Start(ctx context.Context) error {
	m.mu.Lock()
	switch m.state {
	case stateClosed:
		m.mu.Unlock()
		return ErrClosed
	case stateStarting, stateStarted:
		m.mu.Unlock()
		return ErrStarted
	}
	m.state = stateStarting
	m.mu.Unlock()

	srv, nc, err := m.connect(ctx)
	if err != nil {
		m.mu.Lock()
		m.state = stateClosed
		m.mu.Unlock()
		return err
	}

	m.mu.Lock()
	if m.state != stateStarting { // Shutdown ran meanwhile
		m.mu.Unlock()
		nc.Close()
		if srv != nil {
			srv.Shutdown()
			srv.WaitForShutdown()
		}
		return ErrClosed
	}
	m.srv = srv
	m.nc.Store(nc)
	m.hbSub, err = nc.ChanSubscribe(m.hbPrefix+"*", m.hbCh)
	if err != nil {
		m.state = stateClosed
		m.mu.Unlock()
		nc.Close()
		if srv != nil {
			srv.Shutdown()
			srv.WaitForShutdown()
		}
		return fmt.Errorf("%w: subscribe to heartbeats: %w", ErrConnect, err)
	}
	for pattern, ps := range m.subs {
		m.subscribeLocked(nc, pattern, ps)
	}
	m.state = stateStarted
	go m.dispatch()
	go m.heartbeatLoop()
	m.mu.Unlock()

	// Return once the server has the subscriptions made so far: a message published right
	// after Start reaches patterns registered before it. (With an external NATS that is still
	// down this fails fast and the subscriptions are sent on connect.)
	_ = nc.FlushTimeout(2 * time.Second)

	m.log.Info("cluster started", "mode", m.mode, "node", m.opts.NodeID, "client_url", m.ClientURL(),
		"route_listen", m.routeAddr(), "peers", len(m.opts.Config.Peers))
	return nil
}

// connect starts the embedded server when there is one and opens the node's NATS connection.
func (m *Mesh) connect(ctx context.Context) (*server.Server, *nats.Conn, error) {
	connOpts := []nats.Option{
		nats.Name("revenprox " + m.opts.NodeID),
		nats.NoEcho(),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.DisconnectErrHandler(m.onDisconnect),
		nats.ReconnectHandler(m.onReconnect),
		nats.ClosedHandler(func(*nats.Conn) { close(m.ncClosed) }),
		nats.ErrorHandler(m.onAsyncError),
	}
	if m.mode == ModeExternal {
		connOpts = append(connOpts, nats.RetryOnFailedConnect(true), nats.ConnectHandler(m.onReconnect))
		nc, err := nats.Connect(m.opts.Config.NATSURL, connOpts...)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %s: %w", ErrConnect, redactURL(m.opts.Config.NATSURL), err)
		}
		if !nc.IsConnected() {
			m.log.Warn("NATS not reachable yet, retrying in the background", "url", redactURL(m.opts.Config.NATSURL))
		}
		return nil, nc, nil
	}
	srv, err := m.startServer(ctx)
	if err != nil {
		return nil, nil, err
	}
	// A single node's server has no listener, so its connection is in-process (it carries only
	// heartbeats). A clustered node connects to its server's loopback client port instead:
	// nats.go's flusher holds the connection lock while it writes, and a write into the
	// in-process pipe lasts until the server's reader goroutine is scheduled and reads it, so
	// on a busy machine every publishing goroutine queued behind that lock; a socket write
	// returns once the kernel has the bytes. Measured at 10,000 publishes/s over 3 nodes
	// (docs/benchmarks.md, "Cluster target"): cross-node p99 median 3.82 → 3.06 ms.
	target, opt := "", nats.InProcessServer(srv)
	if m.mode == ModeEmbedded {
		// IgnoreDiscoveredServers: the server advertises its peers' client ports, and a node
		// must never reconnect through another node's server (its interest would move there).
		target, opt = loopbackURL(srv.Addr()), nats.IgnoreDiscoveredServers()
	}
	nc, err := nats.Connect(target, append(connOpts, opt)...)
	if err != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, nil, fmt.Errorf("%w: embedded server: %w", ErrConnect, err)
	}
	return srv, nc, nil
}

// loopbackURL is the URL the node dials to reach its own embedded server's client listener at
// addr. A listener on all interfaces is reached through 127.0.0.1: Go binds "0.0.0.0" and "::"
// as one dual-stack socket, which accepts IPv4 loopback even where IPv6 is disabled.
func loopbackURL(addr net.Addr) string {
	if addr == nil {
		return "" // no client listener: nats.Connect fails with a clear "no servers" error
	}
	tcp, ok := addr.(*net.TCPAddr)
	if !ok {
		return "nats://" + addr.String()
	}
	ip := tcp.IP
	if ip == nil || ip.IsUnspecified() {
		ip = net.IPv4(127, 0, 0, 1)
	}
	return "nats://" + net.JoinHostPort(ip.String(), strconv.Itoa(tcp.Port))
}

// Connected reports whether the NATS connection is up (for /ready).
func (m *Mesh) Connected() bool {
	nc := m.nc.Load()
	return nc != nil && nc.IsConnected()
}

// ClientURL is a URL any plain NATS client on this host can use to publish into the mesh through
// this node, and the one the node itself dials: the embedded server's client listener when
// clustered, the external URL in external mode, "" for a single node (in-process only) or
// before Start.
func (m *Mesh) ClientURL() string {
	switch m.mode {
	case ModeExternal:
		return m.opts.Config.NATSURL
	case ModeEmbedded:
		m.mu.Lock()
		srv := m.srv
		m.mu.Unlock()
		if srv != nil {
			return loopbackURL(srv.Addr())
		}
	}
	return ""
}

// RouteAddr is the address the embedded route listener is bound to ("" when none). With
// cluster.listen "127.0.0.1:0" it tells tests which port was chosen.
func (m *Mesh) RouteAddr() string { return m.routeAddr() }

func (m *Mesh) routeAddr() string {
	m.mu.Lock()
	srv := m.srv
	m.mu.Unlock()
	if srv == nil || m.mode != ModeEmbedded {
		return ""
	}
	if a := srv.ClusterAddr(); a != nil {
		return a.String()
	}
	return ""
}

// Shutdown says goodbye to the peers (so they drop this node at once rather than after three
// missed heartbeats), drains the NATS connection, stops the goroutines and the embedded server.
// ctx bounds the drain. Safe to call twice and before Start.
func (m *Mesh) Shutdown(ctx context.Context) error {
	m.mu.Lock()
	prev := m.state
	if prev == stateClosed {
		m.mu.Unlock()
		return nil
	}
	m.state = stateClosed
	m.closing.Store(true)
	srv := m.srv
	m.mu.Unlock()
	if prev != stateStarted {
		return nil // never started, or Start will see stateClosed and clean up
	}

	close(m.stopBeats)
	<-m.beatsDone
	nc := m.nc.Load()
	m.sendGoodbye(nc)
	var err error
	if derr := nc.Drain(); derr != nil {
		nc.Close()
	} else {
		select {
		case <-m.ncClosed:
		case <-ctx.Done():
			err = fmt.Errorf("cluster: drain: %w", ctx.Err())
			nc.Close()
		}
	}
	<-m.ncClosed
	close(m.stopDispatch)
	<-m.dispatchDone
	if srv != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
	}
	m.metrics.PeersConnected.Set(0)
	m.metrics.SyncLag.Set(0)
	m.log.Info("cluster stopped", "node", m.opts.NodeID)
	return err
}

func (m *Mesh) onDisconnect(_ *nats.Conn, err error) {
	m.mu.Lock()
	closing := m.state == stateClosed
	m.mu.Unlock()
	if closing {
		return
	}
	if err != nil {
		m.log.Warn("NATS connection lost, reconnecting", "error", err)
	} else {
		m.log.Warn("NATS connection lost, reconnecting")
	}
}

func (m *Mesh) onReconnect(nc *nats.Conn) {
	m.log.Info("NATS connected", "url", redactURL(nc.ConnectedUrlRedacted()))
}

func (m *Mesh) onAsyncError(_ *nats.Conn, sub *nats.Subscription, err error) {
	if errors.Is(err, nats.ErrSlowConsumer) {
		// The count comes from Subscription.Dropped (see countDrops): nats.go reports a slow
		// consumer once per episode, not once per dropped message.
		subject := ""
		if sub != nil {
			subject = sub.Subject
		}
		if ok, suppressed := m.warn.allow("slow-consumer"); ok {
			m.log.Warn("NATS slow consumer: dropping cross-node messages (Deliver is not keeping up)",
				"subject", subject, "queue", deliverQueueLen, "suppressed", suppressed)
		}
		return
	}
	if ok, suppressed := m.warn.allow("async:" + err.Error()); ok {
		m.log.Warn("NATS error", "error", err, "suppressed", suppressed)
	}
}

// redactURL removes credentials from NATS URLs before they are logged.
func redactURL(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if at := strings.LastIndexByte(p, '@'); at >= 0 {
			scheme, _, found := strings.Cut(p, "://")
			if found {
				p = scheme + "://[redacted]@" + p[at+1:]
			} else {
				p = "[redacted]@" + p[at+1:]
			}
		}
		parts[i] = p
	}
	return strings.Join(parts, ",")
}

// rateLimiter lets one event per key through per period and counts what it held back.
type rateLimiter struct {
	period time.Duration
	mu     sync.Mutex
	seen   map[string]*rateEntry
}

type rateEntry struct {
	last       time.Time
	suppressed int
}

func newRateLimiter(period time.Duration) *rateLimiter {
	return &rateLimiter{period: period, seen: make(map[string]*rateEntry)}
}

// allow reports whether to log now, and how many events of key were suppressed since the last
// one logged.
func (r *rateLimiter) allow(key string) (bool, int) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.seen[key]
	if e == nil {
		if len(r.seen) > 1000 { // bounded: keys come from error texts
			clear(r.seen)
		}
		r.seen[key] = &rateEntry{last: now}
		return true, 0
	}
	if now.Sub(e.last) < r.period {
		e.suppressed++
		return false, 0
	}
	n := e.suppressed
	e.last, e.suppressed = now, 0
	return true, n
}
