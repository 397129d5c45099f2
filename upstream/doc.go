// Package upstream owns the shared set of targets and what the data path
// knows of each: whether it was reachable at the last attempt, the last
// error, and per-target traffic counters.
//
// Workers (package pool) report dial and connection outcomes here and ask it
// for a reachable target when they fail over. The set does no I/O itself.
package upstream
