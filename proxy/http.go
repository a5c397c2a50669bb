package proxy

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"io"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/revenprox/revenprox/cluster"
	"github.com/revenprox/revenprox/telemetry"
	"github.com/revenprox/revenprox/topics"
)

func (s *Server) clientMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", s.handleWS)
	mux.HandleFunc("GET /health", s.handleHealth)
	mux.HandleFunc("GET /ready", s.handleReady)
	mux.HandleFunc("GET /stats", s.handleStats)
	mux.HandleFunc("GET /cluster", s.handleCluster)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.Registry, promhttp.HandlerOpts{}))
	return mux
}

func (s *Server) adminMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/publish", s.requireAdmin(s.handleAdminPublish))
	mux.HandleFunc("/debug/pprof/", s.requireAdmin(pprof.Index))
	mux.HandleFunc("/debug/pprof/cmdline", s.requireAdmin(pprof.Cmdline))
	mux.HandleFunc("/debug/pprof/profile", s.requireAdmin(pprof.Profile))
	mux.HandleFunc("/debug/pprof/symbol", s.requireAdmin(pprof.Symbol))
	mux.HandleFunc("/debug/pprof/trace", s.requireAdmin(pprof.Trace))
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Health is the body of GET /health.
type Health struct {
	Status      string  `json:"status"`
	Node        string  `json:"node"`
	Version     string  `json:"version"`
	UptimeS     float64 `json:"uptime_s"`
	Connections int64   `json:"connections"`
	Peers       int     `json:"peers"`
}

func (s *Server) handleHealth(w http.ResponseWriter, _ *http.Request) {
	h := Health{
		Status:      "healthy",
		Node:        s.cfg.NodeID,
		Version:     s.version,
		UptimeS:     time.Since(s.startTime).Seconds(),
		Connections: s.openConnections(),
		Peers:       len(s.mesh.Peers()),
	}
	status := http.StatusOK
	if s.draining.Load() {
		h.Status, status = "draining", http.StatusServiceUnavailable
	}
	writeJSON(w, status, h)
}

// Readiness is the body of GET /ready.
type Readiness struct {
	Ready  bool     `json:"ready"`
	Checks []string `json:"failing,omitempty"`
}

func (s *Server) handleReady(w http.ResponseWriter, _ *http.Request) {
	var failing []string
	if !s.ready.Load() {
		if s.draining.Load() {
			failing = append(failing, "draining")
		} else {
			failing = append(failing, "starting")
		}
	}
	if !s.auth.Ready() {
		failing = append(failing, "auth")
	}
	if !s.mesh.Connected() {
		failing = append(failing, "cluster")
	}
	if len(failing) > 0 {
		writeJSON(w, http.StatusServiceUnavailable, Readiness{Ready: false, Checks: failing})
		return
	}
	writeJSON(w, http.StatusOK, Readiness{Ready: true})
}

// Stats is the body of GET /stats.
type Stats struct {
	Node              string     `json:"node"`
	UptimeS           float64    `json:"uptime_s"`
	ActiveConnections int64      `json:"active_connections"`
	IdleConnections   int64      `json:"idle_connections"` // connections with no subscription
	TotalCreated      uint64     `json:"total_created"`
	TotalClosed       uint64     `json:"total_closed"`
	Subscriptions     int        `json:"subscriptions"`
	Topics            int        `json:"topics"`
	Queues            QueueStats `json:"queues"`
}

// QueueStats sums the outbound queues.
type QueueStats struct {
	Bytes         int    `json:"bytes"`
	Frames        int    `json:"frames"`
	MaxQueueBytes int    `json:"max_queue_bytes"` // the largest single queue right now
	LimitBytes    int    `json:"limit_bytes"`
	Policy        string `json:"policy"`
}

func (s *Server) handleStats(w http.ResponseWriter, _ *http.Request) {
	st := Stats{
		Node:          s.cfg.NodeID,
		UptimeS:       time.Since(s.startTime).Seconds(),
		TotalCreated:  s.created.Load(),
		TotalClosed:   s.closed.Load(),
		Subscriptions: s.index.Subscriptions(),
		Topics:        s.index.Patterns(),
		Queues:        QueueStats{LimitBytes: s.cfg.Backpressure.QueueBytes, Policy: s.cfg.Backpressure.Policy},
	}
	s.conns.each(func(c *conn) {
		st.ActiveConnections++
		frames, bytes := c.out.queued()
		st.Queues.Frames += frames
		st.Queues.Bytes += bytes
		st.Queues.MaxQueueBytes = max(st.Queues.MaxQueueBytes, bytes)
	})
	st.IdleConnections = max(0, st.ActiveConnections-s.subscribedConns.Load())
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) handleCluster(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.mesh.View())
}

// nodeStats feeds the mesh heartbeat.
func (s *Server) nodeStats() cluster.NodeStats {
	return cluster.NodeStats{
		Connections: int(s.openConnections()),
		Topics:      s.index.Summary(20),
		TopicCount:  s.index.Patterns(),
	}
}

func (s *Server) openConnections() int64 {
	n := int64(0)
	for i := range s.conns.shards {
		sh := &s.conns.shards[i]
		sh.mu.Lock()
		n += int64(len(sh.conns))
		sh.mu.Unlock()
	}
	return n
}

func (s *Server) requireAdmin(next http.HandlerFunc) http.HandlerFunc {
	want := []byte("Bearer " + s.cfg.Admin.APIKey)
	return func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", "Bearer")
			writeJSON(w, http.StatusUnauthorized, apiError{Code: "unauthorized", Message: "admin API needs Authorization: Bearer <admin.api_key>"})
			return
		}
		next(w, r)
	}
}

type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// handleAdminPublish publishes {"topic","data"} as the server: no client ACL applies.
func (s *Server) handleAdminPublish(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		writeJSON(w, http.StatusServiceUnavailable, apiError{Code: CodeUnavailable, Message: "node draining"})
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, int64(s.cfg.Limits.MaxFrameBytes)+1))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Code: CodeBadRequest, Message: "cannot read body"})
		return
	}
	if len(body) > s.cfg.Limits.MaxFrameBytes {
		writeJSON(w, http.StatusRequestEntityTooLarge, apiError{Code: CodeMessageTooLarge, Message: "body larger than limits.max_frame_bytes"})
		return
	}
	var req struct {
		Topic       string          `json:"topic"`
		Data        json.RawMessage `json:"data"`
		Traceparent string          `json:"traceparent"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Code: CodeBadRequest, Message: "body must be {\"topic\":…,\"data\":…}"})
		return
	}
	if err := topics.ValidateTopic(req.Topic); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Code: CodeInvalidTopic, Message: strings.TrimPrefix(err.Error(), "topics: invalid topic: ")})
		return
	}
	if len(req.Data) == 0 {
		writeJSON(w, http.StatusBadRequest, apiError{Code: CodeBadRequest, Message: `"data" is required`})
		return
	}
	ctx := context.Background()
	if req.Traceparent != "" {
		ctx = telemetry.ExtractTraceparent(ctx, req.Traceparent)
	} else if tp := r.Header.Get("traceparent"); tp != "" {
		ctx = telemetry.ExtractTraceparent(ctx, tp)
	}
	s.publish(ctx, req.Topic, req.Data, time.Now(), telemetry.SourceAPI, nil)
	writeJSON(w, http.StatusAccepted, map[string]bool{"ok": true})
}
