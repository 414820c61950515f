// Package tooltest lets a test use a program from outside Go — kcat, a
// headless browser — where the machine has it. Without it, the test (or
// the part that needs it) is skipped with a message saying how to install
// it; with SPOOL_REQUIRE_TOOLS=1, which CI sets, a missing tool fails the
// test instead, so that CI never passes by skipping.
package tooltest
