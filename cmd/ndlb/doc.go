// Command ndlb is a TCP load balancer that understands lines: it spreads
// newline-delimited streams (NDJSON logs) over many targets in batches of
// whole lines, without losing or tearing a line when a target fails. With
// --passthrough it balances whole connections instead.
//
// Run `ndlb --help` for the flags, `ndlb demo` to see it work.
//
// This package owns the command line only: flags, NDLB_* environment
// variables and the --config file (whose keys are the flag names, so both
// go through one validation, with exit status 2 and one line naming the
// flag, or FILE:LINE) mapped onto the library packages' configs; the
// runtime of one or more listeners with their health checks and DNS
// discovery; reloads on SIGHUP and file changes; signals and exit codes;
// and the demo, version, healthcheck and check-config commands. The data
// path lives in the library packages.
package main
