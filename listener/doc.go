// Package listener owns accepting client connections: the accept loop with
// its retry on resource errors and its connection limit (MaxConns: beyond
// it, clients wait in the kernel's backlog), the optional PROXY protocol
// header and TLS handshake (bounded by timeouts, off the accept loop, on
// reused worker goroutines), a ksuid per connection that goes into every
// log line about it, tracking of open connections (also of those a handler
// detached to serve on its own goroutines), and graceful shutdown: at its
// deadline each connection is interrupted (its socket shut both ways, so the
// kernel acknowledges nothing more) and FinalRead reads what the kernel
// holds; TLS connections do so in their own reads. Handover gives the open
// listening socket to a successor, so a reload resets no queued client.
// For a handler that serves sockets itself (passthrough's event loops),
// Config.RawAccept waits on a duplicate of the listening socket and takes
// connections with raw, non-blocking accept4 calls, their sockets outside
// the runtime's poller (Conn.TakeFD, Conn.Materialize).
//
// What a connection carries is the Handler's business; the listener neither
// reads nor writes application data after the PROXY header.
package listener
