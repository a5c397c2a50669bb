package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/revenprox/revenprox/auth"
	"github.com/revenprox/revenprox/cluster"
	"github.com/revenprox/revenprox/config"
	"github.com/revenprox/revenprox/telemetry"
	"github.com/revenprox/revenprox/topics"
)

// ErrStarted is returned by Start when called twice.
var ErrStarted = errors.New("proxy: already started")

// Options are the node's collaborators that do not come from the config file.
type Options struct {
	// Log receives lifecycle logs. Default: slog.Default().
	Log *slog.Logger
	// Metrics is the node's registry. Default: a new one.
	Metrics *telemetry.Metrics
	// Version is reported by /health, /cluster and heartbeats.
	Version string
	// Tracing enables spans on the publish path (set when an exporter is configured);
	// incoming trace context is honoured either way.
	Tracing bool
}

// Server is one RevenProx node: client listener, admin listener, connections, subscription
// index, authenticator and mesh.
type Server struct {
	cfg     config.Config
	log     *slog.Logger
	metrics *telemetry.Metrics
	version string
	tracing bool

	// received holds messages_received_total's children by source, resolved once: label lookup
	// on every publish showed in profiles.
	received map[string]prometheus.Counter
	// remoteWriters collects connections a burst of cross-node messages made busy; only the
	// mesh's dispatcher goroutine touches it (deliverRemote, flushRemote).
	remoteWriters []*conn

	auth  *auth.Authenticator
	mesh  *cluster.Mesh
	index *topics.Index[*conn]
	conns connRegistry

	upgrader  websocket.Upgrader
	ipLimits  *lru.Cache[string, *rate.Limiter]
	ipWarns   *telemetry.RateLimited
	pingFrame []byte
	welcome   welcomeEncoder

	active          atomic.Int64 // admitted connections, including those still authenticating
	nextID          atomic.Uint64
	created         atomic.Uint64
	closed          atomic.Uint64
	subscribedConns atomic.Int64 // connections with at least one subscription

	// socketSendBuffer, when > 0, fixes each client socket's kernel send buffer (tests use it to
	// make a non-reading client overflow quickly; 0 keeps the kernel's autotuning).
	socketSendBuffer atomic.Int32
	started          atomic.Bool
	ready            atomic.Bool
	draining         atomic.Bool
	allClosed        chan struct{} // closed when draining and the last connection is gone
	allClosedOnce    sync.Once
	startTime        time.Time

	listener  net.Listener
	httpSrv   *http.Server
	adminLn   net.Listener
	adminSrv  *http.Server
	stop      chan struct{}
	bg        sync.WaitGroup
	shutdown  sync.Once
	shutdownE error
}

// New builds a node from a validated configuration. Nothing listens until Start.
func New(cfg config.Config, opts Options) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Metrics == nil {
		opts.Metrics = telemetry.NewMetrics()
	}
	s := &Server{
		cfg:       cfg,
		log:       opts.Log,
		metrics:   opts.Metrics,
		version:   opts.Version,
		tracing:   opts.Tracing,
		ipWarns:   telemetry.NewRateLimited(time.Minute, 10000),
		pingFrame: wsFrame(wsOpPing, nil),
		welcome:   newWelcomeEncoder(cfg.NodeID, cfg.PingInterval.D().Milliseconds()),
		allClosed: make(chan struct{}),
		stop:      make(chan struct{}),
	}
	s.metrics.ConnectionsLimit.Set(float64(cfg.Limits.MaxConnections))
	s.received = map[string]prometheus.Counter{}
	for _, source := range []string{telemetry.SourceClient, telemetry.SourceAPI, telemetry.SourceCluster} {
		s.received[source] = s.metrics.MessagesReceived.WithLabelValues(source)
	}
	s.index = topics.NewIndex[*conn](topics.IndexOptions{
		OnFirst: func(pattern string) {
			s.metrics.TopicsActive.Inc()
			if s.mesh != nil {
				s.mesh.Interest(pattern)
			}
		},
		OnLast: func(pattern string) {
			s.metrics.TopicsActive.Dec()
			if s.mesh != nil {
				s.mesh.Uninterest(pattern)
			}
		},
	})
	var err error
	s.ipLimits, err = lru.New[string, *rate.Limiter](65536)
	if err != nil {
		return nil, fmt.Errorf("proxy: ip limiter: %w", err)
	}
	s.upgrader = websocket.Upgrader{
		ReadBufferSize:    0, // reuse net/http's reader for the handshake: after it the node reads frames itself
		WriteBufferPool:   &sync.Pool{},
		Subprotocols:      []string{"revenprox.v1"},
		HandshakeTimeout:  10 * time.Second,
		EnableCompression: false,
		// Tokens, not cookies, authenticate: a cross-origin page gains nothing it could not
		// do with its own token, so every origin is accepted (the webhook sees Origin).
		CheckOrigin: func(*http.Request) bool { return true },
		Error: func(w http.ResponseWriter, _ *http.Request, status int, reason error) {
			http.Error(w, reason.Error(), status)
		},
	}
	s.auth, err = auth.New(cfg.Auth, cfg.NodeID, s.metrics, s.log)
	if err != nil {
		return nil, err
	}
	s.mesh, err = cluster.New(cluster.Options{
		Config:      cfg.Cluster,
		NodeID:      cfg.NodeID,
		Version:     opts.Version,
		Metrics:     s.metrics,
		Log:         s.log,
		Deliver:     s.deliverRemote,
		DeliverDone: s.flushRemote,
		Stats:       s.nodeStats,
	})
	if err != nil {
		s.auth.Close()
		return nil, err
	}
	return s, nil
}

