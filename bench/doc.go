// Package bench holds ndlb's benchmarks: the framer on its own, and the
// end-to-end NDJSON path (generator → ndlb → 2 sinks on loopback) measured
// against a direct generator → sinks run in the same invocation, so that the
// figures are ratios taken on one machine at one moment.
//
//	go test ./bench -run '^$' -bench . -benchtime 3x
//
// bench/wrk/run.sh measures kept-alive HTTP through ndlb and HAProxy with
// wrk against nginx, the tools the speed goals were first measured with.
//
// docs/benchmarks.md records the figures and how they were made.
package bench
