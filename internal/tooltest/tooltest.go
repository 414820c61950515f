package tooltest

import (
	"os"
	"os/exec"
	"testing"
)

// Required reports whether missing tools fail tests (SPOOL_REQUIRE_TOOLS=1).
func Required() bool { return os.Getenv("SPOOL_REQUIRE_TOOLS") == "1" }

// Have reports whether the tool is present (present's answer). When it is
// not, it fails the test if tools are required, and otherwise logs that
// the part of the test needing it is skipped, and how to install it.
func Have(t testing.TB, tool, install string, present bool) bool {
	t.Helper()
	if present {
		return true
	}
	if Required() {
		t.Fatalf("%s is missing (SPOOL_REQUIRE_TOOLS=1): %s", tool, install)
	}
	t.Logf("%s is missing: skipping what needs it; %s", tool, install)
	return false
}

// Need skips the test when the tool is missing, or fails it if tools are
// required.
func Need(t testing.TB, tool, install string, present bool) {
	t.Helper()
	if !Have(t, tool, install, present) {
		t.Skipf("%s is missing", tool)
	}
}

// OnPath reports whether name is an executable on PATH.
func OnPath(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}
