package telemetry

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"

	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// TracerName is the instrumentation scope of every RevenProx span.
const TracerName = "github.com/revenprox/revenprox"

// Span names (design §9). A message's trace: publish on the ingress node (child of the client's
// traceparent when it sent one), then deliver on every node with local subscribers; on other
// nodes deliver is a child of the remote publish, its context carried in the NATS headers.
// connect (with auth.webhook as a child when the webhook is called) is the connection's own
// trace, continued from the upgrade request's traceparent header. SpanClusterReceive is for a
// separate hop span, should one be wanted between the NATS receive and the local fan-out.
const (
	SpanConnect        = "connect"
	SpanAuth           = "auth.webhook"
	SpanPublish        = "publish"
	SpanClusterReceive = "cluster.receive"
	SpanDeliver        = "deliver"
)

// Span attribute keys. Topics go on spans (sampled, per trace), never on metric labels.
const (
	AttrNode  = "revenprox.node"
	AttrTopic = "messaging.destination.name" // OpenTelemetry messaging semantic convention
)

// propagator is the W3C TraceContext + Baggage propagator. The helpers below use it directly,
// so they work whether or not SetupTracing ran; SetupTracing also installs it globally.
var propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// tracingEnv are the variables that ask for traces; with none of them set nothing is exported.
var tracingEnv = []string{"OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"}

// TracingEnabled reports whether the environment asks for a trace exporter: one of
// OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is
// non-empty, OTEL_TRACES_EXPORTER is not "none", and OTEL_SDK_DISABLED is not "true".
func TracingEnabled() bool {
	if strings.EqualFold(strings.TrimSpace(os.Getenv("OTEL_SDK_DISABLED")), "true") {
		return false
	}
	if strings.EqualFold(strings.TrimSpace(os.Getenv("OTEL_TRACES_EXPORTER")), "none") {
		return false
	}
	for _, k := range tracingEnv {
		if strings.TrimSpace(os.Getenv(k)) != "" {
			return true
		}
	}
	return false
}

// SetupTracing installs the W3C TraceContext+Baggage propagator and, when TracingEnabled, a
// global TracerProvider exporting through the exporter named by the OTEL_* environment
// (autoexport: otlp over http/protobuf by default, OTEL_EXPORTER_OTLP_PROTOCOL=grpc, console)
// with a batch span processor. The resource carries service.name=revenprox,
// service.instance.id=node and service.version, which OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES may override. Sampling follows OTEL_TRACES_SAMPLER (default:
// parent-based, always on).
//
// Without an exporter the global tracer stays the no-op one: spans cost a context lookup and
// nothing else. shutdown flushes pending spans; it is safe to call more than once.
func SetupTracing(ctx context.Context, node, version string) (shutdown func(context.Context) error, err error) {
	otel.SetTextMapPropagator(propagator)
	if !TracingEnabled() {
		return func(context.Context) error { return nil }, nil
	}
	exp, err := autoexport.NewSpanExporter(ctx)
	if err != nil {
		return nil, fmt.Errorf("telemetry: trace exporter: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithAttributes(
			attribute.String("service.name", "revenprox"),
			attribute.String("service.instance.id", node),
			attribute.String("service.version", version),
		),
		resource.WithFromEnv(), // last, so the operator's OTEL_* values win
	)
	if err != nil {
		_ = exp.Shutdown(ctx)
		return nil, fmt.Errorf("telemetry: trace resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)

	var once sync.Once
	var shutdownErr error
	return func(ctx context.Context) error {
		once.Do(func() { shutdownErr = tp.Shutdown(ctx) })
		return shutdownErr
	}, nil
}

// Tracer returns the RevenProx tracer of the global provider (a no-op tracer until SetupTracing
// installs an SDK provider; tracers obtained earlier follow the switch).
func Tracer() trace.Tracer { return otel.Tracer(TracerName) }

// ExtractTraceparent returns ctx carrying the remote span context of a W3C traceparent value
// (the `traceparent` field of a publish frame). An empty or malformed value returns ctx as is.
func ExtractTraceparent(ctx context.Context, traceparent string) context.Context {
	if traceparent == "" {
		return ctx
	}
	return propagator.Extract(ctx, propagation.MapCarrier{"traceparent": traceparent})
}

// Traceparent returns the W3C traceparent of the span in ctx, or "" when there is no valid
// span context (for example with the no-op tracer and no incoming trace).
func Traceparent(ctx context.Context) string {
	c := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, c)
	return c["traceparent"]
}

// ExtractHTTP returns ctx carrying the trace context of an HTTP request's traceparent,
// tracestate and baggage headers (the WebSocket upgrade request).
func ExtractHTTP(ctx context.Context, h http.Header) context.Context {
	return propagator.Extract(ctx, propagation.HeaderCarrier(h))
}

// InjectHeaders writes the trace context of ctx into NATS-style headers with the exact
// lower-case keys `traceparent`, `tracestate` and `baggage` (NATS headers are case-sensitive,
// unlike HTTP's). nats.Header converts implicitly: InjectHeaders(ctx, msg.Header). Nothing is
// written when ctx has no valid span context.
func InjectHeaders(ctx context.Context, h map[string][]string) {
	propagator.Inject(ctx, exactHeaderCarrier(h))
}

// ExtractHeaders is InjectHeaders' counterpart on the receiving node.
func ExtractHeaders(ctx context.Context, h map[string][]string) context.Context {
	if len(h) == 0 {
		return ctx
	}
	return propagator.Extract(ctx, exactHeaderCarrier(h))
}

// exactHeaderCarrier is a TextMapCarrier over a case-sensitive multi-map.
type exactHeaderCarrier map[string][]string

func (c exactHeaderCarrier) Get(key string) string {
	if v := c[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (c exactHeaderCarrier) Set(key, value string) { c[key] = []string{value} }

func (c exactHeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
