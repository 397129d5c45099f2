// Package demo is `ndlb demo`: two real NDJSON targets, ndlb in front of
// them and a generator, all in one process over loopback, with one target
// killed and restarted midway, and a verdict computed from what the targets
// received.
//
// It uses internal/linetest, the test suite's self-checking lines and
// sinks, on purpose: the demo's verdict is then computed by the same
// checker that the integration tests trust, rather than by a second copy
// in the binary. linetest holds no test framework code (no testing
// import), so it costs the binary a few kilobytes.
package demo
