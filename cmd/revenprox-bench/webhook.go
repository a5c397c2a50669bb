package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// webhookServer allows every token (design §5 answer with ttl and full ACLs) and counts calls.
type webhookServer struct {
	calls atomic.Int64
	ttl   int
	delay time.Duration
}

func (w *webhookServer) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && r.URL.Path == "/count" {
		fmt.Fprintln(rw, w.calls.Load())
		return
	}
	if r.Method != http.MethodPost {
		http.Error(rw, "POST only", http.StatusMethodNotAllowed)
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
	w.calls.Add(1)
	if w.delay > 0 {
		time.Sleep(w.delay) // simulated webhook latency, the point of the option
	}
	rw.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(rw, `{"allow":true,"user":"bench","ttl":%d,"subscribe":[">"],"publish":[">"]}`, w.ttl)
}

func webhookMain(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("revenprox-bench webhook", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:9000", "listen address")
	ttl := fs.Int("ttl", 300, "ttl seconds in every answer")
	delay := fs.Duration("delay", 0, "answer delay")
	maxLife := fs.Duration("max-life", time.Hour, "exit after this long (every process here is bounded)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(stderr, "revenprox-bench webhook:", err)
		return 1
	}
	wh := &webhookServer{ttl: *ttl, delay: *delay}
	srv := &http.Server{Handler: wh, ReadHeaderTimeout: 5 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *maxLife)
	defer cancel()
	go func() {
		<-ctx.Done()
		sctx, c := context.WithTimeout(context.Background(), 2*time.Second)
		defer c()
		_ = srv.Shutdown(sctx)
	}()
	fmt.Fprintln(stderr, "revenprox-bench webhook listening on", ln.Addr().String())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(stderr, "revenprox-bench webhook:", err)
		return 1
	}
	fmt.Fprintln(stderr, "revenprox-bench webhook calls: "+strconv.FormatInt(wh.calls.Load(), 10))
	return 0
}
