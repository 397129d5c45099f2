package listener

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawHandler takes each raw socket and writes "raw" on it, or makes the
// connection ordinary and echoes a line on it ("std" first). It records
// the addresses the listener gave.
type rawHandler struct {
	raw, std  atomic.Int32
	keepAlive atomic.Int32 // raw connections made ordinary with keepalive on
	noDelay   atomic.Int32 // raw sockets taken with TCP_NODELAY on
	addrs     chan [2]net.Addr
	echo      bool // Materialize even raw connections, and echo
}

func (h *rawHandler) ServeConn(c *Conn) {
	h.addrs <- [2]net.Addr{c.Client, c.Local}
	if !h.echo {
		if fd, ok := c.TakeFD(); ok {
			h.raw.Add(1)
			if v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY); err == nil && v == 1 {
				h.noDelay.Add(1)
			}
			_, _ = unix.Write(fd, []byte("raw"))
			_ = unix.Close(fd)
			return
		}
	}
	_, wasRaw := c.Conn.(*rawConn)
	if err := c.Materialize(); err != nil {
		return
	}
	if _, ok := c.TakeFD(); ok {
		panic("TakeFD after Materialize")
	}
	if tc, ok := c.Conn.(*net.TCPConn); ok && wasRaw {
		// Keepalive as the socket had it (off), not as FileConn sets it.
		rc, _ := tc.SyscallConn()
		_ = rc.Control(func(fd uintptr) {
			if v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE); err != nil || v != 0 {
				h.keepAlive.Add(1)
			}
		})
	}
	h.std.Add(1)
	_, _ = c.Write([]byte("std"))
	if !h.echo {
		return
	}
	buf := make([]byte, 64)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, _ := c.Read(buf)
	_, _ = c.Write(buf[:n])
}

// Connections are accepted raw, those queued before Serve and those that
// come later: the handler takes their sockets, with the client's and the
// local address right. Materialize makes a raw connection an ordinary
// one, and connections the handler never took are closed by the
// listener.
func TestRawAccept(t *testing.T) {
	for _, echo := range []bool{false, true} {
		h := &rawHandler{addrs: make(chan [2]net.Addr, 64), echo: echo}
		ln := newLocalListener(t)
		// Queued in the backlog before the listener serves: accepted raw.
		var clients []net.Conn
		for range 8 {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			clients = append(clients, c)
		}
		l := New(ln, h, Config{Inline: true, RawAccept: true, Logger: quiet()})
		done := make(chan error, 1)
		go func() { done <- l.Serve() }()
		for _, c := range clients {
			c.SetDeadline(time.Now().Add(10 * time.Second))
			got := make([]byte, 3)
			if _, err := io.ReadFull(c, got); err != nil {
				t.Fatal(err)
			}
			want := "raw"
			if echo {
				want = "std"
				c.Write([]byte("ping"))
				back := make([]byte, 4)
				if _, err := io.ReadFull(c, back); err != nil || string(back) != "ping" {
					t.Fatalf("echo %q %v", back, err)
				}
			}
			if string(got) != want && !(string(got) == "std" && !echo) {
				t.Fatalf("read %q, want %q", got, want)
			}
			a := <-h.addrs
			if a[0].String() != c.LocalAddr().String() || a[1].String() != c.RemoteAddr().String() {
				t.Fatalf("client %v local %v, want %v %v", a[0], a[1], c.LocalAddr(), c.RemoteAddr())
			}
		}
		if !echo && (h.raw.Load() != 8 || h.noDelay.Load() != 8) {
			t.Fatalf("%d of 8 queued connections accepted raw, %d with TCP_NODELAY", h.raw.Load(), h.noDelay.Load())
		}
		if n := h.keepAlive.Load(); n != 0 {
			t.Fatalf("%d connections made ordinary have TCP keepalive on", n)
		}
		// One more, after the backlog emptied: served all the same.
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if echo {
			c.Write([]byte("ping"))
		}
		if b, err := io.ReadAll(c); err != nil || len(b) < 3 || (!echo && string(b) != "raw") {
			t.Fatalf("late connection read %q %v", b, err)
		}
		<-h.addrs
		l.Shutdown(t.Context())
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if st := l.Stats(); st.Accepted != 9 || st.Active != 0 {
			t.Fatalf("stats %+v", st)
		}
	}
}

// A raw connection its handler neither took nor made ordinary is closed
// when ServeConn returns.
func TestRawAcceptClosesWhatIsNotTaken(t *testing.T) {
	ln := newLocalListener(t)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l := New(ln, handlerFunc(func(*Conn) {}), Config{Inline: true, RawAccept: true, Logger: quiet()})
	done := make(chan error, 1)
	go func() { done <- l.Serve() }()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read %v, want EOF", err)
	}
	l.Shutdown(t.Context())
	<-done
}

