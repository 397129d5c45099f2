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
// Bytes are then copied both ways, each way by its own stream. Between two
// plain TCP sockets on Linux a stream copies small messages with read and
// write through a pooled buffer taken only for the read, and once a read
// fills the buffer it switches to splice(2), which moves bulk data through a
// pipe without entering user space (the pipe, too, is held only while data
// moves). With TLS on either side a pooled buffer is used. A side that ends
// its stream (EOF) is half-closed on the other side (CloseWrite), so
// protocols that shut their write side keep working. A connection with no
// traffic either way for IdleTimeout is closed, and one half-closed so
// with none for HalfCloseTimeout, if set.
//
// A spliced connection idle for ParkAfter gives up its goroutines: a
// sweeper cuts their waits short with a read deadline, and they arm their
// sockets in the parker's own epoll set instead, where one goroutine waits
// for all of them and starts a stream's goroutine again when its socket has
// data. An idle connection then holds no goroutine, stack or buffer.
//
// With Config.EventLoop (loop_linux.go), plain TCP connections whose
// targets are all IP:port hold no goroutine at any time: the client's
// socket leaves the runtime's poller after accept, the target is dialled
// with a non-blocking connect, and one epoll loop per processor (or
// Config.EventLoops of them) runs the connect, failover, retries, copies,
// splices, half-closes and the end of each connection inline. Each loop
// waits in the kernel on its thread, holding a processor that GOMAXPROCS
// gained for it (Config.EventLoopThreads), or, with that off or past
// twice as many such loops as the process has cores, in the runtime's
// poller on a duplicate of its epoll descriptor. The goroutine that
// accepted the connection starts its connect and writes what the client
// has already sent to the target: a target that answers within the
// connect call (on the same host) then has the client's first bytes
// without waiting for the loop, and the connection joins the loop as a
// proxied one. Other connections (TLS, a custom Dial, a target given by
// name) are served by streams as above.
//
// The package does not parse what it proxies and does not retry a
// connection once the target has accepted it: a target that accepts and
// then fails costs that one client its connection, and counts against the
// target's passive health.
package passthrough
