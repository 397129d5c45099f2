package listener

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ndlb/ndlb/internal/mono"
	"github.com/ndlb/ndlb/internal/rawio"
)

// AcceptLoop is an event loop that accepts a listener's connections
// itself (AcceptInLoops), as HAProxy's threads do: the listening socket
// sits in the loop's epoll set, and the loop's goroutine accepts when
// epoll reports it readable and sets each connection up at once, so that
// a new connection costs no wake-up of another thread.
type AcceptLoop struct {
	// EpollFD is the loop's epoll set.
	EpollFD int
	// Event is what epoll reports for the listening socket: the loop
	// tells it from its other events by Fd and Pad (Events is set here).
	Event unix.EpollEvent
	// Wake makes the loop call its Accepter's Sync soon, on its
	// goroutine.
	Wake func()
	// Handler serves the connections the loop accepts, on the loop's
	// goroutine, as Handler.ServeConn with Config.Inline.
	Handler Handler
}

// Accepter accepts for one AcceptLoop. Its methods are called on the
// loop's goroutine only (Close also by whoever knows it ended).
type Accepter struct {
	l     *Listener
	loop  AcceptLoop
	armed bool // the listening socket is in the loop's epoll set
	gone  bool // accepting is over for this loop (Close; loopAccept.wg is done)
	sa    unix.RawSockaddrAny
}

// loopAccept is the state of accepting in event loops.
type loopAccept struct {
	fd   int // a duplicate of the listening socket: the loops' epoll sets hold it
	accs []*Accepter
	stop atomic.Bool    // accepting is over: Handover, or the end of Shutdown's backlog grace
	held atomic.Bool    // accepting is held (Listener.hold): the loops wait, then try again
	wg   sync.WaitGroup // one per Accepter not gone

	mu       sync.Mutex
	closed   bool // the loops may be gone: wake none; guarded by mu
	fdClosed bool // fd is closed; guarded by the Listener's mu
}

// acceptBatch is the most connections a loop accepts at one report of
// the listening socket, before it serves its other connections' events
// (Accept then asks the loop to look again).
const acceptBatch = 16

// AcceptInLoops makes loops accept the listener's connections instead of
// Serve's goroutine, one Accepter each, which the loop calls on its own
// goroutine: Accept when epoll reports the listening socket readable
// (loop.Event), Sync after each round of events, Close when the loop
// ends. Call it before Serve, with Config.Inline and no TLS or PROXY
// header to read; the loops must run until Serve has returned. Serve then
// only waits for the end of accepting (Handover, Shutdown), and Handover
// returns a new net.Listener for the same socket.
//
// The listening socket leaves the Go runtime's poller (see leavePoller):
// there, each new connection would also wake the runtime's poller thread,
// for nothing. It returns an error, and changes nothing, when the
// listener cannot accept this way.
func (l *Listener) AcceptInLoops(loops []AcceptLoop) ([]*Accepter, error) {
	if !l.cfg.Inline || l.cfg.TLS != nil || l.cfg.AcceptProxy {
		return nil, errors.New("connections with TLS or a PROXY header are prepared on goroutines")
	}
	if len(loops) == 0 {
		return nil, errors.New("no event loops")
	}
	tl, ok := tcpListener(l.ln)
	if !ok {
		return nil, fmt.Errorf("not a TCP listener (%T)", l.ln)
	}
	orig, dup, err := dupListener(tl)
	if err != nil {
		return nil, fmt.Errorf("duplicating the listening socket: %w", err)
	}
	l.rawSetup(tl, dup)
	lp := &loopAccept{fd: dup}
	for _, lo := range loops {
		lp.accs = append(lp.accs, &Accepter{l: l, loop: lo})
	}
	lp.wg.Add(len(loops))
	l.loops = lp
	if err := leavePoller(orig); err != nil {
		l.log.Debug("the listening socket stays in the runtime's poller", "err", err)
	}
	return lp.accs, nil
}