// rawTCPAddr converts raw IPv4 and IPv6 addresses, IPv4-mapped ones as
// IPv4 and a scope as the interface's name.
func TestRawTCPAddr(t *testing.T) {
	in4 := func(port uint16, ip [4]byte) unix.RawSockaddrAny {
		var sa unix.RawSockaddrAny
		in := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa))
		in.Family, in.Addr = unix.AF_INET, ip
		p := (*[2]byte)(unsafe.Pointer(&in.Port))
		p[0], p[1] = byte(port>>8), byte(port)
		return sa
	}
	in6 := func(port uint16, ip [16]byte, scope uint32) unix.RawSockaddrAny {
		var sa unix.RawSockaddrAny
		in := (*unix.RawSockaddrInet6)(unsafe.Pointer(&sa))
		in.Family, in.Addr, in.Scope_id = unix.AF_INET6, ip, scope
		p := (*[2]byte)(unsafe.Pointer(&in.Port))
		p[0], p[1] = byte(port>>8), byte(port)
		return sa
	}
	for _, tc := range []struct {
		sa   unix.RawSockaddrAny
		want string
	}{
		{in4(80, [4]byte{127, 0, 0, 1}), "127.0.0.1:80"},
		{in4(65535, [4]byte{10, 1, 2, 3}), "10.1.2.3:65535"},
		{in6(443, [16]byte{15: 1}, 0), "[::1]:443"},
		{in6(1, [16]byte{10: 0xff, 11: 0xff, 12: 10, 15: 7}, 0), "10.0.0.7:1"},
		{in6(2, [16]byte{0: 0xfe, 1: 0x80, 15: 1}, 1), "[fe80::1%lo]:2"},
	} {
		if got := rawTCPAddr(&tc.sa).String(); got != tc.want {
			t.Errorf("%s, want %s", got, tc.want)
		}
	}
}

// declines is a handler that wants no raw socket (listener.RawWanter).
type declines struct{ raw, all atomic.Int32 }

func (h *declines) WantsRaw() bool { return false }

func (h *declines) ServeConn(c *Conn) {
	h.all.Add(1)
	if _, ok := c.Conn.(*rawConn); ok {
		h.raw.Add(1)
	}
}

// A handler that declines raw sockets gets ordinary connections, even
// those queued in the backlog.
func TestRawWanterDeclines(t *testing.T) {
	ln := newLocalListener(t)
	for range 4 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	h := &declines{}
	l := New(ln, h, Config{Inline: true, RawAccept: true, Logger: quiet()})
	done := make(chan error, 1)
	go func() { done <- l.Serve() }()
	deadline := time.Now().Add(10 * time.Second)
	for h.all.Load() < 4 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	l.Shutdown(t.Context())
	<-done
	if h.all.Load() != 4 || h.raw.Load() != 0 {
		t.Fatalf("%d connections, %d of them raw; want 4, none raw", h.all.Load(), h.raw.Load())
	}
}

// Shutdown or Handover called before Serve has begun its raw wait still
// ends it: the wait takes the deadline they set.
func TestRawServeStartsAfterStopping(t *testing.T) {
	for _, how := range []string{"shutdown", "handover"} {
		t.Run(how, func(t *testing.T) {
			ln := newLocalListener(t)
			l := New(ln, handlerFunc(func(*Conn) {}), Config{Inline: true, RawAccept: true, Logger: quiet()})
			stopped := make(chan struct{})
			go func() {
				defer close(stopped)
				if how == "shutdown" {
					l.Shutdown(t.Context())
				} else {
					l.Handover()
				}
			}()
			for !l.isDraining() {
				time.Sleep(time.Millisecond)
			}
			served := make(chan error, 1)
			go func() { served <- l.Serve() }()
			select {
			case err := <-served:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				l.mu.Lock()
				l.closeRawWait()
				l.mu.Unlock()
				<-served
				t.Fatal("Serve went on waiting after the listener began to stop")
			}
			<-stopped
		})
	}
}

