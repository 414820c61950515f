package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/pipeline"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err  error
		want pipeline.ErrorClass
	}{
		{&pgconn.PgError{Code: "08006"}, pipeline.ClassTransient}, // connection failure
		{&pgconn.PgError{Code: "53300"}, pipeline.ClassTransient}, // too many connections
		{&pgconn.PgError{Code: "57P01"}, pipeline.ClassTransient}, // admin shutdown
		{&pgconn.PgError{Code: "57014"}, pipeline.ClassTransient}, // statement timeout
		{&pgconn.PgError{Code: "40001"}, pipeline.ClassTransient}, // serialization failure
		{&pgconn.PgError{Code: "40P01"}, pipeline.ClassTransient}, // deadlock
		{&pgconn.PgError{Code: "55P03"}, pipeline.ClassTransient}, // lock timeout
		{&pgconn.PgError{Code: "22P02"}, pipeline.ClassDataException},
		{&pgconn.PgError{Code: "22003"}, pipeline.ClassDataException},
		{&pgconn.PgError{Code: "23514"}, pipeline.ClassConstraint}, // check
		{&pgconn.PgError{Code: "23505"}, pipeline.ClassConstraint}, // unique
		{&pgconn.PgError{Code: "23502"}, pipeline.ClassConstraint}, // not null
		{&pgconn.PgError{Code: "21000"}, pipeline.ClassConstraint}, // row touched twice: split
		{&pgconn.PgError{Code: "42P01"}, pipeline.ClassSchema},     // the table changed: retry once the catalog is read again
		{&pgconn.PgError{Code: "42703"}, pipeline.ClassSchema},
		{&pgconn.PgError{Code: "42601"}, pipeline.ClassInternal}, // a syntax error: retried, logged
		{fmt.Errorf("wrapped: %w", io.ErrUnexpectedEOF), pipeline.ClassTransient},
		{context.DeadlineExceeded, pipeline.ClassTransient},
		{errors.New("conn closed"), pipeline.ClassTransient},
		{errors.New("something odd"), pipeline.ClassInternal},
	}
	for _, tt := range tests {
		got := classify(fmt.Errorf("doing: %w", tt.err))
		require.Equal(t, tt.want, pipeline.ClassOf(got), "%v", tt.err)
		require.ErrorIs(t, got, tt.err)
	}
}
