// Package passthrough owns L4 mode: each client connection is proxied whole
// to one target, bytes unchanged.
//
//	srv, err := passthrough.New(cfg)
//	srv.Start(ln)      // accept and proxy in the background
//	...
//	srv.Shutdown()     // stop accepting, drain, close, log a summary
//
// For each connection the balancing policy (package balance) orders the
// targets; targets that failed their last MaxFails attempts are skipped for
// FailTimeout unless every target is. The first target that accepts within
// ConnectTimeout (TLS handshake and PROXY header included) gets the
// connection; when every target fails, the round is retried with backoff
// ConnectRetries times before the client is closed.
//
// Bytes are then copied both ways. Between two plain TCP sockets on Linux
// they move with splice(2) through a pipe, without entering user space; the
// pipe is held only while data moves, so an idle connection costs two
// sockets and two parked goroutines. With TLS on either side a pooled buffer
// is used. A side that ends its stream (EOF) is half-closed on the other
// side (CloseWrite), so request/response protocols that shut their write
// side keep working. A connection with no traffic either way for
// IdleTimeout is closed.
//
// The package does not parse what it proxies and does not retry a
// connection once the target has accepted it: a target that accepts and
// then fails costs that one client its connection, and counts against the
// target's passive health.
package passthrough
