// Command revenprox runs one RevenProx node. Subcommands: serve (default), check-config, version.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"go.yaml.in/yaml/v3"

	"github.com/revenprox/revenprox/config"
	"github.com/revenprox/revenprox/memtune"
	"github.com/revenprox/revenprox/proxy"
	"github.com/revenprox/revenprox/telemetry"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// cgroupRoot is where the node looks for its container's memory limit.
const cgroupRoot = "/sys/fs/cgroup"

// memoryLimitShare is the part of a container's memory limit given to the Go runtime as its soft
// limit: the collector works harder as the heap nears it, instead of the kernel killing the
// process and dropping every client at once. The rest covers stacks, socket buffers the process
// is charged for, and the binary.
const memoryLimitShare = 0.9

// setMemoryLimit sets the Go soft memory limit to memoryLimitShare of the cgroup limit, unless
// GOMEMLIMIT is set or there is no limit.
func setMemoryLimit(log *slog.Logger, root, env string) {
	if env != "" {
		log.Info("Memory limit from GOMEMLIMIT", "GOMEMLIMIT", env)
		return
	}
	limit := telemetry.CgroupMemoryLimit(root)
	if limit == 0 {
		return
	}
	soft := int64(float64(limit) * memoryLimitShare)
	debug.SetMemoryLimit(soft)
	log.Info("Memory limit from the cgroup", "cgroup_limit_bytes", limit, "go_soft_limit_bytes", soft)
}

// startGCFloor starts the garbage collector's heap floor (memory.gc_floor_bytes) unless it is 0
// or GOGC is set in the environment, which the operator chose deliberately.
func startGCFloor(log *slog.Logger, floorBytes int, gogcEnv string) *memtune.HeapFloor {
	if gogcEnv != "" {
		log.Info("GC target from GOGC; memory.gc_floor_bytes not applied", "GOGC", gogcEnv)
		return memtune.Start(0, log)
	}
	floor := memtune.Start(uint64(max(floorBytes, 0)), log)
	if floorBytes > 0 {
		log.Info("GC heap floor", "floor_bytes", floorBytes, "gogc", floor.GCPercent())
	}
	return floor
}

func main() {
	os.Exit(run(os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
}

// run is main without the process: it returns the exit code.
func run(args, environ []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "version":
		fmt.Fprintln(stdout, "revenprox", version)
		return 0
	case "serve", "check-config":
	default:
		fmt.Fprintf(stderr, "revenprox: unknown command %q (use serve, check-config or version)\n", cmd)
		return 2
	}
	cfg, err := loadConfig(cmd, args, environ, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "revenprox:", err)
		return 2
	}
	if cmd == "check-config" {
		out, _ := yaml.Marshal(cfg.Redacted())
		fmt.Fprintf(stdout, "configuration OK\n---\n%s", out)
		return 0
	}
	return serve(cfg, stderr)
}

// loadConfig layers file, environment and flags, then validates.
func loadConfig(cmd string, args, environ []string, stderr io.Writer) (config.Config, error) {
	fs := flag.NewFlagSet("revenprox "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", "", "YAML configuration file")
	var sets []string
	fs.Func("set", "override one key, e.g. -set limits.max_connections=5000 (repeatable)", func(v string) error {
		sets = append(sets, v)
		return nil
	})
	listen := fs.String("listen", "", "client listener, overrides the listen key")
	node := fs.String("node-id", "", "node id, overrides the node_id key")
	level := fs.String("log-level", "", "debug, info, warn or error, overrides log.level")
	format := fs.String("log-format", "", "text or json, overrides log.format")
	if err := fs.Parse(args); err != nil {
		return config.Config{}, err
	}
	if fs.NArg() > 0 {
		return config.Config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	cfg, err := config.Load(*path, environ)
	if err != nil {
		return cfg, err
	}
	for key, v := range map[string]string{"listen": *listen, "node_id": *node, "log.level": *level, "log.format": *format} {
		if v != "" {
			sets = append(sets, key+"="+v)
		}
	}
	for _, kv := range sets {
		key, value, ok := strings.Cut(kv, "=")
		if !ok {
			return cfg, fmt.Errorf("-set %q: want key=value", kv)
		}
		if err := cfg.Set(key, value); err != nil {
			return cfg, err
		}
	}
	return cfg, cfg.Validate()
}

// serve runs a node until SIGTERM or SIGINT, then drains within drain_timeout.
func serve(cfg config.Config, stderr io.Writer) int {
	log, err := telemetry.NewLogger(stderr, cfg.Log.Level, cfg.Log.Format, cfg.NodeID)
	if err != nil {
		fmt.Fprintln(stderr, "revenprox:", err)
		return 2
	}
	ctx := context.Background()
	shutdownTracing, err := telemetry.SetupTracing(ctx, cfg.NodeID, version)
	if err != nil {
		log.Error("Tracing setup failed; continuing without traces", "err", err)
		shutdownTracing = func(context.Context) error { return nil }
	}
	setMemoryLimit(log, cgroupRoot, os.Getenv("GOMEMLIMIT"))
	gcFloor := startGCFloor(log, cfg.Memory.GCFloorBytes, os.Getenv("GOGC"))
	defer gcFloor.Stop()
	metrics := telemetry.NewMetrics()
	telemetry.RegisterSystemMetrics(metrics, cgroupRoot)
	srv, err := proxy.New(cfg, proxy.Options{Log: log, Metrics: metrics, Version: version, Tracing: telemetry.TracingEnabled()})
	if err != nil {
		log.Error("Cannot start", "err", err)
		return 1
	}
	log.Info("RevenProx starting", "version", version, "node", cfg.NodeID)
	if err := srv.Start(ctx); err != nil {
		log.Error("Cannot start", "err", err)
		return 1
	}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	sig := <-signals
	log.Info("Signal received, draining", "signal", sig.String())
	signal.Stop(signals)
	drainCtx, cancel := context.WithTimeout(ctx, cfg.DrainTimeout.D())
	defer cancel()
	code := 0
	if err := srv.Shutdown(drainCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Error("Shutdown error", "err", err)
		code = 1
	}
	_ = shutdownTracing(context.Background())
	log.Info("Stopped")
	return code
}
