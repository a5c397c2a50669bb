//go:build tools

// Package revenprox pins dependencies that packages adopt during development; removed once all are imported.
package revenprox
import (
	_ "github.com/gorilla/websocket"
	_ "github.com/nats-io/nats.go"
	_ "github.com/nats-io/nats-server/v2/server"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/prometheus/client_golang/prometheus/promhttp"
	_ "github.com/prometheus/client_golang/prometheus/collectors"
	_ "github.com/prometheus/client_model/go"
	_ "github.com/prometheus/common/expfmt"
	_ "go.opentelemetry.io/otel"
	_ "go.opentelemetry.io/otel/sdk/trace"
	_ "go.opentelemetry.io/otel/sdk/trace/tracetest"
	_ "go.opentelemetry.io/otel/propagation"
	_ "go.opentelemetry.io/contrib/exporters/autoexport"
	_ "github.com/hashicorp/golang-lru/v2/expirable"
	_ "github.com/sony/gobreaker/v2"
	_ "golang.org/x/time/rate"
	_ "golang.org/x/sync/singleflight"
	_ "go.yaml.in/yaml/v3"
	_ "github.com/HdrHistogram/hdrhistogram-go"
	_ "go.uber.org/goleak"
)
