// Package rawio owns ndlb's raw system calls on non-blocking sockets:
// reads of clients (Read), writes to targets (Writev), samples of a
// target socket's send queue (SendQueue), and the accepts, sockets,
// options, connects, splices and closes of passthrough's event loops.
//
// Go's own socket reads and writes tell the scheduler that the goroutine
// entered a system call; if the call lasts more than about 20 µs (a
// loopback write runs the receiver's TCP stack too), the scheduler's
// monitor hands the goroutine's processor to another thread, which wakes
// for nothing. On a non-blocking socket a call never waits (it returns
// EAGAIN, and the caller waits in the runtime's poller through
// syscall.RawConn), so it can be made raw, as Read does. There is a
// second cost: the first system call the scheduler is told of after the
// whole process was idle wakes its monitor thread, which then polls every
// 20 µs for about a millisecond; a process that goes idle and wakes
// thousands of times a second (new connections) pays it each time unless
// its hot path is raw throughout (listener's raw accepts, passthrough's
// loops):
//
//	err := rc.Read(func(fd uintptr) bool {
//		n, err = rawio.Read(fd, buf)
//		return err != syscall.EAGAIN
//	})
//
// Elsewhere than Linux, Read is the ordinary system call, and the others
// do not exist. Use them on non-blocking sockets only: inside
// syscall.RawConn's callbacks for sockets the runtime's poller owns, or on
// sockets kept out of it (passthrough's event loops).
package rawio
