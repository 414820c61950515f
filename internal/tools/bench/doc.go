// Package bench measures spool against the limits of the machine it runs on,
// side by side in one run: every figure is a ratio to a limit measured on
// the same records minutes apart, because absolute timings on a shared
// machine mean little.
//
// It runs the real binaries as separate processes (the embedded broker from
// spoolctl, ingress), so that each one's CPU seconds and peak RSS are its
// own, and checks each run's result before it reports a speed: a fast wrong
// answer is a failure. cmd/spool-bench is its command line; `make bench`
// builds the binaries and runs it.
package bench
