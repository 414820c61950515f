package broker_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/internal/broker"
	"github.com/spoolhq/spool/internal/config"
)

// TestGroupDefaultsAreSpools: the embedded broker's group session timeout
// is processor.session_timeout's default, so that a group config it forgot
// on a kill changes nothing.
func TestGroupDefaultsAreSpools(t *testing.T) {
	for _, k := range config.Keys {
		if k.Name == "processor.session_timeout" {
			require.Equal(t, k.Default, broker.GroupSessionTimeout)
			return
		}
	}
	t.Fatal("no key processor.session_timeout")
}
