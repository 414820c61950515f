package postgres_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/internal/config"
	"github.com/spoolhq/spool/internal/postgres"
)

// TestRedactionAgreesWithPgconn holds config.RedactURL (which cannot import
// pgx) to pgconn's reading of each string: whatever password pgconn finds,
// the redacted text does not show it. And a string pgx cannot read is not
// echoed in the error Open returns.
func TestRedactionAgreesWithPgconn(t *testing.T) {
	t.Parallel()
	const pw = "Zq9-s3cr3t"
	for _, s := range []string{
		"postgres://u:" + pw + "@h/db",
		"postgres://u@h/db?password=" + pw,
		"postgresql://u@h1:5432,h2:5433/db?sslmode=disable&password=" + pw,
		"postgres://u:" + strings.ReplaceAll(pw, "-", "%2D") + "@h/db",
		"host=h user=u password=" + pw,
		"host=h user=u password = '" + pw + " with space'",
		`host=h password='it\'s ` + pw + `'`,
		`host=h password=` + pw + `\ tail dbname=db`,
		"\thost=h\npassword=" + pw + "\r\n",
	} {
		cfg, err := pgconn.ParseConfig(s)
		require.NoError(t, err, s)
		require.Contains(t, cfg.Password, pw, s)
		require.NotContains(t, config.RedactURL(s), pw, s)
	}
	for _, s := range []string{
		"host=h password='" + pw,
		"postgres://u:" + pw + "@h:port/db",
		"postgres://u@h/db?password=%zz" + pw,
	} {
		require.NotContains(t, config.RedactURL(s), pw, s)
		_, err := postgres.Open(context.Background(), s, 2)
		require.Error(t, err, s)
		require.NotContains(t, err.Error(), pw, s)
	}
}
