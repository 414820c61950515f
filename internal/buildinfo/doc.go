// Package buildinfo says what a binary was built from — the module's
// version, the commit and the Go version, as runtime/debug reads them from
// the binary — for every binary's --version and the spool_build_info
// metric.
package buildinfo