// Start opens the listeners, starts the mesh and keepalive, and returns once the node serves.
func (s *Server) Start(ctx context.Context) error {
	if s.started.Swap(true) {
		return ErrStarted
	}
	s.startTime = time.Now()
	raiseFileLimit(s.log, s.cfg.Limits.MaxConnections)
	if err := s.mesh.Start(ctx); err != nil {
		return fmt.Errorf("proxy: start cluster: %w", err)
	}
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		_ = s.mesh.Shutdown(ctx)
		return fmt.Errorf("proxy: listen %s: %w", s.cfg.Listen, err)
	}
	s.listener = ln
	s.httpSrv = &http.Server{Handler: s.clientMux(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		if err := s.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("HTTP server failed", "err", err)
		}
	}()
	s.log.Info("HTTP server started on " + ln.Addr().String())
	if s.cfg.Admin.Listen != "" {
		aln, err := net.Listen("tcp", s.cfg.Admin.Listen)
		if err != nil {
			_ = s.httpSrv.Close()
			_ = s.mesh.Shutdown(ctx)
			return fmt.Errorf("proxy: listen admin %s: %w", s.cfg.Admin.Listen, err)
		}
		s.adminLn = aln
		s.adminSrv = &http.Server{Handler: s.adminMux(), ReadHeaderTimeout: 10 * time.Second}
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			if err := s.adminSrv.Serve(aln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("admin server failed", "err", err)
			}
		}()
		s.log.Info("Admin server started on " + aln.Addr().String())
	}
	s.bg.Add(1)
	go s.keepalive()
	s.ready.Store(true)
	return nil
}

// Addr is the client listener's address (useful with port 0).
func (s *Server) Addr() string { return s.listener.Addr().String() }

// AdminAddr is the admin listener's address, or "" when off.
func (s *Server) AdminAddr() string {
	if s.adminLn == nil {
		return ""
	}
	return s.adminLn.Addr().String()
}

// Mesh exposes the node's cluster mesh (tests, /cluster).
func (s *Server) Mesh() *cluster.Mesh { return s.mesh }

// Metrics exposes the node's registry.
func (s *Server) Metrics() *telemetry.Metrics { return s.metrics }

