package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// startServer runs the embedded NATS server and waits until it accepts connections.
func (m *Mesh) startServer(ctx context.Context) (*server.Server, error) {
	opts, err := m.serverOptions()
	if err != nil {
		return nil, err
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrServer, err)
	}
	logger := &natsLogger{log: m.log.With("component", "nats"), limit: newRateLimiter(30 * time.Second)}
	srv.SetLogger(logger, m.log.Enabled(ctx, slog.LevelDebug), false)
	go srv.Start()

	wait := startTimeout
	if dl, ok := ctx.Deadline(); ok {
		wait = time.Until(dl)
	}
	if !srv.ReadyForConnections(wait) {
		srv.Shutdown()
		srv.WaitForShutdown()
		if fatal := logger.fatal(); fatal != "" {
			return nil, fmt.Errorf("%w: %s", ErrServer, fatal)
		}
		return nil, fmt.Errorf("%w: not ready after %v", ErrServer, wait)
	}
	return srv, nil
}

// serverOptions maps config.ClusterConfig onto the embedded server's options.
func (m *Mesh) serverOptions() (*server.Options, error) {
	cfg := m.opts.Config
	o := &server.Options{
		ServerName: m.opts.NodeID,
		// The embedded server must never trap SIGTERM/SIGINT and exit the process (design §11).
		NoSigs: true,
		// The system account would add its own periodic traffic on routes; the mesh does not use it.
		NoSystemAccount: true,
	}
	if m.mode == ModeSingle {
		// No listener at all; the node's connection is in-process.
		o.DontListen = true
		return o, nil
	}

	// Clustered: a DontListen server never forms routes (design §11), so the server also listens
	// for clients, on loopback by default; the node itself connects through it (see connect).
	clientListen := cfg.ClientListen
	if clientListen == "" {
		clientListen = "127.0.0.1:0"
	}
	var err error
	if o.Host, o.Port, err = splitListen("cluster.client_listen", clientListen); err != nil {
		return nil, err
	}
	if o.Cluster.Host, o.Cluster.Port, err = splitListen("cluster.listen", cfg.Listen); err != nil {
		return nil, err
	}
	o.Cluster.Name = cfg.Name
	if o.Cluster.Name == "" {
		o.Cluster.Name = "revenprox"
	}
	// Route pings detect a silently dead peer (no FIN/RST, e.g. a partition) within about three
	// intervals, so its interest is removed about as fast as the heartbeats drop it from the view.
	o.Cluster.PingInterval = max(m.interval, time.Second)
	o.Cluster.MaxPingsOut = 2
	o.Cluster.Username = cfg.RouteUser
	o.Cluster.Password = cfg.RoutePassword
	o.Cluster.AuthTimeout = 2

	for i, p := range cfg.Peers {
		u, err := url.Parse(strings.TrimSpace(p))
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("%w: cluster.peers[%d] %q: not a route URL", ErrOptions, i, p)
		}
		if u.Scheme == "" || u.Scheme == "nats" || u.Scheme == "tls" {
			u.Scheme = "nats-route"
		}
		if u.User == nil && cfg.RouteUser != "" {
			u.User = url.UserPassword(cfg.RouteUser, cfg.RoutePassword)
		}
		o.Routes = append(o.Routes, u)
	}

	if cfg.TLS.CertFile != "" {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{
			CertFile: cfg.TLS.CertFile,
			KeyFile:  cfg.TLS.KeyFile,
			CaFile:   cfg.TLS.CAFile,
			// Routes are both client and server: every node proves itself with its certificate.
			Verify: true,
		})
		if err != nil {
			return nil, fmt.Errorf("%w: cluster.tls: %w", ErrOptions, err)
		}
		// Like nats-server's own config parser for routes: strict mutual verification, and the
		// CA verifies both the peers we dial and the peers that dial us.
		tc.ClientAuth = tls.RequireAndVerifyClientCert
		tc.RootCAs = tc.ClientCAs
		o.Cluster.TLSConfig = tc
		o.Cluster.TLSTimeout = 2
	}
	return o, nil
}

// splitListen turns "host:port" into the server's host and port; port 0 means a random port.
func splitListen(key, addr string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%w: %s %q: %w", ErrOptions, key, addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("%w: %s %q: bad port", ErrOptions, key, addr)
	}
	if port == 0 {
		port = server.RANDOM_PORT // 0 would mean the NATS default port
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return host, port, nil
}

// natsLogger bridges the embedded server's log into slog. Notices (startup banner, route
// connected) go to DEBUG: the mesh logs peer joins and leaves itself, at INFO. Warnings and
// errors go to WARN, rate-limited per message format, because a peer that is down makes the
// server log a dial error every second and the mesh recovers by itself when it comes back.
// Fatal errors (a route port in use) go to ERROR and make Start fail.
type natsLogger struct {
	log   *slog.Logger
	limit *rateLimiter

	mu        sync.Mutex
	lastFatal string
}

func (l *natsLogger) Noticef(format string, v ...any) {
	l.log.Debug(fmt.Sprintf(format, v...))
}

func (l *natsLogger) Warnf(format string, v ...any) { l.warn(format, v...) }

func (l *natsLogger) Errorf(format string, v ...any) { l.warn(format, v...) }

func (l *natsLogger) warn(format string, v ...any) {
	if ok, suppressed := l.limit.allow(format); ok {
		if suppressed > 0 {
			l.log.Warn(fmt.Sprintf(format, v...), "suppressed", suppressed)
		} else {
			l.log.Warn(fmt.Sprintf(format, v...))
		}
	}
}

func (l *natsLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.mu.Lock()
	l.lastFatal = msg
	l.mu.Unlock()
	l.log.Error(msg)
}

func (l *natsLogger) Debugf(format string, v ...any) {
	l.log.Debug(fmt.Sprintf(format, v...))
}

func (l *natsLogger) Tracef(string, ...any) {}

func (l *natsLogger) fatal() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastFatal
}
