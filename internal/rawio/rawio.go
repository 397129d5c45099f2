//go:build linux

package rawio

import (
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Read is read(2) on fd as a raw system call. fd must be non-blocking.
// It returns n = 0 with an error (syscall.Errno) on failure.
func Read(fd uintptr, buf []byte) (int, error) {
	if len(buf) == 0 {
		return 0, nil
	}
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// Writev is writev(2) on fd as a raw system call, of iov (not empty). fd
// must be non-blocking. It returns n = 0 with an error (syscall.Errno) on
// failure.
func Writev(fd uintptr, iov []unix.Iovec) (int, error) {
	n, _, e := syscall.RawSyscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// SendQueue is the bytes in a socket's send queue, written and not yet
// acknowledged by the peer (the SIOCOUTQ ioctl), as a raw system call.
func SendQueue(fd uintptr) (int, error) {
	var n int32
	if _, _, e := syscall.RawSyscall(syscall.SYS_IOCTL, fd, unix.SIOCOUTQ, uintptr(unsafe.Pointer(&n))); e != 0 {
		return 0, e
	}
	return int(n), nil
}

// Write is write(2) on fd as a raw system call. fd must be non-blocking.
// It returns n = 0 with an error (syscall.Errno) on failure.
func Write(fd int, buf []byte) (int, error) {
	if len(buf) == 0 {
		return 0, nil
	}
	n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// Splice is splice(2) of up to n bytes from in to out, one of them a
// pipe, as a raw system call; flags should hold SPLICE_F_NONBLOCK, and
// the socket must be non-blocking.
func Splice(in, out, n int, flags uint) (int, error) {
	m, _, e := syscall.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), uintptr(flags))
	if e != 0 {
		return 0, e
	}
	return int(m), nil
}

// Connect starts a connect(2) of the non-blocking socket fd to ap, as a raw
// system call: nil or EINPROGRESS means under way.
func Connect(fd int, ap netip.AddrPort) error {
	var e syscall.Errno
	port := ap.Port()
	if ip := ap.Addr(); ip.Is4() || ip.Is4In6() {
		sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ip.Unmap().As4()}
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		p[0], p[1] = byte(port>>8), byte(port)
		_, _, e = syscall.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
	} else {
		sa := unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: ip.As16()}
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		p[0], p[1] = byte(port>>8), byte(port)
		_, _, e = syscall.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
	}
	if e != 0 {
		return e
	}
	return nil
}

// Shutdown is shutdown(2) of a socket as a raw system call.
func Shutdown(fd, how int) error {
	if _, _, e := syscall.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), uintptr(how), 0); e != 0 {
		return e
	}
	return nil
}

// Close is close(2) as a raw system call, for a socket that does not
// linger (no SO_LINGER with a timeout): closing it never waits.
func Close(fd int) error {
	if _, _, e := syscall.RawSyscall(syscall.SYS_CLOSE, uintptr(fd), 0, 0); e != 0 {
		return e
	}
	return nil
}

// EpollPoll is epoll_wait(2) with a zero timeout, as a raw system call:
// the events ready now, without waiting.
func EpollPoll(epfd int, events []unix.EpollEvent) (int, error) { return EpollWait(epfd, events, 0) }

// EpollWait is epoll_wait(2) as a raw system call: it waits up to msec
// milliseconds (-1: without end) for events, on this thread, without
// telling the Go scheduler, which goes on counting the goroutine as
// running and keeps its processor. A signal (the scheduler's preemption,
// after 10 to 20 ms) ends the wait with EINTR.
func EpollWait(epfd int, events []unix.EpollEvent, msec int) (int, error) {
	n, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(msec), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// Accept4 is accept4(2) on the non-blocking listening socket fd, as a raw
// system call: the new socket is non-blocking and close-on-exec, and sa
// holds its peer's address. It returns EAGAIN when no connection is
// queued.
func Accept4(fd int, sa *unix.RawSockaddrAny) (int, error) {
	n := uint32(unix.SizeofSockaddrAny)
	nfd, _, e := syscall.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), uintptr(unsafe.Pointer(sa)), uintptr(unsafe.Pointer(&n)),
		unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(nfd), nil
}

// Getsockname is getsockname(2) of fd into sa, as a raw system call (x/sys's
// also calls getsockopt(SO_PROTOCOL), a system call the scheduler is told
// of).
func Getsockname(fd int, sa *unix.RawSockaddrAny) error {
	n := uint32(unix.SizeofSockaddrAny)
	if _, _, e := syscall.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(sa)), uintptr(unsafe.Pointer(&n))); e != 0 {
		return e
	}
	return nil
}

// SockaddrAddrPort is the IPv4 or IPv6 address and port in sa, and the
// IPv6 scope (interface index, 0 for none); ok is false for other
// families.
func SockaddrAddrPort(sa *unix.RawSockaddrAny) (ap netip.AddrPort, scope uint32, ok bool) {
	switch sa.Addr.Family {
	case unix.AF_INET:
		in := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		p := (*[2]byte)(unsafe.Pointer(&in.Port))
		return netip.AddrPortFrom(netip.AddrFrom4(in.Addr), uint16(p[0])<<8|uint16(p[1])), 0, true
	case unix.AF_INET6:
		in := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
		p := (*[2]byte)(unsafe.Pointer(&in.Port))
		return netip.AddrPortFrom(netip.AddrFrom16(in.Addr), uint16(p[0])<<8|uint16(p[1])), in.Scope_id, true
	}
	return netip.AddrPort{}, 0, false
}

// Socket is socket(2) as a raw system call.
func Socket(domain, typ, proto int) (int, error) {
	fd, _, e := syscall.RawSyscall(unix.SYS_SOCKET, uintptr(domain), uintptr(typ), uintptr(proto))
	if e != 0 {
		return -1, e
	}
	return int(fd), nil
}

// GetsockoptInt is getsockopt(2) of an int option, as a raw system call.
func GetsockoptInt(fd, level, opt int) (int, error) {
	var v int32
	l := uint32(4)
	_, _, e := syscall.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return 0, e
	}
	return int(v), nil
}

// SetsockoptInt is setsockopt(2) of an int option, as a raw system call.
func SetsockoptInt(fd, level, opt, value int) error {
	v := int32(value)
	_, _, e := syscall.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&v)), 4, 0)
	if e != 0 {
		return e
	}
	return nil
}
