package rawio

import (
	"io"
	"net"
	"syscall"
	"testing"
	"time"

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

// Accept4 reports EAGAIN on an empty backlog, then takes a queued
// connection non-blocking and close-on-exec with its peer's address (and
// Getsockname its local one), for IPv4 and IPv6; Socket, SetsockoptInt and
// GetsockoptInt make a socket, set an option that getsockopt reads back,
// and read one as getsockopt does.
func TestAcceptSocketAndOptions(t *testing.T) {
	for _, network := range []string{"tcp4", "tcp6"} {
		ln, err := net.Listen(network, map[string]string{"tcp4": "127.0.0.1:0", "tcp6": "[::1]:0"}[network])
		if err != nil {
			t.Logf("%s: %v (skipped: no loopback address)", network, err)
			continue
		}
		defer ln.Close()
		rc, _ := ln.(*net.TCPListener).SyscallConn()
		var sa unix.RawSockaddrAny
		var nfd int
		rc.Control(func(fd uintptr) { nfd, err = Accept4(int(fd), &sa) })
		if err != syscall.EAGAIN || nfd != -1 {
			t.Fatalf("%s: empty backlog: %d, %v; want EAGAIN", network, nfd, err)
		}
		c, err := net.Dial(network, ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		deadline := time.Now().Add(10 * time.Second)
		for {
			rc.Control(func(fd uintptr) { nfd, err = Accept4(int(fd), &sa) })
			if err != syscall.EAGAIN || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		if err != nil {
			t.Fatalf("%s: accept4: %v", network, err)
		}
		defer unix.Close(nfd)
		ap, scope, ok := SockaddrAddrPort(&sa)
		if !ok || scope != 0 || ap.String() != c.LocalAddr().String() {
			t.Fatalf("%s: peer %v (scope %d, ok %v), want %v", network, ap, scope, ok, c.LocalAddr())
		}
		var local unix.RawSockaddrAny
		if err := Getsockname(nfd, &local); err != nil {
			t.Fatalf("%s: getsockname: %v", network, err)
		}
		if la, _, ok := SockaddrAddrPort(&local); !ok || la.String() != ln.Addr().String() {
			t.Fatalf("%s: local address %v, want %v", network, la, ln.Addr())
		}
		flags, err := unix.FcntlInt(uintptr(nfd), unix.F_GETFL, 0)
		if err != nil || flags&unix.O_NONBLOCK == 0 {
			t.Fatalf("%s: accepted socket flags %#x, %v: not non-blocking", network, flags, err)
		}
		if fdf, err := unix.FcntlInt(uintptr(nfd), unix.F_GETFD, 0); err != nil || fdf&unix.FD_CLOEXEC == 0 {
			t.Fatalf("%s: accepted socket not close-on-exec (%#x, %v)", network, fdf, err)
		}
	}
	fd, err := Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer Close(fd)
	if err := SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		t.Fatal(err)
	}
	if v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY); err != nil || v != 1 {
		t.Fatalf("TCP_NODELAY %d, %v", v, err)
	}
	if err := SetsockoptInt(-1, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != syscall.EBADF {
		t.Fatalf("setsockopt on a bad descriptor: %v, want EBADF", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 48<<10); err != nil {
		t.Fatal(err)
	}
	want, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF); err != nil || v != want {
		t.Fatalf("SO_RCVBUF %d, %v; want %d", v, err, want)
	}
	if _, err := GetsockoptInt(-1, unix.SOL_SOCKET, unix.SO_RCVBUF); err != syscall.EBADF {
		t.Fatalf("getsockopt on a bad descriptor: %v, want EBADF", err)
	}
	var other unix.RawSockaddrAny
	other.Addr.Family = unix.AF_UNIX
	if _, _, ok := SockaddrAddrPort(&other); ok {
		t.Fatal("a Unix address converted")
	}
}
