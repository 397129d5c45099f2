package linetest

import "golang.org/x/sys/unix"

// unreadBytes returns the bytes in a socket's receive queue (SIOCINQ).
func unreadBytes(fd int) (int, error) { return unix.IoctlGetInt(fd, unix.SIOCINQ) }