// Out of file descriptors, a raw accept fails; the listener logs it and
// retries after a delay that doubles, without spinning, and serves the
// connection once descriptors are free again.
func TestRawAcceptOutOfDescriptorsBacksOff(t *testing.T) {
	var logs bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	served := make(chan bool, 1)
	ln := newLocalListener(t)
	l := New(ln, handlerFunc(func(c *Conn) {
		fd, ok := c.TakeFD()
		if ok {
			unix.Close(fd)
		}
		served <- ok
	}), Config{Inline: true, RawAccept: true, Logger: log})
	done := make(chan error, 1)
	go func() { done <- l.Serve() }()
	retries := func() int {
		mu.Lock()
		defer mu.Unlock()
		return strings.Count(logs.String(), "accept failed; retrying")
	}
	// A first connection: Serve has made its descriptors and waits.
	first, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	if raw := <-served; !raw {
		t.Fatal("the first connection was not accepted raw")
	}
	c, restore := dialOutOfDescriptors(t, ln.Addr().String())
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for retries() < 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	restore()
	if n := retries(); n < 3 || n > 8 { // 5, 10, 20 ms, ...: a few, not a spin
		t.Fatalf("%d retries logged, want 3 to 8\n%s", n, logs.String())
	}
	select {
	case raw := <-served:
		if !raw {
			t.Fatal("served, but not raw")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the connection was not served once descriptors were free")
	}
	mu.Lock()
	if !strings.Contains(logs.String(), "too many open files") {
		t.Errorf("the log does not say why:\n%s", logs.String())
	}
	mu.Unlock()
	l.Shutdown(t.Context())
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// When the socket raw accepts wait on is closed under Serve (not by
// Shutdown), Serve returns net.ErrClosed rather than retrying forever.
func TestRawWaitClosedUnderServe(t *testing.T) {
	ln := newLocalListener(t)
	l := New(ln, handlerFunc(func(*Conn) {}), Config{Inline: true, RawAccept: true, Logger: quiet()})
	served := make(chan error, 1)
	go func() { served <- l.Serve() }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		l.mu.Lock()
		waiting := l.rawWait != nil
		if waiting {
			l.closeRawWait()
		}
		l.mu.Unlock()
		if waiting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Serve never began its raw wait")
		}
	}
	select {
	case err := <-served:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Serve: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		l.Shutdown(t.Context())
		<-served
		t.Fatal("Serve went on after its wait was closed")
	}
}

// A listening socket opened with Control has TCP_NODELAY, and the sockets
// accepted raw from it have it without a system call each, those queued
// before Serve too; without it (TestRawAccept) each gets it set.
func TestRawAcceptInheritsNoDelay(t *testing.T) {
	lc := net.ListenConfig{Control: Control}
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	l, h := serveRawOnce(t, ln, 1, 1) // one queued before Serve
	if l.rawNoDelay.Load() != noDelayInherited || h.raw.Load() != 2 || h.noDelay.Load() != 2 {
		t.Fatalf("TCP_NODELAY state %d (inherited: %d); %d raw sockets, %d with TCP_NODELAY", l.rawNoDelay.Load(), noDelayInherited, h.raw.Load(), h.noDelay.Load())
	}
}

// A listening socket that reports TCP_NODELAY but whose accepted sockets
// lack it (here: set after the connections were queued) is found out at
// the first accept, and every socket gets the option set.
func TestRawAcceptNoDelayNotInherited(t *testing.T) {
	ln := newLocalListener(t)
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	setNoDelay := func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, 1) }
	l, h := serveRawOnce(t, ln, 2, 0, func() { rc.Control(setNoDelay) })
	if l.rawNoDelay.Load() != noDelaySet || h.raw.Load() != 2 || h.noDelay.Load() != 2 {
		t.Fatalf("TCP_NODELAY state %d (set on each: %d); %d raw sockets, %d with TCP_NODELAY", l.rawNoDelay.Load(), noDelaySet, h.raw.Load(), h.noDelay.Load())
	}
}

// serveRawOnce serves ln raw with a rawHandler until queued clients
// (connected before Serve, then before runs) and later ones (connected
// after Serve began) have each read "raw", then shuts the listener down.
func serveRawOnce(t *testing.T, ln net.Listener, queued, later int, before ...func()) (*Listener, *rawHandler) {
	t.Helper()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	var clients []net.Conn
	for range queued {
		clients = append(clients, dial())
	}
	for _, f := range before {
		f()
	}
	h := &rawHandler{addrs: make(chan [2]net.Addr, queued+later)}
	l := New(ln, h, Config{Inline: true, RawAccept: true, Logger: quiet()})
	done := make(chan error, 1)
	go func() { done <- l.Serve() }()
	for range later {
		clients = append(clients, dial())
	}
	for _, c := range clients {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if b, err := io.ReadAll(c); err != nil || string(b) != "raw" {
			t.Fatalf("read %q %v", b, err)
		}
		<-h.addrs
	}
	l.Shutdown(t.Context())
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return l, h
}

// dialOutOfDescriptors connects to addr with the descriptor limit lowered
// so that the client's socket fits and the listener's accepted one does
// not (a spare descriptor, closed under the lowered limit, leaves room
// for one); restore raises the limit again. It skips the test where the
// limit cannot be lowered.
func dialOutOfDescriptors(t *testing.T, addr string) (c net.Conn, restore func()) {
	t.Helper()
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	spare, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	probe, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0) // the lowest free number after spare
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(probe)
	low := old
	low.Cur = uint64(probe)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		unix.Close(spare)
		t.Skipf("cannot lower the descriptor limit: %v", err)
	}
	unix.Close(spare)
	restore = func() {
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
			t.Fatal(err)
		}
	}
	c, err = net.Dial("tcp", addr)
	if err != nil {
		restore()
		t.Fatal(err)
	}
	return c, restore
}
