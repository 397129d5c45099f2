// Command ndlb is a TCP load balancer that understands lines: it spreads
// newline-delimited streams (NDJSON logs) over many targets in batches of
// whole lines, without losing or tearing a line when a target fails.
//
// Run `ndlb --help` for the flags, `ndlb demo` to see it work.
//
// This package owns the command line only: flags and NDLB_* environment
// variables mapped onto ndjson.Config (with exit status 2 and one line naming
// the flag when a value is wrong), signals, exit codes, and the demo,
// version and healthcheck commands. The data path lives in the library
// packages.
package main
