//go:build unix && !linux

package rawio

import "syscall"

// Read is read(2) on fd. Elsewhere than Linux raw system calls go through
// libc, so this is the runtime's ordinary system call.
func Read(fd uintptr, buf []byte) (int, error) {
	n, err := syscall.Read(int(fd), buf)
	if err != nil {
		return 0, err
	}
	return n, nil
}
