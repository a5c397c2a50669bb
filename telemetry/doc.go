// Package telemetry owns everything an operator observes: the Prometheus registry with every
// metric of design §8 (one Metrics per node, so several nodes can share a test process), slog
// logging in the text and JSON formats of design §9, system metrics from the process and its
// cgroup, and OpenTelemetry tracing configured from the standard OTEL_* environment.
//
// Concurrency: Metrics fields are Prometheus collectors and safe for concurrent use. Loggers
// are safe for concurrent use. Tracing setup runs once at start.
package telemetry
