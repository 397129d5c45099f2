package rawio

import (
	"io"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Writev writes its buffers in order, and SendQueue reads the socket's
// send queue (empty once the loopback peer's kernel has taken the bytes).
func TestWritevAndSendQueue(t *testing.T) {
	a, b := pair(t)
	ra, _ := a.SyscallConn()
	parts := [][]byte{[]byte("one "), []byte("two "), []byte("three")}
	iov := make([]unix.Iovec, len(parts))
	for i, p := range parts {
		iov[i].Base = &p[0]
		iov[i].SetLen(len(p))
	}
	var n int
	var err error
	ra.Write(func(fd uintptr) bool { n, err = Writev(fd, iov); return err != syscall.EAGAIN })
	if n != 13 || err != nil {
		t.Fatalf("writev %d, %v", n, err)
	}
	got := make([]byte, 13)
	if _, err := io.ReadFull(b, got); err != nil || string(got) != "one two three" {
		t.Fatalf("read %q, %v", got, err)
	}
	var q int
	ra.Control(func(fd uintptr) { q, err = SendQueue(fd) })
	if err != nil || q < 0 || q > 13 {
		t.Fatalf("send queue %d, %v", q, err)
	}
}
