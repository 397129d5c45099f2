//go:build linux

package rawio

import (
	"syscall"
	"unsafe"
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
