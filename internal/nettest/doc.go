// Package nettest owns network fixtures that the tests of several
// packages share, such as a loopback address that drops SYNs. Tests only
// import it; it imports nothing of ndlb's.
package nettest
