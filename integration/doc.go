// Package integration holds end-to-end tests that build the real ndlb binary
// and run it as a child process against targets and clients on loopback:
// real sockets, real TLS, real signals. It has no non-test code.
package integration
