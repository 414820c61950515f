package postgres

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/spoolhq/spool/pipeline"
)

// classify gives a database error its pipeline class. It is the one place
// that maps SQLSTATEs:
//
//   - 08 (connection), 53 (insufficient resources), 57 (operator
//     intervention: admin shutdown, query canceled by a timeout), 40
//     (serialization failure, deadlock) and 55P03 (lock not available) are
//     transient: retried, never dead-lettered;
//   - 22 (data exception) and 23 (integrity constraint) are permanent for
//     the row;
//   - 21000 (a statement touched one row twice) is permanent for the batch:
//     splitting it resolves it;
//   - 42703 (undefined column), 42804 (datatype mismatch) and 42P01
//     (undefined table) mean the table changed under us: schema, retried
//     once the processor has read the catalog again;
//   - anything else is internal: retried with backoff and logged loudly,
//     because dead-lettering every command over a mistake would be worse.
func classify(err error) error {
	if err == nil {
		return nil
	}
	if code := sqlState(err); code != "" {
		return pipeline.Classify(classOfSQLState(code), err)
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	var netErr net.Error
	if pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded) || errors.As(err, &netErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isConnError(err) {
		return pipeline.Classify(pipeline.ClassTransient, err)
	}
	return pipeline.Classify(pipeline.ClassInternal, err)
}

// sqlState is the SQLSTATE of the PostgreSQL error in err's chain, or ""
// when there is none.
func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// isLockTimeout tells a statement that waited for a lock past
// lock_timeout (55P03).
func isLockTimeout(err error) bool { return sqlState(err) == "55P03" }

// isUniqueViolation tells a unique violation (23505). In the ledger claim,
// whose only write is to the ledger, it is an id another transaction
// claimed since the claim looked it up.
func isUniqueViolation(err error) bool { return sqlState(err) == "23505" }

func classOfSQLState(code string) pipeline.ErrorClass {
	switch {
	case code == "55P03":
		return pipeline.ClassTransient
	case code == "21000":
		return pipeline.ClassConstraint
	case code == "42703" || code == "42804" || code == "42P01":
		return pipeline.ClassSchema
	case len(code) < 2:
		return pipeline.ClassInternal
	}
	switch code[:2] {
	case "08", "53", "57", "40":
		return pipeline.ClassTransient
	case "22":
		return pipeline.ClassDataException
	case "23":
		return pipeline.ClassConstraint
	default:
		return pipeline.ClassInternal
	}
}

func isConnError(err error) bool {
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "conn closed") || strings.Contains(msg, "connection reset") ||
		strings.Contains(msg, "broken pipe") || strings.Contains(msg, "closed pool")
}
