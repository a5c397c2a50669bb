package telemetry

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

const (
	sampleTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	sampleSpanID  = "00f067aa0ba902b7"
	sampleParent  = "00-" + sampleTraceID + "-" + sampleSpanID + "-01"
)

// clearTracingEnv unsets every variable that could turn tracing on for the test's duration.
func clearTracingEnv(t *testing.T) {
	for _, k := range append(tracingEnv, "OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
		t.Setenv(k, "")
	}
	t.Cleanup(func() { otel.SetTracerProvider(noop.NewTracerProvider()) })
}

func assertNoopTracing(t *testing.T, shutdown func(context.Context) error) {
	t.Helper()
	ctx, span := Tracer().Start(context.Background(), SpanPublish)
	defer span.End()
	if span.IsRecording() || span.SpanContext().IsValid() {
		t.Errorf("span records without an exporter: recording=%v valid=%v", span.IsRecording(), span.SpanContext().IsValid())
	}
	if Traceparent(ctx) != "" {
		t.Errorf("no-op span has a traceparent: %q", Traceparent(ctx))
	}
	// The propagator is installed even without an exporter, so a client's trace id passes through.
	fields := otel.GetTextMapPropagator().Fields()
	if !contains(fields, "traceparent") || !contains(fields, "baggage") {
		t.Errorf("global propagator fields %v, want traceparent and baggage", fields)
	}
	for range 2 {
		if err := shutdown(context.Background()); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestSetupTracingWithoutEnvIsNoop(t *testing.T) {
	clearTracingEnv(t)
	if TracingEnabled() {
		t.Fatal("TracingEnabled with no OTEL_* set")
	}
	shutdown, err := SetupTracing(context.Background(), "proxy-1", "test")
	if err != nil {
		t.Fatal(err)
	}
	assertNoopTracing(t, shutdown)
}

func TestSetupTracingExporterNoneOrDisabledIsNoop(t *testing.T) {
	for _, env := range [][2]string{
		{"OTEL_TRACES_EXPORTER", "none"},
		{"OTEL_SDK_DISABLED", "true"},
	} {
		t.Run(env[0], func(t *testing.T) {
			clearTracingEnv(t)
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1") // would enable tracing…
			t.Setenv(env[0], env[1])                                      // …but this wins
			if TracingEnabled() {
				t.Fatal("TracingEnabled")
			}
			shutdown, err := SetupTracing(context.Background(), "proxy-1", "test")
			if err != nil {
				t.Fatal(err)
			}
			assertNoopTracing(t, shutdown)
		})
	}
}

// otlpCollector is a real HTTP endpoint receiving OTLP/HTTP protobuf exports.
type otlpCollector struct {
	mu     sync.Mutex
	bodies [][]byte
}

func (c *otlpCollector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	if r.Method == http.MethodPost && r.URL.Path == "/v1/traces" {
		c.mu.Lock()
		c.bodies = append(c.bodies, b)
		c.mu.Unlock()
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.WriteHeader(http.StatusOK)
}

func (c *otlpCollector) all() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Join(c.bodies, nil)
}

func TestSetupTracingExportsOverOTLP(t *testing.T) {
	clearTracingEnv(t)
	col := &otlpCollector{}
	srv := httptest.NewServer(col)
	defer srv.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", srv.URL+"/v1/traces")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	if !TracingEnabled() {
		t.Fatal("TracingEnabled false with an endpoint set")
	}

	shutdown, err := SetupTracing(context.Background(), "proxy-test-7", "9.8.7")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ExtractTraceparent(context.Background(), sampleParent)
	_, span := Tracer().Start(ctx, SpanPublish)
	if !span.IsRecording() {
		t.Fatal("span not recording with an exporter configured")
	}
	span.End()
	if err := shutdown(context.Background()); err != nil { // flushes the batch processor
		t.Fatal(err)
	}
	if err := shutdown(context.Background()); err != nil {
		t.Fatalf("second shutdown: %v", err)
	}
	body := col.all()
	for _, want := range []string{"revenprox", "proxy-test-7", "9.8.7", SpanPublish, "service.instance.id", TracerName} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("exported OTLP payload lacks %q (%d bytes)", want, len(body))
		}
	}
	tid, _ := trace.TraceIDFromHex(sampleTraceID)
	if !bytes.Contains(body, tid[:]) {
		t.Error("exported span is not in the trace of the extracted traceparent")
	}
	srv.CloseClientConnections()
}

func newRecorder(t *testing.T) (*sdktrace.TracerProvider, *tracetest.InMemoryExporter) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, exp
}

