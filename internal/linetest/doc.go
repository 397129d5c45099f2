// Package linetest is a small world of NDJSON clients and targets on loopback,
// shared by the tests, the benchmarks and `ndlb demo`.
//
// Every line it generates names its client connection and sequence number and
// carries padding whose length and letters follow from them, so a Ledger
// counts lost, duplicated and torn lines exactly: a merged line or a fragment
// presented as a line fails the strict parse. A Sink is a target that counts
// what it receives and can pause reading, reset its connections and come back.
package linetest
