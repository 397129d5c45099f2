package rawio

import (
	"net"
	"syscall"
	"testing"
)

// pair returns both ends of a loopback TCP connection, closed when t ends.
func pair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// Read reads what a real socket's peer wrote, reports EAGAIN on an empty
// non-blocking socket, and EOF as n = 0.
func TestRead(t *testing.T) {
	a, b := pair(t)
	rb, _ := b.SyscallConn()
	var n int
	var rerr error
	if _, err := a.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	rb.Read(func(fd uintptr) bool { n, rerr = Read(fd, buf); return rerr != syscall.EAGAIN })
	if string(buf[:n]) != "hello" || rerr != nil {
		t.Fatalf("read %q, %v", buf[:n], rerr)
	}
	rb.Control(func(fd uintptr) { n, rerr = Read(fd, buf) })
	if n != 0 || rerr != syscall.EAGAIN {
		t.Fatalf("read of an empty socket: %d, %v; want EAGAIN", n, rerr)
	}
	a.Close()
	rb.Read(func(fd uintptr) bool { n, rerr = Read(fd, buf); return rerr != syscall.EAGAIN })
	if n != 0 || rerr != nil {
		t.Fatalf("read at EOF: %d, %v", n, rerr)
	}
	if n, err := Read(0, nil); n != 0 || err != nil {
		t.Fatalf("an empty read: %d, %v", n, err)
	}
}
