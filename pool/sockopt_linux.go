package pool

import (
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ndlb/ndlb/internal/rawio"
)

// outq samples SIOCOUTQ: the bytes in a socket's send queue, written but
// not yet acknowledged by the peer. One is made per connection so that a
// sample allocates nothing (a closure passed to Control would).
type outq struct {
	rc  syscall.RawConn
	fn  func(fd uintptr)
	n   int
	err error
}

func newOutq(rc syscall.RawConn) *outq {
	q := &outq{rc: rc}
	q.fn = q.sample
	return q
}

// sample asks for the send queue with a raw system call: it does not
// block, so the scheduler need not hear of it (package rawio).
func (q *outq) sample(fd uintptr) { q.n, q.err = rawio.SendQueue(fd) }

// unacked returns the bytes written and not yet acknowledged.
func (q *outq) unacked() (int, error) {
	if err := q.rc.Control(q.fn); err != nil {
		return 0, err
	}
	return q.n, q.err
}

// userTimeoutControl sets TCP_USER_TIMEOUT on new sockets, so data left
// unacknowledged for d fails the connection.
func userTimeoutControl(d time.Duration) func(network, address string, c syscall.RawConn) error {
	if d <= 0 {
		return nil
	}
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d.Milliseconds()))
		})
		if err != nil {
			return err
		}
		return serr
	}
}
