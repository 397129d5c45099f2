// Package upstream owns the shared set of targets and what both modes know
// of each: its state (up, down, draining, disabled: an operator's drain or
// disable first, then health-check verdicts and passive dial results), its
// weight, the last error and check, and per-target traffic counters.
//
// The set's membership changes while it is in use (a reload, DNS
// discovery): Update adds targets and drains removed ones, which stay until
// Prune finds them without connections; Watch signals every change. Workers
// (package pool) and passthrough read snapshots and report outcomes here.
// The set does no I/O itself.
package upstream
