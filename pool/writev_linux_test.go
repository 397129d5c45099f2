package pool

import (
	"bytes"
	"net"
	"testing"
	"time"
)

// rawWriter writes every buffer in order, empty ones and more than one
// writev takes included, through partial writes and EAGAIN waits (the
// reader is slower than the writer), and reports a closed peer.
func TestRawWriter(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		var all bytes.Buffer
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			all.Write(buf[:n])
			if err != nil {
				got <- all.Bytes()
				return
			}
			if all.Len() < 1<<20 {
				time.Sleep(time.Millisecond) // slower than the writer: its queue fills
			}
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetWriteBuffer(64 << 10)
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	w := newRawWriter(rc)
	var want bytes.Buffer
	var bufs net.Buffers
	for i := range 3000 { // more than maxIovecs
		b := bytes.Repeat([]byte{byte(i)}, i%7*1000) // some empty
		bufs = append(bufs, b)
		want.Write(b)
	}
	n, err := w.writeBuffers(&bufs)
	if err != nil || n != int64(want.Len()) || len(bufs) != 0 {
		t.Fatalf("wrote %d of %d (%d buffers left): %v", n, want.Len(), len(bufs), err)
	}
	c.Close()
	if b := <-got; !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("the peer read %d bytes, not what was written (%d)", len(b), want.Len())
	}
	// A peer that reset the connection: the write fails, it does not hang.
	dialed := make(chan struct{})
	go func() {
		pc, err := ln.Accept()
		if err == nil {
			<-dialed
			pc.(*net.TCPConn).SetLinger(0)
			pc.Close()
		}
	}()
	c2, err := net.Dial("tcp", ln.Addr().String())
	close(dialed)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetWriteDeadline(time.Now().Add(10 * time.Second))
	rc2, err := c2.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	w2 := newRawWriter(rc2)
	for i := 0; ; i++ {
		if _, err := w2.writeBuffers(&net.Buffers{make([]byte, 64<<10)}); err != nil {
			break
		}
		if i == 1000 {
			t.Fatal("writes to a reset connection go on succeeding")
		}
	}
}
