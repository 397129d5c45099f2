// Package pool owns the upstream worker connections of the NDJSON mode.
//
// A Pool runs Config.Connections workers per target. Each worker has a home
// target and, in a loop, dials (with exponential, jittered, capped backoff
// that never gives up but stops at shutdown), takes batches from the
// dispatch queue, writes them (several at once in one vectored write when the
// queue is deep) and keeps every written batch until the target's TCP stack
// has acknowledged its bytes. On Linux acknowledgement is measured as bytes
// written minus the SIOCOUTQ ioctl, sampled while the connection is alive;
// elsewhere a batch counts as delivered once written.
//
// When a connection fails, every batch it had not seen acknowledged goes back
// to the front of the queue, and the worker moves to a random other target
// that is currently reachable. While away from home it tries its home again
// every Config.Failback, without stalling delivery: the new connection is
// dialled beside the old one, and the old one is retired only once its
// batches are acknowledged.
//
// Every connection gets TCP keepalive, TCP_USER_TIMEOUT (Linux) and a write
// deadline, so a black-holed target is detected in seconds.
//
// The pool does not frame, queue or parse; it does no health checking beyond
// what its own dials and connections tell package upstream.
package pool
