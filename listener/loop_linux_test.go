package listener

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testLoop is the least event loop that accepts for a listener: an epoll
// set with an eventfd to wake it, on a goroutine of its own.
type testLoop struct {
	epfd, evfd int
	acc        atomic.Pointer[Accepter]
	stopped    atomic.Bool
	done       chan struct{}
}

func newTestLoop(t *testing.T) *testLoop {
	t.Helper()
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: 0}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		t.Fatal(err)
	}
	return &testLoop{epfd: epfd, evfd: evfd, done: make(chan struct{})}
}

func (tl *testLoop) wake() { _, _ = unix.Write(tl.evfd, []byte{1, 0, 0, 0, 0, 0, 0, 0}) }

func (tl *testLoop) run() {
	defer close(tl.done)
	events := make([]unix.EpollEvent, 16)
	for !tl.stopped.Load() {
		n, err := unix.EpollWait(tl.epfd, events, 100)
		if err != nil && err != unix.EINTR {
			break
		}
		for _, ev := range events[:max(n, 0)] {
			switch ev.Fd {
			case -1:
				tl.acc.Load().Accept()
			case 0:
				var b [8]byte
				_, _ = unix.Read(tl.evfd, b[:])
			}
		}
		if a := tl.acc.Load(); a != nil {
			a.Sync()
		}
	}
	if a := tl.acc.Load(); a != nil {
		a.Close()
	}
}

func (tl *testLoop) stop() {
	tl.stopped.Store(true)
	tl.wake()
	<-tl.done
	unix.Close(tl.epfd)
	unix.Close(tl.evfd)
}

// startInLoops serves ln with h accepted in n test loops; the loops stop
// at the end of the test, after the listener (t.Cleanup runs last first).
func startInLoops(t *testing.T, ln net.Listener, h Handler, cfg Config, n int) *Listener {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quiet()
	}
	cfg.Inline = true
	l := New(ln, h, cfg)
	loops := make([]*testLoop, n)
	al := make([]AcceptLoop, n)
	for i := range loops {
		loops[i] = newTestLoop(t)
		al[i] = AcceptLoop{EpollFD: loops[i].epfd, Event: unix.EpollEvent{Fd: -1}, Wake: loops[i].wake, Handler: h}
	}
	accs, err := l.AcceptInLoops(al)
	if err != nil {
		t.Fatal(err)
	}
	for i, tl := range loops {
		tl.acc.Store(accs[i])
		go tl.run()
		tl.wake()
		t.Cleanup(tl.stop)
	}
	go l.Serve()
	return l
}

// holdDetached serves each connection off the loop (Detach) until
// release is closed or receives, and says so on served.
type holdDetached struct {
	served  chan struct{}
	release chan struct{}
}

func (h *holdDetached) ServeConn(c *Conn) {
	done := c.Detach()
	h.served <- struct{}{}
	go func() { <-h.release; done() }()
}

// inAnyEpollSet reports whether fd is in an epoll set of this process.
func inAnyEpollSet(t *testing.T, fd int) bool {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if link, _ := os.Readlink("/proc/self/fd/" + e.Name()); link != "anon_inode:[eventpoll]" {
			continue
		}
		info, _ := os.ReadFile("/proc/self/fdinfo/" + e.Name())
		sc := bufio.NewScanner(bytes.NewReader(info))
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) > 1 && f[0] == "tfd:" && f[1] == strconv.Itoa(fd) {
				return true
			}
		}
	}
	return false
}

