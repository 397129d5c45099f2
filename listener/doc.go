// Package listener owns accepting client connections: the accept loop with
// its retry on resource errors, the optional TLS handshake (bounded by a
// timeout, off the accept loop), a ksuid per connection that goes into every
// log line about it, tracking of open connections, and graceful shutdown.
//
// What a connection carries is the Handler's business; the listener neither
// reads nor writes application data.
package listener
