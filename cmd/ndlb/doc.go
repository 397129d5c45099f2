// Command ndlb is a TCP load balancer that understands lines: it spreads
// newline-delimited streams (NDJSON logs) over many targets in batches of
// whole lines, without losing or tearing a line when a target fails. With
// --passthrough it balances whole connections instead.
//
// Run `ndlb --help` for the flags, `ndlb demo` to see it work.
//
// This package owns the command line only: flags and NDLB_* environment
// variables (made from the settings registry) and the --config file (whose
// keys are the setting names, so both go through one validation, with exit
// status 2 and one line naming the flag, or FILE:LINE), turned into a
// supervisor.Spec; the triggers of a reload (SIGHUP, the file watch);
// signals and exit codes; and the demo, version, healthcheck and
// check-config commands. The running process is the supervisor's; the data
// path lives in the library packages.
package main
