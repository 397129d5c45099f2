package supervisor

import (
	"encoding/binary"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/ksuid"

	"github.com/ndlb/ndlb/framer"
	"github.com/ndlb/ndlb/ndjson"
)

// channel is a connected pair of Unix stream sockets, as Upgrade makes.
func channel(t *testing.T) (a, b *net.UnixConn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conv := func(fd int) *net.UnixConn {
		f := fileOf(fd)
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	a, b = conv(fds[0]), conv(fds[1])
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// tcpPair is a connected loopback TCP pair.
func tcpPair(t *testing.T) (client net.Conn, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); s.Close() })
	return client, s.(*net.TCPConn)
}

// A transfer crosses the channel whole: the socket (still connected to its
// client), its id, addresses, partial line (a large one too) and state.
func TestTransferRoundTrip(t *testing.T) {
	a, b := channel(t)
	client, conn := tcpPair(t)
	proxied := &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 4242}
	want := ndjson.Transfer{Conn: conn, ID: ksuid.New(), Client: proxied, Local: conn.LocalAddr(),
		Partial: []byte(strings.Repeat("p", 300<<10)), Skipping: true,
		Framing: framer.OctetCounted, SkipBytes: 3_000_000_000 - 100, // inside a message of a 10-digit length
		IdleFor: 1500 * time.Millisecond}
	sent := make(chan error, 1)
	go func() { sent <- sendTransfer(a, "logs", want) }()
	name, got, err := receiveTransfer(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	defer got.Conn.Close()
	if name != "logs" || got.ID != want.ID || got.Client.String() != proxied.String() ||
		got.Local.String() != want.Local.String() || string(got.Partial) != string(want.Partial) || !got.Skipping ||
		got.Framing != want.Framing || got.SkipBytes != want.SkipBytes || got.IdleFor != want.IdleFor {
		t.Fatalf("got %s %v %v %v %d bytes %v %q %d", name, got.ID, got.Client, got.Local, len(got.Partial), got.Skipping, got.Framing, got.SkipBytes)
	}
	conn.Close() // the sender's copy goes; the socket stays open
	client.Write([]byte("hello\n"))
	buf := make([]byte, 6)
	if _, err := io.ReadFull(got.Conn, buf); err != nil || string(buf) != "hello\n" {
		t.Fatalf("read %q through the moved socket: %v", buf, err)
	}
	// The old process closes the channel: the end.
	a.Close()
	if _, _, err := receiveTransfer(b); err != io.EOF {
		t.Fatalf("after the end: %v", err)
	}
}

// A malformed transfer is an error, never a crash, and leaks no socket.
func TestTransferRejectsGarbage(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  []byte
		fd   bool
	}{
		{"no socket", append(binary.BigEndian.AppendUint32(nil, 2), "{}"...), false},
		{"huge description", binary.BigEndian.AppendUint32(nil, 1<<30), true},
		{"bad json", append(binary.BigEndian.AppendUint32(nil, 3), "{{{"...), true},
		{"cut short", append(binary.BigEndian.AppendUint32(nil, 50), "{}"...), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := channel(t)
			var oob []byte
			if tc.fd {
				_, conn := tcpPair(t)
				f, err := conn.File()
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				oob = syscall.UnixRights(int(f.Fd()))
			}
			if _, _, err := a.WriteMsgUnix(tc.msg, oob, nil); err != nil {
				t.Fatal(err)
			}
			a.Close()
			if _, _, err := receiveTransfer(b); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// Inherited.Listen takes the passed socket of the same address (the one of
// the same name first) and opens a new one for an address nobody passed.
func TestInheritedListen(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := dupCloexec(int(f.Fd()))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	in := &Inherited{listeners: []inheritedListener{{Name: "x", Addr: "127.0.0.1:9", FD: fd}}, used: map[int]bool{}}
	got, err := in.Listen("y", "tcp", "127.0.0.1:9", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	if got.Addr().String() != ln.Addr().String() {
		t.Fatalf("inherited %v, want the socket of %v", got.Addr(), ln.Addr())
	}
	fresh, err := in.Listen("y", "tcp", "127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if fresh.Addr().String() == ln.Addr().String() {
		t.Fatal("a socket was passed twice")
	}
}

// fileOf wraps a descriptor the test owns.
func fileOf(fd int) *os.File { return os.NewFile(uintptr(fd), "fd "+strconv.Itoa(fd)) }