func TestExtractTraceparentParentsChildSpan(t *testing.T) {
	tp, exp := newRecorder(t)
	tr := tp.Tracer(TracerName)

	ctx := ExtractTraceparent(context.Background(), sampleParent)
	_, span := tr.Start(ctx, SpanPublish)
	span.End()
	// Malformed and empty values start a new trace rather than failing.
	for _, bad := range []string{"", "garbage", "00-00000000000000000000000000000000-" + sampleSpanID + "-01"} {
		_, s := tr.Start(ExtractTraceparent(context.Background(), bad), "root")
		s.End()
	}

	spans := exp.GetSpans()
	if len(spans) != 4 {
		t.Fatalf("%d spans", len(spans))
	}
	pub := spans[0]
	if pub.SpanContext.TraceID().String() != sampleTraceID {
		t.Errorf("trace id %s, want %s", pub.SpanContext.TraceID(), sampleTraceID)
	}
	if pub.Parent.SpanID().String() != sampleSpanID || !pub.Parent.IsRemote() {
		t.Errorf("parent %s remote=%v, want %s remote", pub.Parent.SpanID(), pub.Parent.IsRemote(), sampleSpanID)
	}
	for _, s := range spans[1:] {
		if s.Parent.IsValid() || s.SpanContext.TraceID().String() == sampleTraceID {
			t.Errorf("bad traceparent produced a child: %+v", s.Parent)
		}
	}
}

// One trace crosses nodes: client traceparent → publish on node A → NATS headers →
// cluster.receive and deliver on node B.
func TestHeadersCarryTraceAcrossNodes(t *testing.T) {
	tp, exp := newRecorder(t)
	nodeA, nodeB := tp.Tracer(TracerName), tp.Tracer(TracerName)

	ctxA, publish := nodeA.Start(ExtractTraceparent(context.Background(), sampleParent), SpanPublish)
	headers := map[string][]string{"Rp-Node": {"proxy-1"}}
	InjectHeaders(ctxA, headers)
	publish.End()
	if _, ok := headers["traceparent"]; !ok {
		t.Fatalf("no lower-case traceparent header: %v", headers)
	}
	if got := headers["traceparent"][0]; got != Traceparent(ctxA) || got[3:35] != sampleTraceID {
		t.Errorf("header %q, Traceparent(ctx) %q", got, Traceparent(ctxA))
	}

	ctxB, recv := nodeB.Start(ExtractHeaders(context.Background(), headers), SpanClusterReceive)
	_, deliver := nodeB.Start(ctxB, SpanDeliver)
	deliver.End()
	recv.End()

	spans := exp.GetSpans()
	byName := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range spans.Snapshots() {
		byName[s.Name()] = s
	}
	p, r, d := byName[SpanPublish], byName[SpanClusterReceive], byName[SpanDeliver]
	if p == nil || r == nil || d == nil {
		t.Fatalf("spans: %v", byName)
	}
	for _, s := range []sdktrace.ReadOnlySpan{p, r, d} {
		if s.SpanContext().TraceID().String() != sampleTraceID {
			t.Errorf("%s in trace %s", s.Name(), s.SpanContext().TraceID())
		}
	}
	if r.Parent().SpanID() != p.SpanContext().SpanID() || !r.Parent().IsRemote() {
		t.Errorf("cluster.receive parent %s, want publish %s", r.Parent().SpanID(), p.SpanContext().SpanID())
	}
	if d.Parent().SpanID() != r.SpanContext().SpanID() {
		t.Errorf("deliver parent %s, want cluster.receive %s", d.Parent().SpanID(), r.SpanContext().SpanID())
	}

	// The upgrade request's header (canonicalised by net/http) is read too.
	h := http.Header{}
	h.Set("traceparent", sampleParent)
	if got := trace.SpanContextFromContext(ExtractHTTP(context.Background(), h)); got.TraceID().String() != sampleTraceID {
		t.Errorf("ExtractHTTP: %v", got.TraceID())
	}
	// Without a span nothing is injected and empty headers extract nothing.
	empty := map[string][]string{}
	InjectHeaders(context.Background(), empty)
	if len(empty) != 0 || trace.SpanContextFromContext(ExtractHeaders(context.Background(), nil)).IsValid() {
		t.Errorf("injected from an empty context: %v", empty)
	}
}

// With the no-op tracer (no exporter configured), a span on the hot path costs this much.
func BenchmarkNoopSpan(b *testing.B) {
	tr := noop.NewTracerProvider().Tracer(TracerName)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_, s := tr.Start(ctx, SpanDeliver)
		s.End()
	}
}