// handleWS admits, authenticates and upgrades one client.
func (s *Server) handleWS(w http.ResponseWriter, r *http.Request) {
	if !websocket.IsWebSocketUpgrade(r) {
		// Refuse plain GETs before they cost a webhook call or a cache entry.
		http.Error(w, "/ws expects a WebSocket upgrade", http.StatusBadRequest)
		return
	}
	if s.draining.Load() {
		s.reject(w, http.StatusServiceUnavailable, telemetry.RejectDraining, "node draining: reconnect to another node")
		return
	}
	ip := remoteIP(r.RemoteAddr)
	if !s.allowIP(ip) {
		if ok, suppressed := s.ipWarns.Allow(ip); ok {
			s.log.Warn("Connection rate limit exceeded", "ip", ip, "limit_per_s", s.cfg.Limits.IPConnectRate, "suppressed", suppressed)
		}
		s.reject(w, http.StatusTooManyRequests, telemetry.RejectRateLimit, "too many new connections from your address")
		return
	}
	if s.active.Add(1) > int64(s.cfg.Limits.MaxConnections) {
		s.releaseSlot()
		s.reject(w, http.StatusServiceUnavailable, telemetry.RejectMaxConnections, "node at its connection limit")
		return
	}
	admitted := false
	defer func() {
		if !admitted {
			s.releaseSlot()
		}
	}()

	ctx := r.Context()
	if r.Header.Get("Traceparent") != "" {
		ctx = telemetry.ExtractHTTP(ctx, r.Header)
	}
	ctx, span := s.startSpan(ctx, telemetry.SpanConnect, "")
	if span != nil {
		defer span.End()
	}
	decision, authErr := s.auth.Authenticate(ctx, auth.Request{
		Token:      auth.TokenFromRequest(r),
		RemoteAddr: r.RemoteAddr,
		Headers:    r.Header,
	})
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader answered with an HTTP error
	}
	if authErr != nil {
		code, reason := CloseTryAgainLater, telemetry.RejectAuthUnavailable
		if errors.Is(authErr, auth.ErrDenied) {
			code, reason = CloseUnauthorized, telemetry.RejectUnauthorized
		}
		s.metrics.ConnectionsRejected.WithLabelValues(reason).Inc()
		if span != nil {
			span.SetAttributes(attribute.String("revenprox.reject", reason))
		}
		closeNow(ws.NetConn(), code, closeReasons[code])
		return
	}
	nc := ws.NetConn() // gorilla's Conn is done: the node reads and writes frames itself
	c := &conn{
		srv:      s,
		id:       s.nextID.Add(1),
		decision: decision,
		created:  time.Now(),
	}
	var raw syscall.RawConn
	if tcp, ok := nc.(*net.TCPConn); ok {
		if size := s.socketSendBuffer.Load(); size > 0 {
			_ = tcp.SetWriteBuffer(int(size))
		}
		raw, _ = tcp.SyscallConn()
	}
	c.in = frameReader{netConn: nc, raw: raw, limit: s.cfg.Limits.MaxFrameBytes}
	c.out = outbound{netConn: nc, try: newTryWriter(nc, raw), maxBytes: s.cfg.Backpressure.QueueBytes, policy: s.cfg.Backpressure.Policy, metrics: s.metrics}
	s.conns.add(c)
	s.created.Add(1)
	s.metrics.ConnectionsTotal.Inc()
	s.metrics.ConnectionsActive.Inc()
	admitted = true
	c.send(s.welcome.encode(c.connID()))
	// The handler returns so net/http frees its buffers; the reader lives on its own goroutine.
	go c.readLoop()
}

// releaseSlot gives back an admission slot and signals drain completion.
func (s *Server) releaseSlot() {
	if s.active.Add(-1) == 0 && s.draining.Load() {
		s.allClosedOnce.Do(func() { close(s.allClosed) })
	}
}

func (s *Server) reject(w http.ResponseWriter, status int, reason, message string) {
	s.metrics.ConnectionsRejected.WithLabelValues(reason).Inc()
	if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	http.Error(w, message, status)
}

// allowIP applies the per-IP new-connection rate.
func (s *Server) allowIP(ip string) bool {
	r := s.cfg.Limits.IPConnectRate
	if r <= 0 {
		return true
	}
	lim, ok := s.ipLimits.Get(ip)
	if !ok {
		lim = rate.NewLimiter(rate.Limit(r), max(1, int(r)))
		if prev, found, _ := s.ipLimits.PeekOrAdd(ip, lim); found {
			lim = prev
		}
	}
	return lim.Allow()
}

// closeNow writes a close frame straight to a fresh socket and shuts it (rejections after the
// upgrade, before the connection has a queue).
func closeNow(nc net.Conn, code CloseCode, reason string) {
	_ = nc.SetWriteDeadline(time.Now().Add(closeWriteWindow))
	_, _ = nc.Write(wsFrame(wsOpClose, closePayload(code, reason)))
	_ = nc.Close()
}