// The listening socket leaves the runtime's poller once loops accept; the
// loops serve connections, those queued before too.
func TestAcceptInLoops(t *testing.T) {
	ln := newLocalListener(t)
	fd := listenerFD(ln.(*net.TCPListener))
	if !inAnyEpollSet(t, fd) {
		t.Fatal("a listening socket is not in the runtime's poller to begin with")
	}
	queued, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer queued.Close()
	h := &rawHandler{addrs: make(chan [2]net.Addr, 10)}
	l := startInLoops(t, ln, h, Config{}, 2)
	if inAnyEpollSet(t, fd) {
		t.Fatal("the listening socket is still in the runtime's poller")
	}
	for i, c := range []net.Conn{queued, dialOK(t, l.Addr().String())} {
		if err := readRaw(c); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if a := <-h.addrs; a[0].String() != c.LocalAddr().String() || a[1].String() != c.RemoteAddr().String() {
			t.Fatalf("connection %d: addresses %v", i, a)
		}
	}
	if err := l.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Accepted != 2 || st.Active != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// listenerFD is tl's descriptor.
func listenerFD(tl *net.TCPListener) int {
	rc, _ := tl.SyscallConn()
	fd := -1
	rc.Control(func(f uintptr) { fd = int(f) })
	return fd
}

// readRaw reads what rawHandler writes on a socket it took ("raw"),
// within 10 s.
func readRaw(c net.Conn) error {
	got := make([]byte, 3)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "raw" {
		return fmt.Errorf("read %q, %v; want \"raw\"", got, err)
	}
	return nil
}

func dialOK(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Beyond MaxConns the loops stop watching the listening socket: clients
// wait in the backlog and are served as places free up; Shutdown ends
// the wait.
func TestAcceptInLoopsMaxConns(t *testing.T) {
	h := &holdDetached{served: make(chan struct{}, 10), release: make(chan struct{})}
	l := startInLoops(t, newLocalListener(t), h, Config{MaxConns: 2}, 2)
	for range 4 {
		dialOK(t, l.Addr().String())
	}
	<-h.served
	<-h.served
	select {
	case <-h.served:
		t.Fatal("a third connection was served beyond MaxConns 2")
	case <-time.After(100 * time.Millisecond):
	}
	if st := l.Stats(); st.Active != 2 || st.LimitReached == 0 {
		t.Fatalf("stats %+v", st)
	}
	h.release <- struct{}{} // one finishes: the third is served
	select {
	case <-h.served:
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting client was not served when a place freed")
	}
	shutdownReleasing(t, l, h.release)
	if st := l.Stats(); st.Accepted < 3 || st.Active != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// Handover stops the loops' accepts and returns a listener for the same
// socket, in the runtime's poller: clients queued meanwhile are its, and
// the connections the loops accepted drain.
func TestAcceptInLoopsHandover(t *testing.T) {
	h := &holdDetached{served: make(chan struct{}, 10), release: make(chan struct{})}
	l := startInLoops(t, newLocalListener(t), h, Config{}, 2)
	held := dialOK(t, l.Addr().String())
	<-h.served
	next := l.Handover()
	if next == nil {
		t.Fatal("no listener handed over")
	}
	defer next.Close()
	queued := dialOK(t, l.Addr().String())
	select {
	case <-h.served:
		t.Fatal("served after Handover")
	case <-time.After(50 * time.Millisecond):
	}
	next.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
	c, err := next.Accept()
	if err != nil {
		t.Fatalf("the handed-over listener: %v", err)
	}
	c.Close()
	if c.RemoteAddr().String() != queued.LocalAddr().String() {
		t.Fatalf("accepted %v, want %v", c.RemoteAddr(), queued.LocalAddr())
	}
	close(h.release)
	if err := l.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	_ = held
}

// Out of file descriptors, an accept fails; the loops stop watching the
// socket for a delay that doubles, log it, and serve the connection once
// descriptors are free again.
func TestAcceptInLoopsOutOfDescriptorsBacksOff(t *testing.T) {
	var logs bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	h := &rawHandler{addrs: make(chan [2]net.Addr, 10)}
	l := startInLoops(t, newLocalListener(t), h, Config{Logger: log}, 1)
	retries := func() int {
		mu.Lock()
		defer mu.Unlock()
		return strings.Count(logs.String(), "accept failed; retrying")
	}
	c, restore := dialOutOfDescriptors(t, l.Addr().String())
	defer c.Close()
	for deadline := time.Now().Add(10 * time.Second); retries() < 2 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	restore()
	if n := retries(); n < 1 || n > 20 {
		t.Fatalf("%d retries logged; want a few, spaced", n)
	}
	if err := readRaw(c); err != nil {
		t.Fatalf("after the limit was raised: %v", err)
	}
	if err := l.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// wrapped is a listener that only shows another address, as the
// supervisor's for 0.0.0.0.
type wrapped struct{ *net.TCPListener }

func (w wrapped) Unwrap() *net.TCPListener { return w.TCPListener }

// A wrapped TCP listener (TCPWrapper) is accepted from in loops too.
func TestAcceptInLoopsUnwraps(t *testing.T) {
	h := &rawHandler{addrs: make(chan [2]net.Addr, 10)}
	tcp := newLocalListener(t).(*net.TCPListener)
	fd := listenerFD(tcp)
	l := startInLoops(t, wrapped{tcp}, h, Config{}, 1)
	// The runtime's epoll set, found once, is remembered.
	if pollerFD.Load() < 0 || inAnyEpollSet(t, fd) {
		t.Fatalf("runtime's epoll set %d; the listening socket still in one: %v", pollerFD.Load(), inAnyEpollSet(t, fd))
	}
	if err := readRaw(dialOK(t, l.Addr().String())); err != nil {
		t.Fatal(err)
	}
	if err := l.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}
