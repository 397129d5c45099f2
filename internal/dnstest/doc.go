// Package dnstest is an in-process DNS server on loopback for tests: it
// answers A, AAAA and SRV questions over UDP from records the test sets and
// changes, and gives a net.Resolver that asks only it. It is not a
// general DNS server: no TCP, no delegation, one question per query.
package dnstest
