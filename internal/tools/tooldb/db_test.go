package tooldb

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestErrorsLeaveTheURLOut: a URL pgx cannot read may still hold a
// password, so no error quotes it.
func TestErrorsLeaveTheURLOut(t *testing.T) {
	t.Parallel()
	const pw = "Zq9-s3cr3t"
	for _, s := range []string{
		"host=h password='" + pw,
		"postgres://u:" + pw + "@h:port/db",
		"postgres://u@h/db?password=%zz" + pw,
	} {
		_, err := LockRun(context.Background(), s, "x")
		require.ErrorIs(t, err, errUnreadableURL, s)
		require.ErrorIs(t, ResetSchema(context.Background(), s, "x"), errUnreadableURL, s)
		_, err = OpenLimits(context.Background(), s)
		require.ErrorIs(t, err, errUnreadableURL, s)
	}
}
