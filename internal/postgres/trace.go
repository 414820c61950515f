package postgres

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// Spans starts a span for each statement or batch of statements spool
// sends, under whatever span the context carries (a processor's batch, an
// upload): tracing.Tracing implements it. attrs are the statement's text,
// cut short, and for a batch its size; never its parameters.
type Spans interface {
	StartSpan(ctx context.Context, name string, attrs map[string]any) (context.Context, func(error))
}

// statementShown bounds the statement text a span carries.
const statementShown = 200

// spanTracer is pgx's query and batch tracer, reporting to Spans.
type spanTracer struct{ spans Spans }

type spanEnd struct{}

func (t spanTracer) start(ctx context.Context, name string, attrs map[string]any) context.Context {
	ctx, end := t.spans.StartSpan(ctx, name, attrs)
	return context.WithValue(ctx, spanEnd{}, end)
}

func finish(ctx context.Context, err error) {
	if end, ok := ctx.Value(spanEnd{}).(func(error)); ok {
		end(err)
	}
}

func shown(sql string) string {
	if len(sql) > statementShown {
		return sql[:statementShown] + "…"
	}
	return sql
}

func (t spanTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	return t.start(ctx, "postgres.query", map[string]any{"db.statement": shown(d.SQL)})
}

func (t spanTracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryEndData) {
	finish(ctx, d.Err)
}

func (t spanTracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	var first string
	if d.Batch != nil && d.Batch.Len() > 0 {
		first = shown(d.Batch.QueuedQueries[0].SQL)
	}
	size := 0
	if d.Batch != nil {
		size = d.Batch.Len()
	}
	return t.start(ctx, "postgres.batch", map[string]any{"db.statements": size, "db.statement": first})
}

func (spanTracer) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}

func (t spanTracer) TraceBatchEnd(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchEndData) {
	finish(ctx, d.Err)
}
