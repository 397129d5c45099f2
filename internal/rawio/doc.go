// Package rawio owns ndlb's raw system calls on non-blocking sockets:
// reads of clients (Read), writes to targets (Writev) and samples of a
// target socket's send queue (SendQueue).
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
// Elsewhere than Linux, Read is the ordinary system call, and Writev and
// SendQueue do not exist. Use them only inside syscall.RawConn's
// callbacks, on sockets the runtime's poller owns.
package rawio
