package listener

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
)

// CountOverflows asks the kernel to attach to each datagram read from the
// socket the count of datagrams it dropped, since the socket was opened,
// for want of buffer space (SO_RXQ_OVFL); Overflows reads it. Best effort.
func (p *Packet) CountOverflows() {
	if rc, err := p.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1) })
	}
}

// OverflowSpace is the control message space a read needs for Overflows.
var OverflowSpace = unix.CmsgSpace(4)

// Overflows returns the kernel's drop count from a datagram's control
// messages (see CountOverflows); ok is false when they hold none: the
// kernel attaches it only once it has dropped some.
func Overflows(oob []byte) (n uint64, ok bool) {
	for len(oob) > 0 {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return 0, false
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SO_RXQ_OVFL && len(data) >= 4 {
			return uint64(binary.NativeEndian.Uint32(data)), true
		}
		oob = rest
	}
	return 0, false
}
