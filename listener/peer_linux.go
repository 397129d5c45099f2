package listener

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// canPeek says readable works here.
const canPeek = true

// readable reports whether the socket fd has something to read: data, its
// peer's end of stream, or an error. It takes nothing (MSG_PEEK).
func readable(fd uintptr) bool {
	var b [1]byte
	for {
		_, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		if errno != syscall.EINTR {
			return errno != syscall.EAGAIN
		}
	}
}

// peerClosed reports whether the peer of the TCP socket fd has sent its FIN
// (as opposed to reads ending because this side shut its read side).
func peerClosed(fd uintptr) bool {
	info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return true
	}
	switch info.State {
	case unix.BPF_TCP_ESTABLISHED, unix.BPF_TCP_FIN_WAIT1, unix.BPF_TCP_FIN_WAIT2:
		return false
	}
	return true
}