// keepalive pings every connection once per ping interval, one shard per tick so the pings are
// spread over the interval. One goroutine for the whole node, no timer per connection. It also
// gives memory back after connection bursts (see memoryReclaimer).
func (s *Server) keepalive() {
	defer s.bg.Done()
	t := time.NewTicker(s.cfg.PingInterval.D() / connShards)
	defer t.Stop()
	reclaim := memoryReclaimer{settle: time.Second, every: 30 * time.Second, free: debug.FreeOSMemory}
	reclaimCheck := time.NewTicker(500 * time.Millisecond)
	defer reclaimCheck.Stop()
	for shard := 0; ; {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.conns.eachInShard(shard, func(c *conn) { c.send(s.pingFrame) })
			shard = (shard + 1) % connShards
		case now := <-reclaimCheck.C:
			reclaim.tick(now, s.created.Load()+s.closed.Load())
		}
	}
}

// memoryReclaimer returns memory to the OS once a burst of connects or disconnects has settled.
// A burst leaves handshake buffers and grown reader stacks behind; an idle node allocates too
// little to trigger a collection soon, so without this the garbage and the grown stacks stay
// in RSS for minutes. debug.FreeOSMemory collects and releases free pages; it runs at most once
// per `every`, only after `settle` with no connects or disconnects.
type memoryReclaimer struct {
	settle, every time.Duration
	lastChurn     uint64
	changedAt     time.Time
	reclaimedAt   time.Time
	pending       bool
	free          func()
}

func (m *memoryReclaimer) tick(now time.Time, churn uint64) {
	if churn != m.lastChurn {
		m.lastChurn, m.changedAt, m.pending = churn, now, true
		return
	}
	if m.pending && now.Sub(m.changedAt) >= m.settle && now.Sub(m.reclaimedAt) >= m.every {
		m.pending, m.reclaimedAt = false, now
		m.free()
	}
}

// startSpan starts a span when tracing is on or the caller carries a remote trace context.
func (s *Server) startSpan(ctx context.Context, name, topic string) (context.Context, trace.Span) {
	if !s.tracing && !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx, nil
	}
	var attrs []attribute.KeyValue
	if topic != "" {
		attrs = append(attrs, attribute.String("messaging.destination.name", topic))
	}
	attrs = append(attrs, attribute.String("revenprox.node", s.cfg.NodeID))
	return telemetry.Tracer().Start(ctx, name, trace.WithAttributes(attrs...))
}

// Shutdown drains the node: /ready turns 503, new connections are refused, every client gets
// its queued messages and then close 1001; connections still open when ctx ends are cut. Safe
// to call more than once; later calls return the first result.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdown.Do(func() { s.shutdownE = s.drain(ctx) })
	return s.shutdownE
}

func (s *Server) drain(ctx context.Context) error {
	s.ready.Store(false)
	s.draining.Store(true)
	if !s.started.Load() {
		s.auth.Close()
		return s.mesh.Shutdown(ctx)
	}
	n := s.active.Load()
	s.log.Info("Draining", "connections", n, "timeout", s.cfg.DrainTimeout.String())
	s.conns.each(func(c *conn) { c.out.closeAfterFlush(CloseGoingAway, closeReasons[CloseGoingAway]) })
	if s.active.Load() == 0 {
		s.allClosedOnce.Do(func() { close(s.allClosed) })
	}
	var err error
	select {
	case <-s.allClosed:
	case <-ctx.Done():
		left := 0
		s.conns.each(func(c *conn) { left++; _ = c.out.netConn.Close() })
		s.log.Warn("Drain timeout: closed remaining connections", "connections", left)
		err = ctx.Err()
		select { // readers notice the closed sockets at once; wait for their cleanup
		case <-s.allClosed:
		case <-time.After(2 * time.Second):
		}
	}
	close(s.stop)
	closeCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = s.httpSrv.Shutdown(closeCtx)
	if s.adminSrv != nil {
		_ = s.adminSrv.Shutdown(closeCtx)
	}
	s.bg.Wait()
	if merr := s.mesh.Shutdown(closeCtx); merr != nil && err == nil {
		err = merr
	}
	s.auth.Close()
	s.log.Info("Drained", "created", s.created.Load(), "closed", s.closed.Load())
	return err
}
