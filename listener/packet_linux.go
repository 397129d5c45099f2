package listener

import (
	"encoding/binary"
	"syscall"
	"unsafe"

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

// Drops asks the kernel for the socket's drop count now (SO_MEMINFO's
// SK_MEMINFO_DROPS, the count SO_RXQ_OVFL attaches): Overflows sees a
// drop only when a datagram is read after it, so a count taken at the
// end (or while no datagram comes) needs this. ok is false when the
// socket is closed or the kernel does not say.
func (p *Packet) Drops() (n uint64, ok bool) {
	rc, err := p.SyscallConn()
	if err != nil {
		return 0, false
	}
	const skMeminfoDrops, skMeminfoVars = 8, 9
	var info [skMeminfoVars]uint32
	size := uint32(unsafe.Sizeof(info))
	cerr := rc.Control(func(fd uintptr) {
		_, _, e := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_MEMINFO,
			uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&size)), 0)
		ok = e == 0 && size > skMeminfoDrops*4
	})
	if cerr != nil || !ok {
		return 0, false
	}
	return uint64(info[skMeminfoDrops]), true
}