// Sync makes the loop watch the listening socket while accepting goes on
// (not stopped, not waiting for a place under MaxConns or after a failed
// accept), and not otherwise; once accepting is over and the socket is
// out of the loop's set, the loop is done with it.
func (a *Accepter) Sync() {
	if a.gone {
		return
	}
	l, lp := a.l, a.l.loops
	stop := lp.stop.Load()
	if want := !stop && !lp.held.Load() && !l.full.Load(); want != a.armed {
		a.arm(want)
	}
	if stop && !a.armed {
		a.Close()
	}
}

// arm adds the listening socket to the loop's epoll set (on), or removes
// it. EPOLLEXCLUSIVE wakes one loop waiting in epoll_wait per new
// connection, not all (loops that wait in the runtime's poller are each
// told).
func (a *Accepter) arm(on bool) {
	op, ev := unix.EPOLL_CTL_DEL, a.loop.Event
	if on {
		op, ev.Events = unix.EPOLL_CTL_ADD, unix.EPOLLIN|unix.EPOLLEXCLUSIVE
	}
	if err := unix.EpollCtl(a.loop.EpollFD, op, a.l.loops.fd, &ev); err != nil {
		// Out of kernel memory for the set: this loop no longer
		// accepts; the others go on.
		a.l.log.Error("an event loop stops accepting: its epoll set would not take the listening socket",
			"err", os.NewSyscallError("epoll_ctl", err))
		a.armed = false
		a.Close()
		return
	}
	a.armed = on
}

// Close ends accepting for the loop: once accepting is over, when its
// set would not take the socket, or when the loop stops (its epoll set
// closes with it).
func (a *Accepter) Close() {
	if !a.gone {
		a.gone = true
		a.l.loops.wg.Done()
	}
}

// Accept takes the connections waiting on the listening socket, up to
// acceptBatch, and serves each with the loop's Handler. It returns true
// when it took a whole batch: more may wait, and the loop should look
// again before it sleeps (a loop that waits in the runtime's poller is
// not told again of a level-triggered socket still readable).
func (a *Accepter) Accept() (more bool) {
	l, lp := a.l, a.l.loops
	if a.gone {
		return false
	}
	for range acceptBatch {
		if lp.stop.Load() || lp.held.Load() {
			return false
		}
		if !l.trySlot() {
			if l.pause() {
				continue
			}
			return false // Sync stops watching until a place is free
		}
		nfd, err := rawio.Accept4(lp.fd, &a.sa)
		if err != nil {
			l.freeSlot()
			switch err {
			case unix.EINTR, unix.ECONNABORTED: // as Go's Accept does
				continue
			case unix.EAGAIN:
				return false
			}
			l.hold(os.NewSyscallError("accept4", err))
			return false
		}
		l.acceptedOne()
		l.wg.Add(1)   // done in finish
		l.prep.Add(1) // done once the handler has it
		l.serveConnWith(l.rawFrom(nfd, &a.sa), a.loop.Handler)
	}
	return true
}

// holdLoops takes the listening socket out of the loops' sets for d, or
// until Listener.heldUntil if a later hold moved it.
func (lp *loopAccept) holdLoops(l *Listener, d time.Duration) {
	if lp.held.Swap(true) {
		return // a timer is running; it looks at heldUntil
	}
	var release func()
	release = func() {
		if left := time.Duration(l.heldUntil.Load() - mono.Now()); left > 0 {
			time.AfterFunc(left, release)
			return
		}
		lp.held.Store(false)
		// A hold that began between the look and the store found a
		// timer running: it is this one's to keep.
		if left := time.Duration(l.heldUntil.Load() - mono.Now()); left > 0 && lp.held.CompareAndSwap(false, true) {
			time.AfterFunc(left, release)
			return
		}
		lp.wakeAll()
	}
	time.AfterFunc(d, release)
}

// wakeAll asks every loop to Sync, until accepting has ended (the loops
// may be stopped after that, their wake-up descriptors closed).
func (lp *loopAccept) wakeAll() {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	if lp.closed {
		return
	}
	for _, a := range lp.accs {
		a.loop.Wake()
	}
}

