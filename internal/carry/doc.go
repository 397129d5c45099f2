// Package carry owns the continuity of ndlb's OpenTelemetry counters
// across the instances of a listener: a reload replaces a listener with a
// new instance that counts from zero while the old one drains beside it.
// Each package that reports metrics (listener, upstream, route, ndjson,
// passthrough) adds its instances to a Group, which reports their sum
// and keeps what removed instances had counted, so that a counter such as
// ndlb_connections_accepted_total never falls back while the process
// runs. It imports nothing of ours.
package carry
