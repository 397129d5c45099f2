// Package rawio owns raw reads of non-blocking sockets (the upstream pool
// makes its writes and send-queue samples raw in pool/writev_linux.go and
// pool/sockopt_linux.go, for the same reason).
//
// Go's own socket reads and writes tell the scheduler that the goroutine
// entered a system call; if the call lasts more than about 20 µs (a
// loopback write runs the receiver's TCP stack too), the scheduler's
// monitor hands the goroutine's processor to another thread, which wakes
// for nothing. On a non-blocking socket a call never waits (it returns
// EAGAIN, and the caller waits in the runtime's poller through
// syscall.RawConn), so it can be made raw, as Read does:
//
//	err := rc.Read(func(fd uintptr) bool {
//		n, err = rawio.Read(fd, buf)
//		return err != syscall.EAGAIN
//	})
//
// Elsewhere than Linux, Read is the ordinary system call. Use it only
// inside syscall.RawConn's Read callback, on sockets the runtime's poller
// owns.
package rawio
