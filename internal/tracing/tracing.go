package tracing

import (
	"context"
	"fmt"
	"net/http"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/spoolhq/spool/internal/buildinfo"
	"github.com/spoolhq/spool/pipeline"
)

// Tracing is one binary's tracer: spans go to an OTLP/HTTP endpoint in
// batches. It implements httpapi.Tracer and pipeline.Tracer.
type Tracing struct {
	provider *sdktrace.TracerProvider
	tracer   trace.Tracer
	prop     propagation.TraceContext
}

// New exports the spans of service to endpoint (an OTLP/HTTP base URL such
// as http://collector:4318; empty: the exporter's defaults, which read
// OTEL_EXPORTER_OTLP_ENDPOINT), sampling ratio of the traces that start
// here (uploads without a traceparent; a traced request's sampling
// decision is kept).
func New(ctx context.Context, service, endpoint string, ratio float64) (*Tracing, error) {
	var opts []otlptracehttp.Option
	if endpoint != "" {
		opts = append(opts, otlptracehttp.WithEndpointURL(endpoint))
	}
	exp, err := otlptracehttp.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("creating the OTLP exporter: %w", err)
	}
	res := resource.NewSchemaless(semconv.ServiceName(service), semconv.ServiceVersion(buildinfo.Read().Version))
	p := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))))
	return &Tracing{provider: p, tracer: p.Tracer("github.com/spoolhq/spool")}, nil
}

// Shutdown sends the spans still buffered and stops.
func (t *Tracing) Shutdown(ctx context.Context) error { return t.provider.Shutdown(ctx) }

// StartUpload implements httpapi.Tracer.
func (t *Tracing) StartUpload(ctx context.Context, header http.Header, job pipeline.JobID) (context.Context, string, func(int)) {
	ctx = t.prop.Extract(ctx, propagation.HeaderCarrier(header))
	ctx, span := t.tracer.Start(ctx, "spool.upload", trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("spool.job_id", string(job))))
	carrier := propagation.MapCarrier{}
	t.prop.Inject(ctx, carrier)
	return ctx, carrier["traceparent"], func(status int) {
		span.SetAttributes(attribute.Int("http.response.status_code", status))
		if status >= 500 {
			span.SetStatus(codes.Error, strconv.Itoa(status))
		}
		span.End()
	}
}

// StartBatch implements pipeline.Tracer: the batch's span is a root of
// its own, linked to each upload its records came from.
func (t *Tracing) StartBatch(ctx context.Context, partition int32, records int, traceparents []string) (context.Context, func(error)) {
	links := make([]trace.Link, 0, len(traceparents))
	for _, tp := range traceparents {
		sc := trace.SpanContextFromContext(t.prop.Extract(context.Background(), propagation.MapCarrier{"traceparent": tp}))
		if sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	ctx, span := t.tracer.Start(ctx, "spool.batch", trace.WithSpanKind(trace.SpanKindConsumer), trace.WithLinks(links...),
		trace.WithAttributes(attribute.Int("spool.partition", int(partition)), attribute.Int("spool.records", records)))
	return ctx, func(err error) {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, pipeline.BoundError(err))
		}
		span.End()
	}
}

// StartSpan implements postgres.Spans: a child span of the one ctx carries,
// for a statement or batch of statements; nothing when ctx carries none,
// so that housekeeping outside any upload or batch starts no traces.
func (t *Tracing) StartSpan(ctx context.Context, name string, attrs map[string]any) (context.Context, func(error)) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx, func(error) {}
	}
	kv := make([]attribute.KeyValue, 0, len(attrs))
	for k, v := range attrs {
		switch v := v.(type) {
		case string:
			kv = append(kv, attribute.String(k, v))
		case int:
			kv = append(kv, attribute.Int(k, v))
		}
	}
	ctx, span := t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(append(kv, attribute.String("db.system", "postgresql"))...))
	return ctx, func(err error) {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, pipeline.BoundError(err))
		}
		span.End()
	}
}
