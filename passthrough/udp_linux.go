package passthrough

import (
	"encoding/binary"
	"net"

	"golang.org/x/sys/unix"
)

// overflowCounts asks the kernel to attach to each datagram read from c the
// count of datagrams it dropped for want of buffer space (SO_RXQ_OVFL).
func overflowCounts(c *net.UDPConn) {
	if rc, err := c.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1) })
	}
}

// noteOverflow records the kernel's drop count from a datagram's control
// message, if it has one. The count is the socket's, since it was opened.
func (s *UDPServer) noteOverflow(oob []byte) {
	if len(oob) == 0 {
		return
	}
	for len(oob) > 0 {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SO_RXQ_OVFL && len(data) >= 4 {
			s.overflows.Store(uint64(binary.NativeEndian.Uint32(data)))
		}
		oob = rest
	}
}
