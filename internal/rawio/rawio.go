//go:build linux

package rawio

import (
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
