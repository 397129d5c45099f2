package pool

import (
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// unackedBytes returns the bytes in the socket's send queue: written but not
// yet acknowledged by the peer (SIOCOUTQ).
func unackedBytes(rc syscall.RawConn) (int, error) {
	var n int
	var ierr error
	if err := rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) }); err != nil {
		return 0, err
	}
	return n, ierr
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