// serveLoops is Serve when the loops accept: it waits until accepting is
// over and every loop has let go of the listening socket, then closes it
// (the handed-over listener keeps it open).
func (l *Listener) serveLoops() error {
	lp := l.loops
	<-l.graceOver
	lp.wg.Wait()
	lp.mu.Lock()
	lp.closed = true
	lp.mu.Unlock()
	l.mu.Lock()
	lp.fdClosed = true
	unix.Close(lp.fd)
	l.mu.Unlock()
	l.ln.Close()
	return nil
}

// handoverLoops is Handover when the loops accept: the listener returned
// is a new one, for the same socket, in the runtime's poller again.
func (l *Listener) handoverLoops() net.Listener {
	l.mu.Lock()
	if l.handedOver || l.loops.fdClosed { // handed over already, or Serve closed the socket
		l.mu.Unlock()
		return nil
	}
	dup, err := unix.FcntlInt(uintptr(l.loops.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		l.mu.Unlock()
		l.log.Warn("the listening socket cannot be handed over", "err", os.NewSyscallError("fcntl", err))
		return nil
	}
	f := os.NewFile(uintptr(dup), "listener")
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		l.mu.Unlock()
		l.log.Warn("the listening socket cannot be handed over", "err", err)
		return nil
	}
	l.draining, l.handedOver = true, true
	l.mu.Unlock()
	l.stopAccepting()
	<-l.done
	return ln
}

// leavePoller takes the listening socket fd out of the Go runtime's epoll
// set, where net.Listen put it: every connection the kernel completes
// would wake the runtime's poller thread (edge-triggered, with no
// goroutine waiting), a context switch per connection on top of the
// loop's. The runtime has no call for it, so the set is found in
// /proc/self/fdinfo: the one epoll descriptor whose entries include fd
// (with the socket's inode), remembered for the next listener (the
// runtime never closes it; a reload with many connections open would
// otherwise read all their descriptors). Nothing may wait on the
// listener afterwards (Accept would never wake); its Close still works.
// A failure changes nothing.
func leavePoller(fd int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return os.NewSyscallError("fstat", err)
	}
	found := -1
	if p := int(pollerFD.Load()); p >= 0 && epollHolds(p, fd, st.Ino) {
		found = p
	} else {
		entries, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			return err
		}
		for _, e := range entries {
			n, err := strconv.Atoi(e.Name())
			if err != nil || n == fd || !epollHolds(n, fd, st.Ino) {
				continue
			}
			if found >= 0 {
				return errors.New("the socket is in more than one epoll set")
			}
			found = n
		}
		if found < 0 {
			return errors.New("no epoll set holds the socket")
		}
		pollerFD.Store(int32(found))
	}
	return os.NewSyscallError("epoll_ctl", unix.EpollCtl(found, unix.EPOLL_CTL_DEL, fd, nil))
}

// pollerFD is the runtime's epoll descriptor, once leavePoller found it;
// -1 before.
var pollerFD atomic.Int32

func init() { pollerFD.Store(-1) }

// epollHolds reports whether descriptor n is an epoll set that holds fd,
// the socket with inode ino.
func epollHolds(n, fd int, ino uint64) bool {
	name := strconv.Itoa(n)
	if link, _ := os.Readlink("/proc/self/fd/" + name); link != "anon_inode:[eventpoll]" {
		return false
	}
	info, err := os.ReadFile("/proc/self/fdinfo/" + name)
	if err != nil {
		return false
	}
	// tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x
	want := []byte(fmt.Sprintf("tfd: %8d events:", fd))
	inode := []byte(" ino:" + strconv.FormatUint(ino, 16) + " ")
	sc := bufio.NewScanner(bytes.NewReader(info))
	for sc.Scan() {
		if line := sc.Bytes(); bytes.HasPrefix(line, want) && bytes.Contains(line, inode) {
			return true
		}
	}
	return false
}
